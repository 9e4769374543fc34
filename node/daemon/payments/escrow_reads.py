"""UsageEscrow reads the payment gate needs (blocking web3 calls, ABI from the Hardhat artifact)."""

from __future__ import annotations

from eth_utils import to_checksum_address

from chain.artifacts import load_artifact
from node.daemon.payments.gate import Lane


class Web3EscrowReader:
    def __init__(self, w3, escrow_address: str) -> None:
        self._c = w3.eth.contract(address=to_checksum_address(escrow_address), abi=load_artifact("UsageEscrow").abi_list)

    def is_authorized(self, payer: str, signer: str) -> bool:
        """The signer signs for `payer` and its revocation has not started: the chain still redeems
        what it signed until the revocation thaw ends, but the node takes nothing new from it."""
        if signer == payer:
            return True
        owner, revoke_at = self._c.functions.signerOf(signer).call()
        return owner == payer and int(revoke_at) == 0

    def available(self, payer: str, node: str) -> int:
        """Balance minus thawing of the payer's account earmarked for `node`."""
        balance, thawing, _ = self._c.functions.accountOf(payer, node).call()
        return max(0, int(balance) - int(thawing))

    def collected(self, lane: Lane) -> tuple[int, int]:
        c, a = self._c.functions.collected(lane.payer, lane.node, lane.adapter_id).call()
        return int(c), int(a)


def check_chain(w3, deployment) -> int:
    """The RPC's chain must be the deployment's, and its contracts must have code there."""
    from node.errors import ConfigError

    try:
        chain_id = int(w3.eth.chain_id)
    except Exception as e:
        raise ConfigError(f"rpc_url: cannot reach the chain: {e}") from e
    if chain_id != int(deployment.chain_id):
        raise ConfigError(f"deployment: file is for chain {deployment.chain_id}, the RPC serves chain {chain_id}")
    for name in ("UsageEscrow", "ReceiptLog"):
        addr = deployment.addresses.get(name)
        if not addr or not w3.eth.get_code(to_checksum_address(addr)):
            raise ConfigError(f"deployment: no {name} contract at {addr} on chain {chain_id}")
    return chain_id
