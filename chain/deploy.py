"""Deploy the whole contract set from Python to any RPC URL and record it in deployments/<chainId>.json.

RewardVault and DatasetRegistry name UsageEscrow (and each other) in their constructors as
immutables, which costs nothing per call at run time. Those addresses do not exist yet when the
constructors run, so they are predicted from the deployer's nonce (CREATE address =
keccak(rlp([sender, nonce]))[12:]) and every receipt is checked against the prediction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import rlp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_canonical_address, to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from chain.artifacts import PROTOCOL_CONTRACTS, load_artifact
from chain.errors import ChainError, DeployError
from chain.send import send_tx

DEFAULT_PROTOCOL_FEE_BPS = 500  # 5 % of the adapter part
DEFAULT_THAW_SECONDS = 7 * 24 * 3600
DEFAULT_MIN_BOND = 10 * 10**18  # 10 tokens of an 18-decimals token: what a node must stake to redeem
DEFAULT_DISPUTE_WINDOW = 7 * 24 * 3600
DEFAULT_DISPUTE_DEPOSIT = 10**18
DEFAULT_FLUSH_DELAY_SECONDS = 7 * 24 * 3600  # an undrained attribution pool waits this long before anyone may flush it
MAX_PROTOCOL_FEE_BPS = 1_000  # mirrors UsageEscrow.MAX_PROTOCOL_FEE_BPS
DEPLOYMENTS_DIR = Path("deployments")


def deployment_file(chain_id: int, out_dir: Path | str = DEPLOYMENTS_DIR) -> Path:
    """Where `deploy` records the deployment on chain `chain_id` (and where readers look by default)."""
    return Path(out_dir) / f"{int(chain_id)}.json"


@dataclass
class Deployment:
    """Where the contract set lives on one chain."""

    chain_id: int
    addresses: dict[str, str]
    blocks: dict[str, int]
    abi_hashes: dict[str, str]
    deployer: str = ""
    params: dict[str, int] = field(default_factory=dict)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: Path | str) -> "Deployment":
        try:
            data = json.loads(Path(path).read_text())
            dep = cls(
                chain_id=int(data["chain_id"]),
                addresses={k: to_checksum_address(v) for k, v in data["addresses"].items()},
                blocks={k: int(v) for k, v in data["blocks"].items()},
                abi_hashes=dict(data["abi_hashes"]),
                deployer=data.get("deployer", ""),
                params={k: int(v) for k, v in data.get("params", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DeployError(f"unreadable deployment file {path}: {e}") from e
        missing = [n for n in ("PaymentToken", *PROTOCOL_CONTRACTS) if n not in dep.addresses]
        if missing:
            raise DeployError(f"deployment file {path} lacks {missing}")
        return dep

    @property
    def start_block(self) -> int:
        """First block a chain watcher needs to scan."""
        return min(self.blocks.values()) if self.blocks else 0

    def stale_abis(self) -> list[str]:
        """Contracts whose current artifact ABI differs from the one deployed (bindings would be wrong)."""
        return [name for name, h in self.abi_hashes.items() if name != "PaymentToken" and load_artifact(name).abi_hash != h]


def create_address(sender: str, nonce: int) -> str:
    """Address of the contract `sender` creates with transaction nonce `nonce` (CREATE)."""
    return to_checksum_address(keccak(rlp.encode([to_canonical_address(sender), nonce]))[12:])


class _Deployer:
    """Deploys contracts from one account through `chain.send.send_tx`, checking each address
    against the CREATE prediction."""

    def __init__(self, w3: Web3, account: LocalAccount, chain_id: int):
        self.w3, self.account, self.chain_id = w3, account, chain_id

    @property
    def nonce(self) -> int:
        """The nonce of the deployer's next transaction."""
        return self.w3.eth.get_transaction_count(self.account.address, "pending")

    def deploy(self, name: str, *args) -> tuple[str, int]:
        art = load_artifact(name)
        data = self.w3.eth.contract(abi=art.abi_list, bytecode=art.bytecode).constructor(*args).data_in_transaction
        nonce = self.nonce
        expected = create_address(self.account.address, nonce)
        try:
            receipt = send_tx(self.w3, self.account, {"data": data, "nonce": nonce, "chainId": self.chain_id})
        except (ChainError, Web3Exception) as e:
            raise DeployError(f"deploy {name}: {e}") from e
        if receipt["contractAddress"] is None:
            raise DeployError(f"deploy {name}: the receipt has no contract address")
        if to_checksum_address(receipt["contractAddress"]) != expected:
            raise DeployError(f"{name} landed at {receipt['contractAddress']}, predicted {expected}")
        return expected, receipt["blockNumber"]


