"""Options shared by the command groups, defined once (each reads its LORANODE_* variable when not given)."""

from __future__ import annotations

import typer

DEFAULT_RPC = "http://127.0.0.1:8545"

# chain and wallet
RpcOpt = typer.Option(DEFAULT_RPC, "--rpc-url", envvar="LORANODE_RPC_URL", help="JSON-RPC URL of the chain.")
DeploymentOpt = typer.Option(
    None, "--deployment", envvar="LORANODE_DEPLOYMENT", help="Deployment JSON (default: deployments/<chainId>.json)."
)
KeystoreOpt = typer.Option(
    None, "--keystore", envvar="LORANODE_WALLET", help="Encrypted wallet keystore (default: ~/.loranode/wallets/default.json)."
)
PasswordFileOpt = typer.Option(
    None, "--password-file", envvar="LORANODE_WALLET_PASSWORD_FILE", help="File holding the wallet password (else prompted)."
)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")

# content (IPFS)
IpfsStoreOpt = typer.Option(
    None, "--ipfs-store", envvar="LORANODE_IPFS_STORE", help="Embedded IPFS store folder (default: <data dir>/ipfs, as the node)."
)
KuboOpt = typer.Option(
    None,
    "--kubo-url",
    envvar="LORANODE_KUBO_URL",
    help="Kubo RPC API URL (e.g. http://127.0.0.1:5001): uploads go through it instead of the embedded store, "
    "fetches try it after the store.",
)
GatewayOpt = typer.Option(None, "--gateway", help="Trustless IPFS gateway URL (repeatable), tried after the store and Kubo.")

# the payer's chat state (`chat`, `receipts`)
StateOpt = typer.Option(
    None,
    "--state",
    envvar="LORANODE_CHAT_STATE",
    help="Chat state (lane totals, receipts) (default: ~/.loranode/chat/<chainId>-<payer>.sqlite).",
)
SignerKeystoreOpt = typer.Option(
    None, "--signer-keystore", help="Sign vouchers with this keystore's key (a signer the payer authorized); needs --payer."
)
PayerOpt = typer.Option(None, "--payer", help="The paying address, when signing with --signer-keystore.")
