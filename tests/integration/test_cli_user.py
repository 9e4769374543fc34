"""The user-facing CLI (`loranode wallet|dataset|adapter|escrow|rewards|receipts|node register`)
against real contracts on a real anvil. Every failure path checks three things: a non-zero exit,
a clear message, and that nothing was sent on chain (the sender's nonce did not move)."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from eth_account import Account
from typer.testing import CliRunner
from web3 import Web3

from chain.contracts import Contracts
from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from inference.base_model import EMBEDDED_MODEL_ID
from node.cli.app import app
from node.services.receipt_files import MAX_RECEIPT_FILE_BYTES

ROLES = ["deployer", "node", "payer", "owner1", "owner2", "curator", "alice", "bob"]
KEY = dict(zip(ROLES, DEV_PRIVATE_KEYS, strict=False))  # the first eight of anvil's ten dev keys
ADDR = {r: Account.from_key(k).address for r, k in KEY.items()}
PASSWORD = "correct horse battery staple"
TOKEN = 10**18


@pytest.fixture(scope="module")
def chain(anvil_session, tmp_path_factory):
    """Contracts deployed once for the module (inside a module snapshot); every test runs from a
    snapshot of this state."""
    module_snap = anvil_session.rpc("evm_snapshot")
    w3 = Web3(Web3.HTTPProvider(anvil_session.url))
    dep = deploy(anvil_session.url, KEY["deployer"], out_dir=None, w3=w3)
    path = dep.save(tmp_path_factory.mktemp("dep") / "deployment.json")
    c = Contracts(w3, dep)
    deployer = Account.from_key(KEY["deployer"])
    for role in ("payer", "owner1", "alice", "bob", "node"):
        c.token.mint(deployer, ADDR[role], 1000 * TOKEN)
    yield anvil_session, c, path
    anvil_session.rpc("evm_revert", [module_snap])


@pytest.fixture
def env(chain, tmp_path, monkeypatch):
    """CLI environment: the chain, a wallet folder with every role imported, a password file."""
    anvil, c, dep_path = chain
    snap = anvil.rpc("evm_snapshot")
    home = tmp_path / "home"
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    e = {
        "LORANODE_RPC_URL": anvil.url,
        "LORANODE_DEPLOYMENT": str(dep_path),
        "LORANODE_HOME": str(home),
        "LORANODE_WALLET_PASSWORD_FILE": str(pw),
        "LORANODE_IPFS_STORE": str(tmp_path / "ipfs"),
        "LORANODE_KEYSTORE_SCRYPT_N": "1024",
    }
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    from node.keystore import create_keystore

    for role in ROLES:
        create_keystore(home / "wallets" / f"{role}.json", PASSWORD, KEY[role], scrypt_n=1024)
    yield {"c": c, "home": home, "pw": pw, "tmp": tmp_path}
    anvil.rpc("evm_revert", [snap])


runner = CliRunner()


def _invoke(env, args, role: str | None, ok: bool):
    argv = list(args)
    if role:
        argv += ["--keystore", str(env["home"] / "wallets" / f"{role}.json")]
    r = runner.invoke(app, argv, catch_exceptions=False)
    out = r.stdout + (r.stderr if r.stderr_bytes is not None else "")
    if ok:
        assert r.exit_code == 0, out
    else:
        assert r.exit_code != 0, out
    return r, out


def cli(env, *args, role: str | None = None, ok: bool = True):
    """(exit code, stdout and stderr together) of one CLI command."""
    r, out = _invoke(env, args, role, ok)
    return r.exit_code, out


def nonce(env, role):
    return env["c"].w3.eth.get_transaction_count(ADDR[role])


def jcli(env, *args, role=None):
    """A successful command's `--json` document, from stdout alone (a warning on stderr is not part of it)."""
    r, out = _invoke(env, [*args, "--json"], role, True)
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not one JSON document on stdout: {out!r}") from None


# ---------------------------------------------------------------- wallet


def test_wallet_new_address_and_import(env, tmp_path):
    ks = tmp_path / "w" / "new.json"
    got = jcli(env, "wallet", "new", "--keystore", str(ks))
    assert stat.S_IMODE(ks.stat().st_mode) == 0o600
    assert jcli(env, "wallet", "address", "--keystore", str(ks))["address"] == got["address"]
    # a second `new` on the same path refuses instead of destroying the key
    _, out = cli(env, "wallet", "new", "--keystore", str(ks), ok=False)
    assert "already exists" in out
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY["bob"])
    imp = jcli(env, "wallet", "import", "--key-file", str(keyfile), "--keystore", str(tmp_path / "imp.json"))
    assert imp["address"] == ADDR["bob"]
    assert KEY["bob"][2:] not in (tmp_path / "imp.json").read_text()  # encrypted, not plaintext


def test_wallet_import_rejects_bad_keys_without_echoing_them(env, tmp_path):
    secret = "zz" + "ab" * 31
    keyfile = tmp_path / "key"
    keyfile.write_text(secret)
    _, out = cli(env, "wallet", "import", "--key-file", str(keyfile), "--keystore", str(tmp_path / "x.json"), ok=False)
    assert "64 hex digits" in out and secret not in out
    keyfile.write_text("0x" + "00" * 32)  # zero is not a valid secp256k1 key
    _, out = cli(env, "wallet", "import", "--key-file", str(keyfile), "--keystore", str(tmp_path / "y.json"), ok=False)
    assert "not a valid" in out and not (tmp_path / "y.json").exists()