def deploy(
    rpc_url: str,
    deployer_key: str | bytes | LocalAccount,
    *,
    token: str | None = None,
    protocol_fee_bps: int = DEFAULT_PROTOCOL_FEE_BPS,
    thaw_seconds: int = DEFAULT_THAW_SECONDS,
    min_bond: int = DEFAULT_MIN_BOND,
    dispute_window: int = DEFAULT_DISPUTE_WINDOW,
    dispute_deposit: int = DEFAULT_DISPUTE_DEPOSIT,
    arbitrator: str | None = None,
    flush_delay_seconds: int = DEFAULT_FLUSH_DELAY_SECONDS,
    out_dir: Path | str | None = DEPLOYMENTS_DIR,
    w3: Web3 | None = None,
) -> Deployment:
    """Deploy DemoToken (unless `token` is given) and the seven protocol contracts; return and save the Deployment.

    `out_dir=None` writes nothing. The deployer becomes UsageEscrow's owner and fee recipient, and
    NodeRegistry's dispute arbitrator unless `arbitrator` is given.
    """
    if not 0 <= protocol_fee_bps <= MAX_PROTOCOL_FEE_BPS:
        raise DeployError(f"protocol_fee_bps must be in 0..{MAX_PROTOCOL_FEE_BPS}, got {protocol_fee_bps}")
    if not 0 <= thaw_seconds < 2**64:
        raise DeployError(f"thaw_seconds out of range: {thaw_seconds}")
    if not 0 < min_bond < 2**128:
        raise DeployError(f"min_bond must be in 1..2^128-1, got {min_bond}")
    if not 0 <= dispute_window < 2**64 or not 0 <= dispute_deposit < 2**128:
        raise DeployError(f"dispute_window or dispute_deposit out of range: {dispute_window}, {dispute_deposit}")
    if not 0 <= flush_delay_seconds < 2**64:
        raise DeployError(f"flush_delay_seconds out of range: {flush_delay_seconds}")
    w3 = w3 or Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
    account = deployer_key if isinstance(deployer_key, LocalAccount) else Account.from_key(deployer_key)
    arbitrator = to_checksum_address(arbitrator) if arbitrator else account.address
    chain_id = w3.eth.chain_id
    s = _Deployer(w3, account, chain_id)
    addresses: dict[str, str] = {}
    blocks: dict[str, int] = {}
    abi_hashes: dict[str, str] = {}

    if token is None:
        addresses["PaymentToken"], blocks["PaymentToken"] = s.deploy("DemoToken", account.address)
        abi_hashes["PaymentToken"] = load_artifact("DemoToken").abi_hash
    else:
        token = to_checksum_address(token)
        if not w3.eth.get_code(token):
            raise DeployError(f"token {token} has no code on chain {chain_id}")
        addresses["PaymentToken"] = token
        blocks["PaymentToken"] = w3.eth.block_number
        abi_hashes["PaymentToken"] = load_artifact("DemoToken").abi_hash  # the ERC20 part is what we use
    tok = addresses["PaymentToken"]

    n = s.nonce
    predicted = {name: create_address(account.address, n + i) for i, name in enumerate(PROTOCOL_CONTRACTS)}
    ctor_args = {
        "DatasetRegistry": (predicted["RewardVault"], predicted["AttributionPool"]),
        "AdapterRegistry": (predicted["DatasetRegistry"],),
        "NodeRegistry": (
            tok,
            thaw_seconds,
            min_bond,
            predicted["ReceiptLog"],
            arbitrator,
            dispute_window,
            dispute_deposit,
            predicted["AttributionPool"],  # deployed later: the circular wiring stays immutable
        ),
        "RewardVault": (tok, predicted["UsageEscrow"], predicted["DatasetRegistry"]),
        "UsageEscrow": (
            tok,
            predicted["AdapterRegistry"],
            predicted["AttributionPool"],
            predicted["RewardVault"],
            predicted["NodeRegistry"],
            thaw_seconds,
            protocol_fee_bps,
            account.address,
        ),
        "ReceiptLog": (),
        "AttributionPool": (
            predicted["DatasetRegistry"],
            predicted["UsageEscrow"],
            predicted["ReceiptLog"],
            predicted["AdapterRegistry"],
            predicted["NodeRegistry"],
            flush_delay_seconds,
        ),
    }
    for name in PROTOCOL_CONTRACTS:
        addr, block = s.deploy(name, *ctor_args[name])
        if addr != predicted[name]:  # s.deploy checks its own nonce; this catches a nonce gap
            raise DeployError(f"{name} at {addr}, constructors were given {predicted[name]}")
        addresses[name], blocks[name] = addr, block
        abi_hashes[name] = load_artifact(name).abi_hash

    dep = Deployment(
        chain_id=chain_id,
        addresses=addresses,
        blocks=blocks,
        abi_hashes=abi_hashes,
        deployer=account.address,
        params={
            "protocol_fee_bps": protocol_fee_bps,
            "thaw_seconds": thaw_seconds,
            "min_bond": min_bond,
            "dispute_window": dispute_window,
            "dispute_deposit": dispute_deposit,
            "flush_delay_seconds": flush_delay_seconds,
        },
    )
    if out_dir is not None:
        dep.save(deployment_file(chain_id, out_dir))
    return dep


