"""The payment gate's view of UsageEscrow: its reads through the one UsageEscrow binding
(`chain.contracts`), shaped as the gate asks (blocking web3 calls)."""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils import to_checksum_address

from chain.contracts import UsageEscrowBinding
from node.daemon.payments.gate import Lane


class Web3EscrowReader:
    def __init__(self, w3, escrow_address: str) -> None:
        self._escrow = UsageEscrowBinding(w3, escrow_address, "UsageEscrow")

    def is_authorized(self, payer: str, signer: str) -> bool:
        """The signer signs for `payer` and its revocation has not started: the chain still redeems
        what it signed until the revocation thaw ends, but the node takes nothing new from it."""
        if signer == payer:
            return True
        info = self._escrow.signer_of(signer)
        return info.payer == payer and info.revoke_at == 0

    def available(self, payer: str, node: str) -> int:
        """Balance minus thawing of the payer's account earmarked for `node`."""
        account = self._escrow.account_of(payer, node)
        return max(0, account.balance - account.thawing)

    def collected_many(self, lanes: Sequence[Lane]) -> list[tuple[int, int]]:
        """UsageEscrow's `collected` of each lane, in one JSON-RPC batch (a payer's lanes, read together)."""
        got = self._escrow.call_many("collected", [(ln.payer, ln.node, ln.adapter_id) for ln in lanes])
        return [(c.compute, c.adapter) for c in got]


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
