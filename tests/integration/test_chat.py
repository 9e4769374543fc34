"""`loranode chat` and `loranode receipts list|verify` against a live dev stack: anvil, the real
contracts, the real node with the embedded model serving a published adapter."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from chain.devchain import free_port
from live_stack import ACCT, KEY
from node.cli.app import app

PASSWORD = "pw for tests"
runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The payer's LORANODE_HOME: its chat state (lane totals) lives across the module's tests."""
    return tmp_path_factory.mktemp("payer-home")


@pytest.fixture
def env(live, home, tmp_path, monkeypatch):
    from node.keystore import create_keystore

    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    wallets = tmp_path / "wallets"
    for role in ("payer", "carol"):
        create_keystore(wallets / f"{role}.json", PASSWORD, KEY[role], scrypt_n=1024)
    for k, v in {
        **live.stack.env(),
        "LORANODE_HOME": str(home),
        "LORANODE_WALLET_PASSWORD_FILE": str(pw),
        "LORANODE_WALLET": str(wallets / "payer.json"),
    }.items():
        monkeypatch.setenv(k, v)
    return {"live": live, "wallets": wallets, "tmp": tmp_path}


def run(*args, ok=True, input=None):
    r = runner.invoke(app, list(args), input=input, catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.stdout + r.stderr
    else:
        assert r.exit_code == 1, r.stdout + r.stderr
    return r


def answers(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_one_shot_twice_carries_the_lane_totals_over(env):
    model = f"adapter-{env['live'].adapter_id}"
    first = answers(run("chat", model, "Say hello", "--max-tokens", "6", "--json"))[0]
    second = answers(run("chat", model, "Say it again", "--max-tokens", "6", "--json"))[0]
    for a in (first, second):
        assert a["receipt_verified"] and a["node"] == ACCT["node"].address
        assert all(isinstance(v, str) for v in a["cost"].values())  # amounts are decimal strings
        assert int(a["cost"]["total"]) == int(a["cost"]["compute"]) + int(a["cost"]["adapter"]) > 0
    # the second invocation started from the first's totals: its voucher covered the first answer
    assert int(first["lane_totals"]["compute"]) == int(first["cost"]["compute"])
    assert int(second["lane_totals"]["compute"]) == int(first["cost"]["compute"]) + int(second["cost"]["compute"])
    assert int(second["lane_totals"]["adapter"]) == int(first["cost"]["adapter"]) + int(second["cost"]["adapter"])
    listed = json.loads(run("receipts", "list", "--json").stdout)
    assert [x["request_id"] for x in listed] == [first["receipt_id"], second["receipt_id"]]
    assert all(x["status"] == "paid" and isinstance(x["cost"], str) for x in listed)
    checked = json.loads(run("receipts", "verify", "--json").stdout)
    assert [x["signature_valid"] for x in checked] == [True, True]
    # human output: the answer streams to stdout, cost and verified receipt id to stderr
    r = run("chat", model, "Hi", "--max-tokens", "4")
    assert "cost" in r.stderr and "verified" in r.stderr and "receipt 0x" in r.stderr


def test_interactive_conversation_and_signer_key(env):
    live = env["live"]
    c = live.contracts
    c.escrow.authorize_signer_key(ACCT["payer"], KEY["carol"])
    r = run(
        "chat",
        f"adapter-{live.adapter_id}",
        "--max-tokens",
        "4",
        "--json",
        "--signer-keystore",
        str(env["wallets"] / "carol.json"),
        "--payer",
        ACCT["payer"].address,
        input="Hello\nAnd again\n/exit\nignored\n",
    )
    got = answers(r)
    assert len(got) == 2 and int(got[1]["lane_totals"]["compute"]) == int(got[0]["lane_totals"]["compute"]) + int(
        got[1]["cost"]["compute"]
    )
    # an unauthorized signer key: the node refuses, the error says why, nothing is recorded as paid
    r = run(
        "chat",
        f"adapter-{live.adapter_id}",
        "Hi",
        "--max-tokens",
        "4",
        "--signer-keystore",
        str(env["wallets"] / "carol.json"),
        "--payer",
        ACCT["alice"].address,
        ok=False,
    )
    assert "402" in r.stderr and "unauthorized" in r.stderr


def test_discovery_skips_dead_impersonating_and_hostile_nodes(env):
    live = env["live"]
    c = live.contracts
    from inference.base_model import EMBEDDED_MODEL_ID

    dead = f"http://127.0.0.1:{free_port()}"
    c.nodes.register(ACCT["dave"], dead, [EMBEDDED_MODEL_ID], 1)  # cheapest, but down
    c.nodes.register(ACCT["bob"], live.url, [EMBEDDED_MODEL_ID], 1)  # someone else's node behind its endpoint
    c.nodes.register(ACCT["carol"], "javascript:alert(1)\x1b[2J", [EMBEDDED_MODEL_ID], 1)
    r = run("chat", f"adapter-{live.adapter_id}", "Hi", "--max-tokens", "4", "--json")
    assert answers(r)[0]["node"] == ACCT["node"].address
    assert ACCT["dave"].address in r.stderr and "unreachable" in r.stderr
    assert ACCT["bob"].address in r.stderr and "answers as node" in r.stderr
    assert ACCT["carol"].address in r.stderr and "control" in r.stderr
    assert "\x1b" not in r.stderr
    # an explicit --node that is not a URL, or serves nothing at that address
    assert "not http" in run("chat", "adapter-1", "Hi", "--node", "file:///etc/passwd", ok=False).stderr
    assert "unreachable" in run("chat", "adapter-1", "Hi", "--node", dead, ok=False).stderr
    assert "not registered" in run("chat", "adapter-99", "Hi", ok=False).stderr


def test_overcharging_node_is_refused_and_reported(env):
    """The node's quote (what it charges) is above the compute price it registered on chain."""
    live = env["live"]
    c = live.contracts
    info = c.nodes.get_node(ACCT["node"].address)
    c.nodes.update(ACCT["node"], info.endpoint, list(info.base_model_ids), info.compute_price_per_1k // 2)
    try:
        r = run("chat", f"adapter-{live.adapter_id}", "Hi", "--max-tokens", "4", ok=False)
        assert "overcharges" in r.stderr and ACCT["node"].address in r.stderr and "no node serves" in r.stderr
        assert not answers(r)
    finally:
        c.nodes.update(ACCT["node"], info.endpoint, list(info.base_model_ids), info.compute_price_per_1k)


def test_a_node_with_no_bond_to_lose_is_refused(env):
    """A registered node that answers the probe correctly but holds no bond (it could never be
    slashed for what it signs) is refused, by discovery and when named with --node. Its endpoint is
    a small HTTP server in this test that replays the live node's /v1/models and, as owner2 (registered
    without a bond), its /v1/node quote: standing in for an unbonded operator's server, which the
    test cannot otherwise run beside the live node."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from inference.base_model import EMBEDDED_MODEL_ID
    from node.client.chat.discovery import get_json

    live = env["live"]
    c = live.contracts
    models, _ = get_json(live.url + "/v1/models")
    quote, _ = get_json(live.url + "/v1/node")
    quote = {**quote, "node": ACCT["owner2"].address, "compute_price_per_1k": 1}  # cheapest of all
    pages = {"/v1/models": models, "/v1/node": quote}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name for the GET handler
            body = json.dumps(pages.get(self.path, {})).encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        c.nodes.register(ACCT["owner2"], url, [EMBEDDED_MODEL_ID], 1)  # no bond
        assert not c.nodes.can_redeem(ACCT["owner2"].address)
        r = run("chat", f"adapter-{live.adapter_id}", "Hi", "--max-tokens", "4", "--json")
        assert answers(r)[0]["node"] == ACCT["node"].address  # the bonded node, though dearer
        assert ACCT["owner2"].address in r.stderr and "no bond to lose" in r.stderr
        r = run("chat", f"adapter-{live.adapter_id}", "Hi", "--node", url, ok=False)
        assert "no bond to lose" in r.stderr and not answers(r)
    finally:
        c.nodes.deregister(ACCT["owner2"])
        server.shutdown()


def test_an_interrupted_stream_is_paid_from_its_receipt_next_time(env):
    """Ctrl-C mid-answer: the node still metered and signed it; the next session fetches the
    receipt by the stream's id and adds its cost, so its voucher is not refused as too low."""
    from node.client.chat.discovery import discover
    from node.client.chat.session import ChatSession
    from node.client.chat.state import ChatState

    live = env["live"]
    model = f"adapter-{live.adapter_id}"
    from node.cli.chat import state_path

    state = ChatState(state_path(None, live.contracts.chain_id, ACCT["payer"].address))
    cand = discover(live.contracts, model, node_url=live.url).chosen[0]

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    with pytest.raises(Stop):
        ChatSession(cand, ACCT["payer"], state, max_tokens=40).ask(model, [{"role": "user", "content": "Tell a story"}], stop)
    (pending,) = state.receipts(status="pending")
    before = state.lane_totals(cand.address)[live.adapter_id]
    time.sleep(1.0)  # the node meters the dropped stream when it sees the disconnect
    session = ChatSession(cand, ACCT["payer"], state, max_tokens=40)
    assert session.recover_pending() == [pending.request_id]
    paid = {r.request_id: r for r in state.receipts(status="paid")}[pending.request_id]
    assert paid.compute > 0 and session.wallet.totals(live.adapter_id)[0] == before[0] + paid.compute
    answer = session.ask(model, [{"role": "user", "content": "Hi"}])  # not refused: the voucher covers it
    assert answer.totals[0] == before[0] + paid.compute + answer.compute_cost
    state.close()


class LyingQuoteProxy:
    """A node that quotes less than it charges: a test double in front of the real node (no real
    node would lie about its own prices, so one is built): `/v1/node` says half the compute price,
    everything else is relayed to the real node, which bills its real price."""

    def __init__(self, upstream: str):
        import http.server
        import threading
        import urllib.error
        import urllib.request

        up = upstream

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _relay(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                # a relay in front of the test's own loopback node
                req = urllib.request.Request(up + self.path, data=body, method=method, headers=headers)  # noqa: S310
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310
                        status, ctype, data = r.status, r.headers.get("Content-Type"), r.read()
                except urllib.error.HTTPError as e:
                    status, ctype, data = e.code, e.headers.get("Content-Type"), e.read()
                if self.path == "/v1/node":
                    quote = json.loads(data)
                    quote["compute_price_per_1k"] = str(int(quote["compute_price_per_1k"]) // 2)
                    data = json.dumps(quote).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                self._relay("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_node_charging_more_than_it_quoted_is_refused_and_not_paid(env):
    live = env["live"]
    proxy = LyingQuoteProxy(live.url)
    try:
        before = json.loads(run("receipts", "list", "--json").stdout)
        r = run("chat", f"adapter-{live.adapter_id}", "Hi", "--max-tokens", "4", "--node", proxy.url, ok=False)
        assert "refused" in r.stderr and "charged" in r.stderr and "nothing was paid" in r.stderr, r.stderr
        after = json.loads(run("receipts", "list", "--json").stdout)
        new = [x for x in after if x["request_id"] not in {b["request_id"] for b in before}]
        assert [x["status"] for x in new] == ["refused"]  # recorded as evidence, its cost not added to the lane
    finally:
        proxy.close()