def _main(argv: list[str] | None = None) -> int:
    """`python -m chain.deploy --rpc-url URL (--keystore FILE | --dev-key N) [...]`."""
    import argparse
    import getpass
    import os

    from chain.devchain import DEV_PRIVATE_KEYS
    from chain.protocol import DEV_CHAIN_ID

    ap = argparse.ArgumentParser(prog="python -m chain.deploy", description="Deploy the LoRA Node contract set.")
    ap.add_argument("--rpc-url", required=True)
    key = ap.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--keystore",
        type=Path,
        help="encrypted JSON keystore of the deployer (password from $LORANODE_KEYSTORE_PASSWORD or a prompt)",
    )
    key.add_argument("--dev-key", type=int, metavar="N", help=f"anvil's well-known key N (chain {DEV_CHAIN_ID} only)")
    ap.add_argument("--token", help="existing ERC20 payment token (default: deploy DemoToken)")
    ap.add_argument("--protocol-fee-bps", type=int, default=DEFAULT_PROTOCOL_FEE_BPS)
    ap.add_argument("--thaw-seconds", type=int, default=DEFAULT_THAW_SECONDS)
    ap.add_argument("--min-bond", type=int, default=DEFAULT_MIN_BOND, help="bond a node needs to redeem (token units)")
    ap.add_argument("--dispute-window", type=int, default=DEFAULT_DISPUTE_WINDOW)
    ap.add_argument("--dispute-deposit", type=int, default=DEFAULT_DISPUTE_DEPOSIT)
    ap.add_argument("--arbitrator", help="address that resolves disputes (default: the deployer)")
    ap.add_argument("--out-dir", type=Path, default=DEPLOYMENTS_DIR)
    args = ap.parse_args(argv)
    w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 60}))
    if args.dev_key is not None:
        if w3.eth.chain_id != DEV_CHAIN_ID or not 0 <= args.dev_key < len(DEV_PRIVATE_KEYS):
            ap.error(f"--dev-key needs chain {DEV_CHAIN_ID} and N in 0..{len(DEV_PRIVATE_KEYS) - 1}")
        account = Account.from_key(DEV_PRIVATE_KEYS[args.dev_key])
    else:
        password = os.environ.get("LORANODE_KEYSTORE_PASSWORD") or getpass.getpass("keystore password: ")
        try:
            account = Account.from_key(Account.decrypt(json.loads(args.keystore.read_text()), password))
        except (OSError, ValueError) as e:
            ap.error(f"cannot open keystore {args.keystore}: {e}")
    try:
        dep = deploy(
            args.rpc_url,
            account,
            token=args.token,
            protocol_fee_bps=args.protocol_fee_bps,
            thaw_seconds=args.thaw_seconds,
            min_bond=args.min_bond,
            dispute_window=args.dispute_window,
            dispute_deposit=args.dispute_deposit,
            arbitrator=args.arbitrator,
            out_dir=args.out_dir,
            w3=w3,
        )
    except DeployError as e:
        print(f"deploy failed: {e}")
        return 1
    print(
        json.dumps(
            {"chain_id": dep.chain_id, "addresses": dep.addresses, "file": str(deployment_file(dep.chain_id, args.out_dir))},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
