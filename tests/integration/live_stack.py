"""A live dev stack for tests of what users see: `loranode dev up`'s stack (anvil, the contracts,
funded dev accounts, node.toml) plus one published dataset and adapter, and the real node with the
embedded model serving them. Shared by the chat, dashboard and protocol-document tests (module
fixture `live` in conftest.py: one node start per session; each test module pays from its own dev
account, so lane totals never cross modules)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from chain.devchain import DEV_PRIVATE_KEYS, free_port
from node.dev.stack import DEV_ROLES, NodeThread, get_json, start_dev_stack, wait_for

KEY = dict(zip(DEV_ROLES, DEV_PRIVATE_KEYS, strict=True))
ACCT = {r: Account.from_key(k) for r, k in KEY.items()}
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
ADAPTER_PRICE = 2 * 10**15  # per 1K tokens
ESCROW = 100 * 10**18


@dataclass
class LiveStack:
    stack: object  # node.dev.stack.DevStack
    node: NodeThread
    dataset_id: int
    adapter_id: int

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def contracts(self):
        return self.stack.contracts


@contextlib.contextmanager
def live_stack(data_dir: Path, *, node_extra: dict | None = None):
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
    from node.config import load_config
    from node.ipfs import EmbeddedStore

    stack = start_dev_stack(data_dir, chain_port=0, node_port=free_port(), node_extra=node_extra)
    node = None
    try:
        c = stack.contracts
        # a dataset whose on-chain name is HTML: every view must show it as text
        c.datasets.create_dataset(ACCT["curator"], HOSTILE_NAME, "CC0-1.0", "")
        ds = c.datasets.dataset_count()
        text = data_dir / "contribution.txt"
        text.write_bytes(b"Arr matey, the sea be wide and the rum be gone.")
        store = EmbeddedStore(data_dir / "ipfs")
        cid = asyncio.run(store.add_path(text))  # the node fetches it to build the attribution index
        c.datasets.contribute(ACCT["alice"], ds, cid, text.stat().st_size)
        c.datasets.accept(ACCT["curator"], c.datasets.contribution_count(), 5)
        folder = make_random_adapter(
            data_dir / "adapter",
            AutoConfig.from_pretrained(resolve_model_folder(None)),
            rank=4,
            seed=1,
            base_model_id=EMBEDDED_MODEL_ID,
        )
        cid = asyncio.run(store.add_path(folder))
        c.adapters.register(ACCT["owner1"], EMBEDDED_MODEL_ID, cid, 4, ADAPTER_PRICE, 7000, [ds], [3000])
        aid = c.adapters.adapter_count()
        c.token.approve(ACCT["payer"], c.escrow.address, ESCROW)
        c.escrow.deposit(ACCT["payer"], ACCT["node"].address, ESCROW)
        node = NodeThread(load_config(stack.config_path)).start()
        wait_for(
            lambda: any(m["id"] == f"adapter-{aid}" for m in get_json(node.url + "/v1/models")["data"]),
            180,
            "the node to load the adapter",
        )
        yield LiveStack(stack, node, ds, aid)
    finally:
        if node is not None:
            node.stop()
        stack.anvil.stop()


def fund_escrow(stack: LiveStack, role: str, amount: int = ESCROW) -> None:
    """Deposit `amount` of `role`'s minted dev tokens into UsageEscrow."""
    c = stack.contracts
    c.token.approve(ACCT[role], c.escrow.address, amount)
    c.escrow.deposit(ACCT[role], ACCT["node"].address, amount)
