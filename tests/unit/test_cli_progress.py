"""Progress of long CLI work is drawn on a terminal (stderr), and absent elsewhere (stdout may carry
--json): a transaction's wait for mining on a real anvil, and an IPFS fetch's byte count."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

import node.services.progress as cp


@pytest.fixture
def terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(cp, "progress_console", Console(file=buf, force_terminal=True, width=120))
    return buf


def test_transaction_wait_shows_a_spinner_naming_the_transaction(anvil, terminal):
    from eth_account import Account
    from web3 import Web3

    from chain.devchain import DEV_PRIVATE_KEYS

    w3 = Web3(Web3.HTTPProvider(anvil.url))
    cp.show_tx_waits(w3)
    acct = Account.from_key(DEV_PRIVATE_KEYS[0])
    tx = {
        "to": Account.from_key(DEV_PRIVATE_KEYS[1]).address,
        "value": 1,
        "gas": 21_000,
        "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(acct.address),
        "chainId": w3.eth.chain_id,
    }
    h = w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(h)["status"] == 1
    assert "waiting for transaction 0x" + h.hex().removeprefix("0x")[:10] in terminal.getvalue()


def test_fetch_bar_counts_every_byte_and_is_silent_off_a_terminal(tmp_path, terminal, monkeypatch):
    from node.ipfs import EmbeddedStore

    f = tmp_path / "blob.bin"
    f.write_bytes(b"x" * 700_000)  # three 256 KiB chunks
    store = EmbeddedStore(tmp_path / "store")
    cid = store.add_path_sync(f)
    seen = []
    with cp.transfer_bar("fetching blob") as advance:
        asyncio.run(store.fetch(cid, tmp_path / "out", 1 << 20, progress=lambda n: (seen.append(n), advance(n))))
    assert sum(seen) == 700_000
    assert "fetching blob" in terminal.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(cp, "progress_console", Console(file=quiet, force_terminal=False))
    with cp.transfer_bar("fetching blob") as advance, cp.spinner("waiting"):
        advance(10)
    assert quiet.getvalue() == ""