def test_wrong_password_sends_nothing(env, tmp_path):
    bad = tmp_path / "badpw"
    bad.write_text("wrong")
    n = nonce(env, "curator")
    _, out = cli(env, "dataset", "create", "ds", "--password-file", str(bad), role="curator", ok=False)
    assert "wrong password" in out
    assert nonce(env, "curator") == n


def test_missing_wallet_and_dead_rpc_are_clear(env, tmp_path):
    _, out = cli(env, "escrow", "balance", "--node", ADDR["node"], "--keystore", str(tmp_path / "none.json"), ok=False)
    assert "no wallet" in out
    _, out = cli(env, "dataset", "list", "--rpc-url", "http://127.0.0.1:9", ok=False)
    assert "cannot reach the chain" in out


# ---------------------------------------------------------------- datasets


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_lifecycle(env, tmp_path):
    got = jcli(env, "dataset", "create", "Pirate talk", "--license", "CC0-1.0", role="curator")
    ds = got["dataset_id"]
    f = _jsonl(tmp_path / "a.jsonl", [{"prompt": "hi", "response": "Arr matey!"}] * 3)
    c1 = jcli(env, "dataset", "contribute", str(ds), str(f), role="alice")
    c2 = jcli(env, "dataset", "contribute", str(ds), str(f), role="bob")
    assert c1["tokens"] > 0 and c1["cid"] == c2["cid"]  # same bytes, same CID
    jcli(env, "dataset", "accept", str(c1["contribution_id"]), "--weight", "5", role="curator")
    jcli(env, "dataset", "reject", str(c2["contribution_id"]), role="curator")
    shown = jcli(env, "dataset", "show", str(ds))
    assert shown["dataset"]["total_weight"] == "5"  # amounts and weights are decimal strings in --json
    assert [x["status"] for x in shown["contributions"]] == ["accepted", "rejected"]
    assert [d["name"] for d in jcli(env, "dataset", "list")] == ["Pirate talk"]
    _, out = cli(env, "dataset", "show", str(ds))
    assert "Pirate talk" in out and "accepted" in out  # the rich table


HOSTILE_TEXT = "[bold]✓ verified[/bold] \x1b[2J\x1b]8;;http://evil.example\x07click\x1b]8;;\x07 \x9b31m"


def test_on_chain_strings_are_shown_as_text(env, monkeypatch):
    """Attack: a curator names a dataset with rich markup and terminal escape sequences (to clear the
    screen, fake a "✓ verified" badge, plant a hyperlink). The contracts only bound its length, so
    every table the CLI prints shows it as plain text: markup literal, controls replaced
    (confirmations likewise: tests/unit/test_terminal_text.py)."""
    c = env["c"]
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that no table cell wraps the name
    c.datasets.create_dataset(Account.from_key(KEY["curator"]), HOSTILE_TEXT, HOSTILE_TEXT, "")
    for args in (("dataset", "list"), ("dataset", "show", "1")):
        _, out = cli(env, *args)
        assert "[bold]✓ verified[/bold]" in " ".join(out.split())  # the markup printed, not applied
        assert not any(ch in out for ch in "\x1b\x07\x9b"), (args, out)
    got = jcli(env, "dataset", "list")  # JSON keeps the exact on-chain string (escaped by JSON)
    assert got[0]["name"] == HOSTILE_TEXT


def test_dataset_bad_input_sends_nothing(env, tmp_path):
    ds = jcli(env, "dataset", "create", "d", role="curator")["dataset_id"]
    n = nonce(env, "alice")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    _, out = cli(env, "dataset", "contribute", str(ds), str(bad), role="alice", ok=False)
    assert "prompt" in out and "response" in out
    bad.write_bytes(b"\xff\xfe not utf8")
    _, out = cli(env, "dataset", "contribute", str(ds), str(bad), role="alice", ok=False)
    assert "UTF-8" in out
    bad.write_text("{not json\n")
    _, out = cli(env, "dataset", "contribute", str(ds), str(bad), role="alice", ok=False)
    assert "invalid JSON" in out
    good = _jsonl(tmp_path / "g.jsonl", [{"text": "hello"}])
    _, out = cli(env, "dataset", "contribute", "999", str(good), role="alice", ok=False)
    assert "does not exist" in out
    assert nonce(env, "alice") == n
    # accepting as a non-curator: the contract's custom error, found by estimation before sending
    cid = jcli(env, "dataset", "contribute", str(ds), str(good), role="alice")["contribution_id"]
    n = nonce(env, "bob")
    _, out = cli(env, "dataset", "accept", str(cid), role="bob", ok=False)
    assert "DatasetRegistry" in out and "Curator" in out
    assert nonce(env, "bob") == n
    _, out = cli(env, "dataset", "create", "x" * 500, role="curator", ok=False)
    assert "1-200 characters" in out


# ---------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import resolve_model_folder

    cfg = AutoConfig.from_pretrained(resolve_model_folder(None))
    return make_random_adapter(tmp_path_factory.mktemp("ad") / "a", cfg, rank=4, seed=3, base_model_id=EMBEDDED_MODEL_ID)


