"""Node config: TOML + LORANODE_* env overrides, validation messages naming the option, keystores."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from chain.devchain import DEV_PRIVATE_KEYS
from node.config import NodeConfig, load_config, normalise_db_url, options_table
from node.errors import ConfigError
from node.keystore import KeystoreError, create_keystore, keystore_address, load_keystore


def write(path, text):
    path.write_text(text)
    return path


def test_toml_env_precedence_and_relative_paths(tmp_path):
    cfg_file = write(
        tmp_path / "node.toml",
        """
data_dir = "state"
deployment = "dep.json"
confirmations = 3
dev_mode = true
listen_port = 9000
ipfs_gateways = ["http://127.0.0.1:1"]
""",
    )
    env = {
        "LORANODE_CONFIRMATIONS": "5",
        "LORANODE_IPFS_GATEWAYS": "http://a.example,http://b.example",
        "LORANODE_CACHE_DIR": "x",
    }  # LORANODE_CACHE_DIR: an unrelated variable of the model cache is fine
    cfg = load_config(cfg_file, env)
    assert cfg.confirmations == 5  # env beats file
    assert cfg.listen_port == 9000  # file beats default
    assert cfg.listen_host == "127.0.0.1"  # loopback by default
    assert cfg.data_dir == tmp_path / "state"  # relative to the file
    assert cfg.deployment == tmp_path / "dep.json"
    assert cfg.ipfs_gateways == ["http://a.example", "http://b.example"]
    assert cfg.database_url == f"sqlite:///{tmp_path / 'state' / 'node.db'}"
    assert cfg.ipfs_store_dir == tmp_path / "state" / "ipfs"
    assert cfg.adapter_cache_dir == tmp_path / "state" / "cache"  # LORANODE_CACHE_DIR is the model cache, not ours
    with pytest.raises(ValidationError, match="frozen"):
        cfg.confirmations = 1


def test_postgres_url_is_normalised():
    assert normalise_db_url("postgresql://postgres@127.0.0.1/test") == "postgresql+psycopg://postgres@127.0.0.1/test"
    cfg = load_config(None, {}, dev_mode=True, db_url="postgres://u@h/db")
    assert cfg.database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("confirmations = -1\ndev_mode = true", {}, "confirmations:"),
        ("dev_mode = true\nlisten_port = 70000", {}, "listen_port:"),
        ("dev_mode = true\npayment_mode = 'free'", {}, "payment_mode:"),
        ("dev_mode = true\nrpc_url = 'ftp://x'", {}, "rpc_url: must be"),
        ("dev_mode = true\ndb_url = 'mysql://x/y'", {}, "db_url: only sqlite"),
        ("dev_mode = true\nbogus_option = 1", {}, "bogus_option: unknown option"),
        ("", {}, "keystore: an operator keystore is required"),
        ("keystore = 'k.json'", {}, "keystore_password_file: required"),
        ("dev_mode = true\npayment_mode = 'operator-funded'", {}, "api_keys:"),
        ("dev_mode = true\nconfirmations = 300\nblock_ring_size = 100", {}, "block_ring_size:"),
        ("dev_mode = true", {"LORANODE_ENGINE_GPU_SLOTS": "many"}, "engine_gpu_slots:"),
        ("dev_mode = true", {"LORANODE_IPFS_GATEWAYS": "[not json"}, "list option is not valid JSON"),
        ("dev_mode = true\nengine_cpu_packed_linears = 'maybe'", {}, "engine_cpu_packed_linears:"),
        ("dev_mode = [", {}, "not valid TOML"),
    ],
)
def test_bad_options_are_named(tmp_path, toml, env, needle):
    f = write(tmp_path / "node.toml", toml)
    with pytest.raises(ConfigError) as e:
        load_config(f, env)
    assert needle in str(e.value)


def test_engine_options_reach_the_engine_config(tmp_path):
    from node.daemon.engine_factory import engine_config

    f = write(tmp_path / "node.toml", "dev_mode = true\nengine_cpu_packed_linears = false\nengine_max_batch = 8")
    cfg = engine_config(load_config(f, {}))
    assert (cfg.cpu_packed_linears, cfg.max_batch_size) == (False, 8)
    env = {"LORANODE_ENGINE_CPU_PACKED_LINEARS": "true"}
    assert engine_config(load_config(f, env)).cpu_packed_linears is True  # the environment overrides the file


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", {})
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 21))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big, {})


def test_dev_key_only_on_dev_chain():
    cfg = load_config(None, {}, dev_mode=True, dev_key_index=1)
    from eth_account import Account

    assert cfg.operator_account(31337).address == Account.from_key(DEV_PRIVATE_KEYS[1]).address
    with pytest.raises(ConfigError, match="dev_mode"):
        cfg.operator_account(1)


def test_keystore_roundtrip_and_errors(tmp_path, caplog):
    ks = tmp_path / "op.json"
    key = "0x" + "11" * 32
    addr = create_keystore(ks, "pw", key, scrypt_n=2**10)  # cheap scrypt: the format is the same
    assert stat.S_IMODE(os.stat(ks).st_mode) == 0o600
    assert keystore_address(ks).lower() == addr.lower()
    assert load_keystore(ks, "pw") == bytes.fromhex("11" * 32)
    with pytest.raises(KeystoreError, match="wrong password") as e:
        load_keystore(ks, "nope")
    assert "11" * 8 not in str(e.value) and e.value.__cause__ is None
    with pytest.raises(KeystoreError, match="already exists"):
        create_keystore(ks, "pw")
    with pytest.raises(KeystoreError, match="must not be empty"):
        create_keystore(tmp_path / "x.json", "")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(KeystoreError, match="not a JSON keystore"):
        load_keystore(tmp_path / "junk.json", "pw")
    (tmp_path / "wrong.json").write_text(json.dumps({"crypto": {}}))
    with pytest.raises(KeystoreError):
        load_keystore(tmp_path / "wrong.json", "pw")
    # The config path: keystore + password file → account; nothing about the key in logs.
    (tmp_path / "pw.txt").write_text("pw\n")
    cfg = load_config(None, {}, keystore=str(ks), keystore_password_file=str(tmp_path / "pw.txt"))
    assert cfg.operator_account(1).address == addr
    assert "11" * 8 not in caplog.text


def test_options_table_documents_every_option():
    table = options_table()
    for name, f in NodeConfig.model_fields.items():
        assert f.description, name
        assert f"| `{name}` |" in table


def test_readme_documents_every_option():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [n for n in NodeConfig.model_fields if f"| `{n}` |" not in readme]
    assert not missing, f"README 'Configuration' lacks {missing}: paste node.config.options_table()"


def test_deployment_defaults_to_the_file_chain_deploy_writes(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from chain.deploy import PROTOCOL_CONTRACTS, Deployment, deployment_file
    from chain.protocol import DEV_CHAIN_ID
    from node.daemon.root import _load_deployment

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={}, dev_mode=True)
    assert cfg.deployment is None
    rpc = SimpleNamespace(eth=SimpleNamespace(chain_id=DEV_CHAIN_ID))
    with pytest.raises(ConfigError, match=r"deployment: cannot read deployments/31337\.json"):
        _load_deployment(cfg, rpc)
    names = ("PaymentToken", *PROTOCOL_CONTRACTS)
    saved = Deployment(DEV_CHAIN_ID, {n: "0x" + f"{i + 1:040x}" for i, n in enumerate(names)}, {n: 3 for n in names}, {})
    saved.save(deployment_file(DEV_CHAIN_ID))
    assert _load_deployment(cfg, rpc) == saved

    class DeadRpc:
        @property
        def chain_id(self):
            raise ConnectionError("connection refused")

    with pytest.raises(ConfigError, match="rpc_url: cannot reach the chain"):
        _load_deployment(cfg, SimpleNamespace(eth=DeadRpc()))
