"""Fixtures shared by the node integration tests: the three registries deployed on an anvil, and a
JSON-RPC proxy in front of anvil that can go down, come back, and refuse wide getLogs ranges (the
limits real providers have and anvil does not)."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eth_account import Account
from web3 import Web3

from chain.artifacts import load_artifact
from chain.devchain import DEV_PRIVATE_KEYS, free_port


@dataclass
class Registries:
    """DatasetRegistry, AdapterRegistry, NodeRegistry (+ DemoToken) deployed by dev key 0."""

    w3: Web3
    addresses: dict[str, str]
    blocks: dict[str, int]
    contracts: dict = field(default_factory=dict)

    def send(self, name: str, fn: str, *args, key_index: int = 0):
        acct = Account.from_key(DEV_PRIVATE_KEYS[key_index])
        tx = getattr(self.contracts[name].functions, fn)(*args).build_transaction({"from": acct.address})
        h = self.w3.eth.send_transaction(tx)  # anvil signs for its dev accounts
        rcpt = self.w3.eth.wait_for_transaction_receipt(h)
        assert rcpt["status"] == 1, f"{name}.{fn} reverted"
        return rcpt


def deploy_registries(url: str) -> Registries:
    w3 = Web3(Web3.HTTPProvider(url))
    deployer = Account.from_key(DEV_PRIVATE_KEYS[0]).address
    placeholder = Account.from_key(DEV_PRIVATE_KEYS[9]).address  # vault/escrow: unused by these tests

    def deploy(name: str, *args):
        art = load_artifact(name)
        c = w3.eth.contract(abi=art.abi_list, bytecode=art.bytecode)
        rcpt = w3.eth.wait_for_transaction_receipt(c.constructor(*args).transact({"from": deployer}))
        return w3.eth.contract(address=rcpt["contractAddress"], abi=art.abi_list), rcpt["blockNumber"]

    token, tb = deploy("DemoToken", deployer)
    datasets, db = deploy("DatasetRegistry", placeholder, placeholder)
    adapters, ab = deploy("AdapterRegistry", datasets.address)
    # receipts log, arbitrator and attribution pool: placeholders too (no commits, disputes or slashes here); min bond 1
    nodes, nb = deploy("NodeRegistry", token.address, 3600, 1, placeholder, placeholder, 3600, 0, placeholder)
    cs = {"DemoToken": token, "DatasetRegistry": datasets, "AdapterRegistry": adapters, "NodeRegistry": nodes}
    return Registries(
        w3,
        {k: v.address for k, v in cs.items()},
        {"DemoToken": tb, "DatasetRegistry": db, "AdapterRegistry": ab, "NodeRegistry": nb},
        cs,
    )


@pytest.fixture
def registries(fresh_anvil):
    return deploy_registries(fresh_anvil.url)


class RpcProxy:
    """HTTP JSON-RPC proxy on 127.0.0.1. `stop()`/`start()` make the port dead and alive again;
    `max_log_range` makes eth_getLogs fail like providers that cap block ranges."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.port = free_port()
        self.max_log_range: int | None = None
        self.calls: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RpcProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = json.loads(body)
                proxy.calls.append(req.get("method", "?") if isinstance(req, dict) else "batch")
                reply = proxy._limit(req)
                if reply is None:
                    # the upstream is the test's own loopback anvil
                    r = urllib.request.Request(proxy.upstream, body, {"Content-Type": "application/json"})  # noqa: S310
                    with urllib.request.urlopen(r, timeout=30) as resp:  # noqa: S310
                        reply = resp.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _limit(self, req) -> bytes | None:
        if self.max_log_range is None or not isinstance(req, dict) or req.get("method") != "eth_getLogs":
            return None
        f = req["params"][0]
        span = int(f["toBlock"], 16) - int(f["fromBlock"], 16) + 1
        if span <= self.max_log_range:
            return None
        err = {"code": -32005, "message": f"query exceeds max block range {self.max_log_range}"}
        return json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "error": err}).encode()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def rpc_proxy(fresh_anvil):
    p = RpcProxy(fresh_anvil.url).start()
    yield p
    p.stop()


PG_URL = "postgresql://postgres@127.0.0.1/test"


def _pg_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001 - no driver, no server, refused login...: any failure means "skip the Postgres tests"
        return False


@pytest.fixture
def pg_url():
    """A private schema in the machine's Postgres (dropped afterwards); skips if Postgres is unreachable."""
    import uuid

    if not _pg_reachable():
        pytest.skip("Postgres at 127.0.0.1/test is not reachable on this machine")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """One live dev stack (anvil, contracts, a published adapter, the real node) shared by the chat,
    dashboard and protocol-document tests (`live_stack.py`); each pays from its own dev account."""
    from live_stack import live_stack

    with live_stack(tmp_path_factory.mktemp("live-stack")) as s:
        yield s