def test_adapter_publish_show_version_deprecate(env, adapter_folder):
    ds = jcli(env, "dataset", "create", "d", role="curator")["dataset_id"]
    got = jcli(env, "adapter", "publish", str(adapter_folder), "--price", "0.5", "--datasets", f"{ds}:2500", role="owner1")
    aid = got["adapter_id"]
    assert got["model"] == f"adapter-{aid}"
    info = jcli(env, "adapter", "show", str(aid))
    assert (info["owner"], info["rank"], info["price_per_1k"]) == (ADDR["owner1"], 4, str(TOKEN // 2))
    assert (info["owner_bps"], info["dataset_ids"], info["dataset_bps"]) == (7500, [ds], [2500])
    assert jcli(env, "adapter", "new-version", str(aid), str(adapter_folder), role="owner1")["version"] == 2
    n = nonce(env, "owner2")
    _, out = cli(env, "adapter", "deprecate", str(aid), role="owner2", ok=False)
    assert "NotOwner" in out and nonce(env, "owner2") == n
    _, out = cli(env, "adapter", "new-version", str(aid), str(adapter_folder), role="owner2", ok=False)
    assert "belongs to" in out
    jcli(env, "adapter", "deprecate", str(aid), role="owner1")
    assert jcli(env, "adapter", "list")[0]["deprecated"] is True


def test_adapter_publish_refuses_bad_folders_and_splits_before_gas(env, adapter_folder, tmp_path):
    n = nonce(env, "owner1")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapter_folder / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    _, out = cli(env, "adapter", "publish", str(pickled), "--price", "1", role="owner1", ok=False)
    assert "never loaded" in out
    for bad, msg in (("1:20000", "more than 10000"), ("x:1", "ID:BPS"), ("1:10,1:10", "twice"), ("1:-5", "positive")):
        _, out = cli(env, "adapter", "publish", str(adapter_folder), "--price", "1", "--datasets", bad, role="owner1", ok=False)
        assert msg in out, (bad, out)
    _, out = cli(env, "adapter", "publish", str(adapter_folder), "--price", "-1", role="owner1", ok=False)
    assert "non-negative" in out
    _, out = cli(env, "adapter", "publish", str(adapter_folder), "--price", "1", "--datasets", "77:100", role="owner1", ok=False)
    assert "dataset 77 does not exist" in out
    _, out = cli(
        env, "adapter", "publish", str(adapter_folder), "--price", "1", "--base-model", "other/model", role="owner1", ok=False
    )
    assert "only the embedded base model" in out
    assert nonce(env, "owner1") == n


def _retarget(adapter_folder, dest, declared):
    """A copy of the adapter whose adapter_config.json names `declared` as its base model."""
    import shutil

    shutil.copytree(adapter_folder, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(declared)}))
    return dest


def test_adapter_trained_on_the_local_base_folder_publishes(env, adapter_folder, tmp_path):
    """PEFT wrote the local folder it loaded the base from; the CLI checks that folder is the served
    base by content and uploads a copy naming the model id (what nodes check)."""
    from inference.base_model import resolve_model_folder
    from node.ipfs import EmbeddedStore

    served = resolve_model_folder(None)
    local = _retarget(adapter_folder, tmp_path / "local", served)
    got = jcli(env, "adapter", "publish", str(local), "--price", "0.5", role="owner1")
    fetched = asyncio.run(EmbeddedStore(env["tmp"] / "ipfs").fetch(got["cid"], tmp_path / "fetched", 1 << 30))
    assert json.loads((fetched / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_MODEL_ID
    assert json.loads((local / "adapter_config.json").read_text())["base_model_name_or_path"] == str(served)  # untouched
    # the same model in another folder (a copy: weights hard-linked, config copied) is matched by fingerprint
    copy = tmp_path / "copy-of-base"
    copy.mkdir()
    for f in served.iterdir():
        os.link(f, copy / f.name)
    jcli(env, "adapter", "publish", str(_retarget(adapter_folder, tmp_path / "viacopy", copy)), "--price", "0.5", role="owner1")


def test_adapter_on_another_local_base_is_refused_with_the_fix(env, adapter_folder, tmp_path):
    from inference.base_model import resolve_model_folder

    served = resolve_model_folder(None)
    n = nonce(env, "owner1")
    wrong_cfg = tmp_path / "wrong-cfg"
    wrong_cfg.mkdir()
    for f in served.iterdir():
        if f.name != "config.json":
            os.link(f, wrong_cfg / f.name)
    cfg = json.loads((served / "config.json").read_text())
    (wrong_cfg / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 12}))
    cases = [
        (wrong_cfg, "num_hidden_layers"),
        (tmp_path / "gone", "does not exist"),
        ("/dev/null", "not a folder"),
        ("./relative/nowhere", "does not exist"),
    ]
    for i, (declared, msg) in enumerate(cases):
        folder = _retarget(adapter_folder, tmp_path / f"a{i}", declared)
        _, out = cli(env, "adapter", "publish", str(folder), "--price", "1", role="owner1", ok=False)
        assert msg in out and "set base_model_name_or_path" in out and EMBEDDED_MODEL_ID in out, out
    # a hub id of another model: the fix is named too
    folder = _retarget(adapter_folder, tmp_path / "hub", "meta-llama/Llama-3-8B")
    _, out = cli(env, "adapter", "publish", str(folder), "--price", "1", role="owner1", ok=False)
    assert "base model mismatch" in out and "set base_model_name_or_path" in out
    assert nonce(env, "owner1") == n


# ---------------------------------------------------------------- escrow and rewards


