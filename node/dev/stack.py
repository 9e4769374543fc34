"""`loranode dev up`: everything for one machine — anvil on 127.0.0.1, the contracts deployed, dev
accounts funded with the demo token, the embedded IPFS store, a ready `node.toml` — and the node.

Only anvil's well-known dev keys are used, and only on chain id 31337.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chain.devchain import DEV_PRIVATE_KEYS, Anvil, port_is_free
from chain.protocol import DEV_CHAIN_ID

if TYPE_CHECKING:
    from chain.contracts import Contracts

DEV_ROLES = ("deployer", "node", "payer", "owner1", "owner2", "curator", "alice", "bob", "carol", "dave")
DEV_FUNDING = 10_000 * 10**18  # demo tokens minted to every dev account
DEFAULT_COMPUTE_PRICE = 10**15  # 0.001 token per 1K tokens


@dataclass
class DevStack:
    anvil: Anvil
    contracts: Contracts
    deployment_path: Path
    config_path: Path
    data_dir: Path

    @property
    def rpc_url(self) -> str:
        return self.anvil.url

    def env(self) -> dict[str, str]:
        """Variables that point the `loranode` CLI at this dev chain."""
        return {
            "LORANODE_RPC_URL": self.rpc_url,
            "LORANODE_DEPLOYMENT": str(self.deployment_path),
            "LORANODE_IPFS_STORE": str(self.data_dir / "ipfs"),
        }


def write_node_toml(
    path: Path,
    *,
    rpc_url: str,
    deployment: Path,
    data_dir: Path,
    listen_port: int,
    compute_price_per_1k: int,
    extra: dict | None = None,
) -> Path:
    import tomli_w

    cfg = {
        "data_dir": str(data_dir),
        "rpc_url": rpc_url,
        "deployment": str(deployment),
        "confirmations": 0,  # anvil mines instantly and never reorgs by itself
        "watcher_poll_s": 0.5,
        "dev_mode": True,
        "dev_key_index": DEV_ROLES.index("node"),
        "listen_host": "127.0.0.1",
        "listen_port": listen_port,
        "compute_price_per_1k": compute_price_per_1k,
        "settlement_interval_s": 5.0,
        "redeem_interval_s": 5.0,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(cfg))
    return path


def start_dev_stack(
    data_dir: Path,
    *,
    chain_port: int = 8545,
    node_port: int = 8080,
    compute_price_per_1k: int = DEFAULT_COMPUTE_PRICE,
    node_extra: dict | None = None,
) -> DevStack:
    """Start anvil (on `chain_port` if free, else any free port), deploy, fund, register and bond the node
    and write `node.toml`. The caller stops `stack.anvil`."""
    from eth_account import Account
    from web3 import Web3

    from chain.contracts import Contracts
    from chain.deploy import deploy

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    anvil = Anvil(port=chain_port if chain_port and port_is_free("127.0.0.1", chain_port) else 0).start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        dep = deploy(anvil.url, DEV_PRIVATE_KEYS[0], out_dir=None, w3=w3)
        dep_path = dep.save(data_dir / f"deployment-{DEV_CHAIN_ID}.json")
        c = Contracts(w3, dep)
        deployer = Account.from_key(DEV_PRIVATE_KEYS[0])
        for key in DEV_PRIVATE_KEYS[1:]:
            c.token.mint(deployer, Account.from_key(key).address, DEV_FUNDING)
        node = Account.from_key(DEV_PRIVATE_KEYS[DEV_ROLES.index("node")])
        port = node_port if node_port and port_is_free("127.0.0.1", node_port) else 0
        from inference.embedded_model import EMBEDDED_MODEL_ID

        bond = c.nodes.dispute_terms().min_bond  # staked: only a bonded node can redeem vouchers
        c.token.approve(node, c.nodes.address, bond)
        c.nodes.register(node, f"http://127.0.0.1:{port or 8080}", [EMBEDDED_MODEL_ID], compute_price_per_1k, bond)
        cfg = write_node_toml(
            data_dir / "node.toml",
            rpc_url=anvil.url,
            deployment=dep_path,
            data_dir=data_dir / "node",
            listen_port=port,
            compute_price_per_1k=compute_price_per_1k,
            extra={"ipfs_store": str(data_dir / "ipfs"), **(node_extra or {})},
        )
        return DevStack(anvil=anvil, contracts=c, deployment_path=dep_path, config_path=cfg, data_dir=data_dir)
    except BaseException:
        anvil.stop()
        raise


class NodeThread:
    """The daemon's `serve()` on its own event loop in a thread, for the demo and tests
    (signal handling stays with the main thread)."""

    def __init__(self, config):
        self.config, self.url, self.app, self.error = config, None, None, None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="loranode-node", daemon=True)

    def _main(self) -> None:
        from node.daemon.root import serve

        async def main():
            self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
            await serve(self.config, stop=self.stop_event, on_ready=self._on_ready, handle_signals=False)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001  (anything that ends the thread, Ctrl-C too: start() re-raises it)
            self.error = e
            self._ready.set()

    def _on_ready(self, url, app) -> None:
        self.url, self.app = url, app
        self._ready.set()

    def start(self, timeout: float = 300) -> "NodeThread":
        self.thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the node did not start in time")
        if self.error:
            raise self.error
        return self

    def stop(self, timeout: float = 60) -> None:
        if self.url and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)


def get_json(url: str, timeout: float = 30) -> dict:
    """GET a node endpoint and decode its JSON (loopback only in practice)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310  (the dev node's own http URL)
        return json.loads(r.read())


def wait_for(pred, timeout: float, what: str, every: float = 0.5):
    """Poll `pred` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
