"""`loranode dev up` as a real process (chain, deployment, funded accounts, node.toml; Ctrl-C stops
all of it) and `loranode train` through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli.app import app

LORANODE = str(Path(sys.executable).parent / "loranode")


def _rpc(url: str, method: str) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
    # url: the test's own loopback anvil
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})  # noqa: S310
    return json.load(urllib.request.urlopen(req, timeout=5))["result"]  # noqa: S310


def test_dev_up_prepares_everything_and_ctrl_c_stops_it(tmp_path):
    from chain.contracts import Contracts
    from chain.deploy import Deployment
    from chain.devchain import DEV_PRIVATE_KEYS
    from eth_account import Account
    from web3 import Web3

    from node.config import load_config

    proc = subprocess.Popen(
        [LORANODE, "dev", "up", "--no-node", "--data-dir", str(tmp_path), "--chain-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines, url = [], None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "anvil http://" in line:
                url = line.split("anvil ")[1].split()[0]
            if "Ctrl-C stops everything" in line:
                break
        assert url and url.startswith("http://127.0.0.1:"), "".join(lines)
        cfg = load_config(tmp_path / "node.toml")
        assert cfg.rpc_url == url and cfg.dev_mode and cfg.listen_host == "127.0.0.1"
        dep = Deployment.load(cfg.deployment)
        c = Contracts(Web3(Web3.HTTPProvider(url)), dep)
        payer = Account.from_key(DEV_PRIVATE_KEYS[2]).address
        assert c.token.balance_of(payer) > 0  # dev accounts funded
        node = Account.from_key(DEV_PRIVATE_KEYS[1]).address
        assert c.nodes.is_active(node)
        assert any(f"export LORANODE_RPC_URL={url}" in ln for ln in lines)
        # the dev accounts' keys are printed, and said to be anvil's public standard accounts
        assert any("anvil's standard accounts" in ln for ln in lines)
        assert any(payer in ln and DEV_PRIVATE_KEYS[2] in ln for ln in lines), "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    with pytest.raises(OSError):
        _rpc(url, "eth_chainId")  # anvil is gone


runner = CliRunner()


def test_train_cli_writes_a_publishable_adapter(tmp_path):
    from transformers import AutoConfig

    from inference.adapters import validate_adapter
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response": "Arr matey!"}) + "\n" for i in range(3)))
    out = tmp_path / "lora"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "1",
            "--rank",
            "2",
            "--last-layers",
            "1",
            "--max-length",
            "64",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 1
    spec = validate_adapter(
        out, AutoConfig.from_pretrained(resolve_model_folder(None)), base_model_id=EMBEDDED_MODEL_ID, max_rank=64
    )
    assert spec.rank == 2
    # the output folder is never overwritten
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output  # bad input (node.cli.errors)


@pytest.mark.parametrize(
    "args,msg",
    [
        ([], "exactly one of --data FILE or --dataset ID"),
        (["--data", "x.jsonl", "--dataset", "1"], "exactly one of"),
        (["--data", "missing.jsonl"], "cannot read"),
        (["--data", "bad.jsonl"], "invalid JSON"),
        (["--data", "bad.jsonl", "--steps", "0"], "--steps"),
    ],
)
def test_train_cli_bad_input(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code != 0 and msg in r.output, r.output
    assert not (tmp_path / "o").exists()