def test_escrow_deposit_authorize_thaw_withdraw(env, tmp_path):
    c = env["c"]
    node = ["--node", ADDR["node"]]
    _, out = cli(env, "escrow", "deposit", "1", *node, role="payer")
    assert "not a staked node yet" in out  # warned: an unbonded node cannot redeem
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")
    jcli(env, "escrow", "deposit", "24.5", *node, role="payer")
    bal = jcli(env, "escrow", "balance", *node, role="payer")
    assert bal["escrow"] == "25.5" and bal["node"] == ADDR["node"]
    assert jcli(env, "escrow", "balance", "--node", ADDR["bob"], role="payer")["escrow"] == "0"  # earmarked
    # the signer consents with its own wallet (`signer-proof`, valid 30 days), the payer authorizes with that proof
    code, out = cli(env, "escrow", "signer-proof", ADDR["payer"], "--ttl", str(30 * 86_400), role="alice")
    proof = tmp_path / "proof.json"
    proof.write_text(out)
    jcli(env, "escrow", "authorize", ADDR["alice"], "--proof", str(proof), role="payer")
    assert c.escrow.signer_of(ADDR["alice"]).payer == ADDR["payer"]
    # or signs the proof here from the signer's keystore
    jcli(env, "escrow", "authorize", ADDR["bob"], "--signer-keystore", str(env["home"] / "wallets" / "bob.json"), role="payer")
    assert c.escrow.is_authorized(ADDR["payer"], ADDR["bob"])
    got = jcli(env, "escrow", "authorize", ADDR["alice"], "--revoke", role="payer")
    assert got["redeemable_until"] > 0 and c.escrow.signer_of(ADDR["alice"]).revoke_at == got["redeemable_until"]
    got = jcli(env, "escrow", "thaw", "5", *node, role="payer")
    n = nonce(env, "payer")
    _, out = cli(env, "escrow", "withdraw", *node, role="payer", ok=False)
    assert "still thawing" in out and nonce(env, "payer") == n
    c.w3.provider.make_request("evm_increaseTime", [c.escrow.thaw_seconds() + 1])
    c.w3.provider.make_request("evm_mine", [])
    before = c.token.balance_of(ADDR["payer"])
    jcli(env, "escrow", "withdraw", *node, role="payer")
    assert c.token.balance_of(ADDR["payer"]) - before == 5 * TOKEN
    assert got["withdrawable_at"] > 0
    # alice's revocation has thawed: her first proof (still within its 30 days) is spent,
    # re-authorizing needs her consent again
    n = nonce(env, "payer")
    _, out = cli(env, "escrow", "authorize", ADDR["alice"], "--proof", str(proof), role="payer", ok=False)
    assert "a proof authorizes once" in out and nonce(env, "payer") == n
    _, out = cli(env, "escrow", "signer-proof", ADDR["payer"], role="alice")
    proof.write_text(out)
    jcli(env, "escrow", "authorize", ADDR["alice"], "--proof", str(proof), role="payer")
    assert c.escrow.is_authorized(ADDR["payer"], ADDR["alice"]) and c.escrow.signer_of(ADDR["alice"]).nonce == 2


def test_escrow_bad_input_sends_nothing(env, tmp_path):
    n = nonce(env, "payer")
    node = ["--node", ADDR["node"]]
    _, out = cli(env, "escrow", "deposit", "5000", *node, role="payer", ok=False)
    assert "insufficient token balance" in out
    for bad in ("abc", "-1", "1e400", "0.0000000000000000001", "0"):
        _, out = cli(env, "escrow", "deposit", bad, *node, role="payer", ok=False)
        assert "amount" in out, (bad, out)
    _, out = cli(env, "escrow", "deposit", "1", "--node", "0xnope", role="payer", ok=False)
    assert "not a valid node address" in out
    _, out = cli(env, "escrow", "authorize", "0x1234", role="payer", ok=False)
    assert "not a valid signer address" in out
    _, out = cli(env, "escrow", "authorize", ADDR["alice"], role="payer", ok=False)
    assert "signer's consent" in out
    # a proof by another key, a proof for another payer, a hostile file
    code, other = cli(env, "escrow", "signer-proof", ADDR["payer"], role="bob")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(other.replace(ADDR["bob"], ADDR["alice"]))
    _, out = cli(env, "escrow", "authorize", ADDR["alice"], "--proof", str(wrong), role="payer", ok=False)
    assert "not signed by" in out
    code, for_bob = cli(env, "escrow", "signer-proof", ADDR["bob"], role="alice")
    wrong.write_text(for_bob)
    _, out = cli(env, "escrow", "authorize", ADDR["alice"], "--proof", str(wrong), role="payer", ok=False)
    assert "not signed by" in out
    for content in (
        "x" * 10_000,
        "[1]",
        '{"deadline": "soon", "proof": "0x00"}',
        '{"deadline": 5, "proof": "0x00"}',  # no nonce
        '{"deadline": 5, "nonce": -1, "proof": "0x' + "11" * 65 + '"}',
        '{"deadline": 5, "nonce": 4294967296, "proof": "0x' + "11" * 65 + '"}',
    ):
        wrong.write_text(content)
        _, out = cli(env, "escrow", "authorize", ADDR["alice"], "--proof", str(wrong), role="payer", ok=False)
        assert "proof" in out, (content[:20], out)
    _, out = cli(env, "escrow", "thaw", "1", *node, role="payer", ok=False)
    assert "can thaw between" in out
    _, out = cli(env, "escrow", "withdraw", *node, role="payer", ok=False)
    assert "nothing is thawing" in out
    _, out = cli(env, "escrow", "authorize", ADDR["alice"], "--revoke", role="payer", ok=False)
    assert "not a signer of yours" in out
    assert nonce(env, "payer") == n


