"""`loranode node run` refuses a bad start with a clear message and exit status 2 (before loading
the model): invalid options, a missing deployment file, a deployment of another chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS

ROOT = Path(__file__).resolve().parents[2]


def _run(config: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli.app", "node", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_invalid_options_name_the_option(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('confirmations = -3\nlisten_port = "x"\nbogus = 1\ndev_mode = true\n')
    r = _run(cfg)
    assert r.returncode == 2
    for needle in ("confirmations", "listen_port", "bogus: unknown option"):
        assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_missing_deployment_and_wrong_chain(tmp_path, anvil):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'data_dir = "data"\ndeployment = "nope.json"\nrpc_url = "{anvil.url}"\ndev_mode = true\n')
    r = _run(cfg)
    assert r.returncode == 2 and "deployment" in r.stderr and "Traceback" not in r.stderr, r.stderr
    dep = deploy(anvil.url, DEV_PRIVATE_KEYS[0], out_dir=None)
    data = json.loads(dep.save(tmp_path / "dep.json").read_text())
    data["chain_id"] = 1  # a mainnet deployment file against the dev chain
    (tmp_path / "nope.json").write_text(json.dumps(data))
    r = _run(cfg)
    assert r.returncode == 2 and "chain" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("toml", ['listen_host = "127.0.0.1"\n[section]\nx = 1\n', "not toml at all ==="])
def test_unreadable_config(tmp_path, toml):
    cfg = tmp_path / "node.toml"
    cfg.write_text(toml)
    r = _run(cfg)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