def test_rewards_show_and_claim(env):
    c = env["c"]
    assert jcli(env, "rewards", "show", ADDR["alice"])["claimable"] == "0"
    n = nonce(env, "alice")
    _, out = cli(env, "rewards", "claim", role="alice", ok=False)
    assert "nothing to claim" in out and nonce(env, "alice") == n
    # a real reward: a contribution accepted, then the dataset paid through a redeemed voucher
    from chain.eip712 import Voucher, sign_voucher

    ds = jcli(env, "dataset", "create", "d", role="curator")["dataset_id"]
    f = _jsonl(env["tmp"] / "c.jsonl", [{"text": "some data"}])
    cid = jcli(env, "dataset", "contribute", str(ds), str(f), role="alice")["contribution_id"]
    jcli(env, "dataset", "accept", str(cid), role="curator")
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import resolve_model_folder

    folder = make_random_adapter(
        env["tmp"] / "ad", AutoConfig.from_pretrained(resolve_model_folder(None)), rank=2, base_model_id=EMBEDDED_MODEL_ID
    )
    aid = jcli(env, "adapter", "publish", str(folder), "--price", "1", "--datasets", f"{ds}:5000", role="owner1")["adapter_id"]
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")  # bonds the minimum
    jcli(env, "escrow", "deposit", "10", "--node", ADDR["node"], role="payer")
    v = Voucher(payer=ADDR["payer"], node=ADDR["node"], adapter_id=aid, compute_value=TOKEN, adapter_value=2 * TOKEN)
    sig = sign_voucher(v, KEY["payer"], c.chain_id, c.escrow.address)
    c.escrow.redeem(Account.from_key(KEY["node"]), [v], [sig])
    # the dataset part waits in the node's attribution pool until the node settles a committed batch
    seq = c.receipts.last_seq(ADDR["node"]) + 1
    c.receipts.commit_batch(Account.from_key(KEY["node"]), seq, b"\x01" * 32, 1, "bafy-receipts")
    c.pool.settle(Account.from_key(KEY["node"]), seq, [(ds, 0, 1)])  # no attribution: by accepted weight
    shown = jcli(env, "rewards", "show", ADDR["alice"])
    # amounts past 2**53 come as decimal strings in JSON
    assert int(shown["dataset_pending"]) > 0 and int(shown["claimable"]) == 0
    node_view = jcli(env, "rewards", "show", ADDR["node"])
    assert int(node_view["node_fees"]) == TOKEN
    before = c.token.balance_of(ADDR["alice"])
    got = jcli(env, "rewards", "claim", role="alice")
    assert c.token.balance_of(ADDR["alice"]) - before == int(shown["dataset_pending"])
    assert got["amount"] != "0"
    _, out = cli(env, "rewards", "show", "not-an-address", ok=False)
    assert "not a valid address" in out


# ---------------------------------------------------------------- receipts


def _signed_receipt(c, *, key=KEY["node"], attribution: dict[int, int] | None = None):
    from chain.eip712 import Receipt, SignedReceipt, attribution_hash, output_hash, sign_receipt

    ids = sorted(attribution or {})

    r = Receipt(
        request_id=os.urandom(32),
        payer=ADDR["payer"],
        node=ADDR["node"],
        adapter_id=0,
        seq=1,
        prompt_tokens=3,
        completion_tokens=4,
        compute_cost=7,
        adapter_cost=0,
        output_hash=output_hash("hi"),
        attribution_hash=attribution_hash(ids, [(attribution or {})[i] for i in ids]),
        timestamp=1,
    )
    return SignedReceipt(r, sign_receipt(r, key, c.chain_id, c.receipts.address))


def test_receipts_verify(env, tmp_path):
    from chain.merkle import StandardMerkleTree

    c = env["c"]
    sr = _signed_receipt(c)
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"receipt": {**sr.to_json(), "attribution": {}}}))
    got = jcli(env, "receipts", "verify", str(f))
    assert got["signature_valid"] is True and "no proof yet" in got["committed_on_chain"]
    # committed in a one-leaf batch by the node: the proof verifies on chain
    digest = c.receipts.hash_receipt(sr.receipt)
    tree = StandardMerkleTree.of([[digest]], ["bytes32"])
    c.receipts.commit_batch(Account.from_key(KEY["node"]), 1, tree.root, 1, "bafy-test")
    f.write_text(json.dumps({"receipt": sr.to_json(), "batch": {"seq": 1}, "proof": ["0x" + p.hex() for p in tree.proof(0)]}))
    assert jcli(env, "receipts", "verify", str(f))["committed_on_chain"] is True
    # signed by somebody else: exit 1
    forged = _signed_receipt(c, key=KEY["bob"])
    f.write_text(json.dumps(forged.to_json()))
    code, out = cli(env, "receipts", "verify", str(f), ok=False)
    assert "False" in out or "false" in out


@pytest.mark.parametrize(
    "content,msg",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"receipt": {"seq": "1"}}', "malformed receipt"),
        (b'{"receipt": 5}', "must be an object"),
        (b"x" * (MAX_RECEIPT_FILE_BYTES + 1), "larger than"),
    ],
)
def test_receipts_verify_rejects_bad_files(env, tmp_path, content, msg):
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    _, out = cli(env, "receipts", "verify", str(f), ok=False)
    assert msg in out


# ---------------------------------------------------------------- node register


def test_node_register_and_update(env):
    c = env["c"]
    min_bond = c.nodes.dispute_terms().min_bond
    got = jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", "--price", "0.25", role="node")
    info = c.nodes.get_node(ADDR["node"])
    assert info.active and info.compute_price_per_1k == TOKEN // 4 and info.base_model_ids == (EMBEDDED_MODEL_ID,)
    assert info.bond == min_bond and c.nodes.can_redeem(ADDR["node"]) and got["bond"] == "10"
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:9090", "--bond", "12", role="node")
    info = c.nodes.get_node(ADDR["node"])
    assert info.endpoint == "http://127.0.0.1:9090" and info.bond == 12 * TOKEN
    n = nonce(env, "bob")
    _, out = cli(env, "node", "register", "--endpoint", "ftp://x", role="bob", ok=False)
    assert "http(s) URL" in out and nonce(env, "bob") == n
    _, out = cli(env, "node", "register", "--endpoint", "http://x", "--bond", "5000", role="bob", ok=False)
    assert "insufficient token balance for the bond" in out and nonce(env, "bob") == n


def test_node_dispute_and_equivocation(env, tmp_path):
    c = env["c"]
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")
    a, b = _signed_receipt(c), _signed_receipt(c)  # same seq (1), different request ids: an equivocation
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps({"receipt": a.to_json()}))
    fb.write_text(json.dumps(b.to_json()))
    d_id = jcli(env, "node", "dispute", str(fa), role="alice")["dispute_id"]
    d = c.nodes.get_dispute(d_id)
    assert d.open and d.fisherman == ADDR["alice"] and d.node == ADDR["node"]
    n = nonce(env, "alice")
    forged = _signed_receipt(c, key=KEY["bob"])  # claims to be the node's, signed by bob
    ff = tmp_path / "forged.json"
    ff.write_text(json.dumps(forged.to_json()))
    _, out = cli(env, "node", "dispute", str(ff), role="alice", ok=False)
    assert "not signed by its node" in out
    _, out = cli(env, "node", "dispute", str(fa), "--equivocation", str(fa), role="alice", ok=False)
    assert "not an equivocation" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    _, out = cli(env, "node", "dispute", str(bad), role="alice", ok=False)
    assert "not JSON" in out
    assert nonce(env, "alice") == n
    # alice's dispute is open: bob's proof condemns the bond, paid to him once the dispute is ruled
    before, bond = c.token.balance_of(ADDR["bob"]), c.nodes.get_node(ADDR["node"]).bond
    got = jcli(env, "node", "dispute", str(fa), "--equivocation", str(fb), role="bob")
    assert (got["open_disputes"], got["slashed"]) == (1, "0") and c.token.balance_of(ADDR["bob"]) == before
    _, out = cli(env, "node", "dispute", str(fa), "--equivocation", str(fb), role="alice", ok=False)
    assert "is condemned" in out and nonce(env, "alice") == n
    got = jcli(env, "node", "rule", str(d_id), "--slash", "2", role="deployer")  # alice is paid first
    assert got["slashed"] == "2" and got["prover"] == ADDR["bob"]
    assert got["condemned_slashed"] == str((bond - 2 * TOKEN) // TOKEN)
    assert c.token.balance_of(ADDR["bob"]) - before == (bond - 2 * TOKEN) // 2
    assert c.nodes.get_node(ADDR["node"]).bond == 0
    _, out = cli(env, "node", "dispute", str(fa), role="alice", ok=False)
    assert "holds no bond" in out
    # with no dispute open, an equivocation is slashed at once
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", "--bond", "10", role="node")
    got = jcli(env, "node", "dispute", str(fa), "--equivocation", str(fb), role="bob")
    assert (got["slashed"], got["reward"]) == ("10", "5") and c.nodes.get_node(ADDR["node"]).bond == 0


def test_node_condemned_within_its_dispute_window_then_executed(env, tmp_path):
    """The node just committed: bob's equivocation proof condemns its bond until the dispute window
    ends; alice may still dispute meanwhile and is paid first; afterwards anyone executes the
    condemnation. Refusals come before any transaction."""
    from eth_account import Account

    c = env["c"]
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")
    c.receipts.commit_batch(Account.from_key(KEY["node"]), 1, b"\x01" * 32, 1, "bafyreceipts")
    until = c.receipts.last_commit_at(ADDR["node"]) + c.nodes.dispute_terms().dispute_window
    a, b = _signed_receipt(c), _signed_receipt(c)
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(a.to_json()))
    fb.write_text(json.dumps(b.to_json()))
    bond, bob = c.nodes.get_node(ADDR["node"]).bond, c.token.balance_of(ADDR["bob"])
    got = jcli(env, "node", "dispute", str(fa), "--equivocation", str(fb), role="bob")
    assert (got["open_disputes"], got["disputes_until"], got["slashed"]) == (0, until, "0")
    n = nonce(env, "payer")
    _, out = cli(env, "node", "execute-condemnation", ADDR["node"], role="payer", ok=False)
    assert "may dispute" in out and nonce(env, "payer") == n
    for bad, why in (("0xnope", "not a valid node address"), (ADDR["alice"], "is not condemned")):
        _, out = cli(env, "node", "execute-condemnation", bad, role="payer", ok=False)
        assert why in out, (bad, out)
    d_id = jcli(env, "node", "dispute", str(fa), role="alice")["dispute_id"]  # still within the window
    got = jcli(env, "node", "rule", str(d_id), "--slash", "2", role="deployer")
    assert got["slashed"] == "2" and "condemned_slashed" not in got  # the window still runs
    c.w3.provider.make_request("evm_increaseTime", [c.nodes.dispute_terms().dispute_window + 1])
    c.w3.provider.make_request("evm_mine", [])
    _, out = cli(env, "node", "dispute", str(fa), role="alice", ok=False)
    assert "too late to dispute" in out
    got = jcli(env, "node", "execute-condemnation", ADDR["node"], role="payer")  # anyone
    assert got["prover"] == ADDR["bob"] and got["slashed"] == str((bond - 2 * TOKEN) // TOKEN)
    assert c.token.balance_of(ADDR["bob"]) - bob == (bond - 2 * TOKEN) // 2
    assert c.nodes.get_node(ADDR["node"]).bond == 0
    _, out = cli(env, "node", "execute-condemnation", ADDR["node"], role="payer", ok=False)
    assert "is not condemned" in out


def test_node_disputes_rule_and_expire(env, tmp_path):
    """The arbitrator's side: list disputes, uphold one with a slash, reject one, and let anyone expire
    one the arbitrator left past its deadline. Every refusal happens before a transaction."""
    c = env["c"]
    terms = c.nodes.dispute_terms()
    assert terms.arbitrator == ADDR["deployer"] and terms.dispute_deposit > 0
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_signed_receipt(c).to_json()))
    assert jcli(env, "node", "disputes") == []
    first = jcli(env, "node", "dispute", str(f), role="alice")["dispute_id"]
    [row] = jcli(env, "node", "disputes", "--node", ADDR["node"])
    assert row["id"] == first and row["state"] == "open" and row["fisherman"] == ADDR["alice"]
    assert row["deposit"] == "1" and row["receipt_digest"].startswith("0x")
    assert jcli(env, "node", "disputes", "--node", ADDR["bob"]) == []
    _, table = cli(env, "node", "disputes")
    assert "Disputes (newest 1 of 1)" in table and "open" in table
    _, out = cli(env, "node", "disputes", "--node", "0xnot-an-address", ok=False)
    assert "not a valid node address" in out

    n_alice, n_arb = nonce(env, "alice"), nonce(env, "deployer")
    _, out = cli(env, "node", "rule", str(first), "--slash", "2", role="alice", ok=False)
    assert "only the arbitrator" in out
    for args, why in (
        ([], "give the ruling"),
        (["--slash", "2", "--reject"], "give the ruling"),
        (["--slash", "0"], "must be positive"),
        (["--slash", "-1"], "non-negative"),
        (["--slash", "lots"], "not an amount"),
    ):
        _, out = cli(env, "node", "rule", str(first), *args, role="deployer", ok=False)
        assert why in out, (args, out)
    for bad in ("0", "99", "1" + "0" * 80):
        _, out = cli(env, "node", "rule", bad, "--reject", role="deployer", ok=False)
        assert "no dispute" in out, (bad, out)
    _, out = cli(env, "node", "expire-dispute", str(first), role="bob", ok=False)
    assert "the arbitrator may still rule" in out
    assert (nonce(env, "alice"), nonce(env, "deployer")) == (n_alice, n_arb)  # nothing sent

    # Upheld: 2 tokens slashed, the fisherman gets its deposit back and half of the slash.
    bond, alice = c.nodes.get_node(ADDR["node"]).bond, c.token.balance_of(ADDR["alice"])
    got = jcli(env, "node", "rule", str(first), "--slash", "2", role="deployer")
    assert got["slashed"] == "2" and got["node"] == ADDR["node"]
    assert c.nodes.get_node(ADDR["node"]).bond == bond - 2 * TOKEN
    assert c.token.balance_of(ADDR["alice"]) - alice == terms.dispute_deposit + TOKEN
    _, out = cli(env, "node", "rule", str(first), "--reject", role="deployer", ok=False)
    assert "already closed" in out

    # Rejected: the deposit goes to the node.
    second = jcli(env, "node", "dispute", str(f), role="alice")["dispute_id"]
    node_tokens = c.token.balance_of(ADDR["node"])
    assert jcli(env, "node", "rule", str(second), "--reject", role="deployer")["slashed"] == "0"
    assert c.token.balance_of(ADDR["node"]) - node_tokens == terms.dispute_deposit

    # Unruled past its deadline: the arbitrator can no longer rule, anyone expires it, the deposit goes back.
    third = jcli(env, "node", "dispute", str(f), role="alice")["dispute_id"]
    c.w3.provider.make_request("evm_increaseTime", [terms.dispute_window + 1])
    c.w3.provider.make_request("evm_mine", [])
    assert [r["state"] for r in jcli(env, "node", "disputes")] == ["expirable", "closed", "closed"]
    _, out = cli(env, "node", "rule", str(third), "--slash", "1", role="deployer", ok=False)
    assert "past its deadline" in out
    alice = c.token.balance_of(ADDR["alice"])
    assert jcli(env, "node", "expire-dispute", str(third), role="bob")["refunded"] == "1"
    assert c.token.balance_of(ADDR["alice"]) - alice == terms.dispute_deposit
    assert jcli(env, "node", "disputes", "--open") == [] and c.nodes.open_disputes(ADDR["node"]) == 0
    assert [r["id"] for r in jcli(env, "node", "disputes", "--limit", "2")] == [third, second]

    # A slash larger than the bond takes what is left, and the output says what the chain did.
    fourth = jcli(env, "node", "dispute", str(f), role="alice")["dispute_id"]
    left = c.nodes.get_node(ADDR["node"]).bond
    got = jcli(env, "node", "rule", str(fourth), "--slash", "1000", role="deployer")
    assert got["slashed"] == str(left // TOKEN) and c.nodes.get_node(ADDR["node"]).bond == 0


def test_node_dispute_attribution_slashes_a_provable_lie_without_arbitrator(env, tmp_path):
    """A base-model answer credited to contribution 77 (no adapter, no such contribution): provable
    from the committed leaf alone, so a fisherman slashes without arbitrator (the bond condemned at
    once, the slash executed after the dispute window of the node's last commit); an honest leaf is
    refused."""
    from chain.merkle import StandardMerkleTree

    c = env["c"]
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")
    lie, honest = _signed_receipt(c, attribution={77: 10_000}), _signed_receipt(c)
    tree = StandardMerkleTree.of([[c.receipts.hash_receipt(x.receipt)] for x in (lie, honest)], ["bytes32"])
    fl, fh = tmp_path / "lie.json", tmp_path / "honest.json"
    fl.write_text(json.dumps({"receipt": {**lie.to_json(), "attribution": {"77": 10_000}}}))
    n = nonce(env, "alice")
    _, out = cli(env, "node", "dispute", str(fl), "--attribution", role="alice", ok=False)
    assert "not committed yet" in out
    c.receipts.commit_batch(Account.from_key(KEY["node"]), 1, tree.root, 2, "bafy-test")
    for f, r, k in ((fl, lie, 0), (fh, honest, 1)):
        proof = ["0x" + p.hex() for p in tree.proof(k)]
        attribution = {"77": 10_000} if r is lie else {}
        f.write_text(json.dumps({"receipt": {**r.to_json(), "attribution": attribution}, "batch": {"seq": 1}, "proof": proof}))
    _, out = cli(env, "node", "dispute", str(fh), "--attribution", role="alice", ok=False)
    assert "not provably wrong" in out
    _, out = cli(env, "node", "dispute", str(fl), "--attribution", "--equivocation", str(fh), role="alice", ok=False)
    assert "two different proofs" in out
    assert nonce(env, "alice") == n  # nothing sent
    before = c.token.balance_of(ADDR["alice"])
    got = jcli(env, "node", "dispute", str(fl), "--attribution", role="alice")
    bond = c.nodes.dispute_terms().min_bond
    assert got["fault"] == "a contribution outside the adapter's datasets" and got["slashed"] == "0"
    assert got["disputes_until"] == c.nodes.get_node(ADDR["node"]).condemned_until > 0
    assert not c.nodes.can_redeem(ADDR["node"])
    c.w3.provider.make_request("evm_increaseTime", [c.nodes.dispute_terms().dispute_window + 1])
    c.w3.provider.make_request("evm_mine", [])
    got = jcli(env, "node", "execute-condemnation", ADDR["node"], role="bob")
    assert (got["prover"], got["slashed"]) == (ADDR["alice"], "10")
    assert c.token.balance_of(ADDR["alice"]) - before == bond // 2 and c.nodes.get_node(ADDR["node"]).bond == 0
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")  # bonded again
    _, out = cli(env, "node", "dispute", str(fl), "--attribution", role="bob", ok=False)
    assert "already slashed" in out


def test_attribution_flush_of_a_node_with_nothing_at_stake(env, tmp_path):
    """`attribution flush`: a staked node's pool waits for the flush delay; once the node is proven
    to lie (condemned), anyone moves its pool to the accepted-weight split at once. Refusals (bad
    address, bad or empty pool, too early) come before any transaction."""
    from eth_account import Account

    from chain.eip712 import Voucher, sign_voucher

    c = env["c"]
    node, payer = Account.from_key(KEY["node"]), Account.from_key(KEY["payer"])
    jcli(env, "node", "register", "--endpoint", "http://127.0.0.1:8080", role="node")
    c.datasets.create_dataset(Account.from_key(KEY["curator"]), "d", "MIT", "")
    c.datasets.contribute(Account.from_key(KEY["alice"]), 1, "bafyc", 10)
    c.datasets.accept(Account.from_key(KEY["curator"]), 1, 1)
    c.adapters.register(Account.from_key(KEY["owner1"]), EMBEDDED_MODEL_ID, "bafyA", 8, 10**15, 6000, [1], [4000])
    c.token.approve(payer, c.escrow.address, TOKEN)
    c.escrow.deposit(payer, ADDR["node"], TOKEN)
    v = Voucher(ADDR["payer"], ADDR["node"], 1, 0, TOKEN // 2)
    c.escrow.redeem(node, [v], [sign_voucher(v, KEY["payer"], c.chain_id, c.escrow.address)])
    pooled = c.pool.pool_of(ADDR["node"], 1).balance
    assert pooled > 0
    n = nonce(env, "bob")
    for args, why in (
        (["--node", "0xnope", "--dataset", "1"], "not a valid node address"),
        (["--node", ADDR["node"], "--dataset", "0"], "--dataset"),
        (["--node", ADDR["node"], "--dataset", str(2**300)], "--dataset"),
        (["--node", ADDR["node"], "--dataset", "2"], "is empty"),
        (["--node", ADDR["alice"], "--dataset", "1"], "is empty"),
        (["--node", ADDR["node"], "--dataset", "1"], "in good standing"),
    ):
        _, out = cli(env, "attribution", "flush", *args, role="bob", ok=False)
        assert why in " ".join(out.split()), (args, out)
    assert nonce(env, "bob") == n
    a, b = _signed_receipt(c), _signed_receipt(c)
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(a.to_json()))
    fb.write_text(json.dumps(b.to_json()))
    jcli(env, "node", "dispute", str(fa), "--equivocation", str(fb), role="bob")
    assert not c.nodes.can_redeem(ADDR["node"])
    got = jcli(env, "attribution", "flush", "--node", ADDR["node"], "--dataset", "1", role="bob")
    assert got["dataset"] == 1 and int(float(got["amount"]) * TOKEN) == pytest.approx(pooled, rel=1e-9)
    assert c.pool.pool_of(ADDR["node"], 1).balance == 0
    assert pooled - 1 <= c.datasets.pending_reward(1) <= pooled
    _, out = cli(env, "attribution", "flush", "--node", ADDR["node"], "--dataset", "1", role="bob", ok=False)
    assert "is empty" in out
