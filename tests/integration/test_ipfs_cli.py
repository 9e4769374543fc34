"""`loranode ipfs cid|add|get` end to end through the real CLI app."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from node.cli.app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORANODE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LORANODE_DATA_DIR", str(tmp_path / "data"))


def make_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 4}\n')
    (root / "sub" / "w.bin").write_bytes(bytes(range(256)) * 3000)
    return root


def test_cid_prints_kubo_cids(tmp_path):
    f = tmp_path / "hello"
    f.write_bytes(b"hello world\n")
    r = runner.invoke(app, ["ipfs", "cid", str(f), "--v0"])
    assert r.exit_code == 0 and r.stdout.strip() == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    r = runner.invoke(app, ["ipfs", "cid", str(f)])
    assert r.stdout.strip() == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    if shutil.which("ipfs_cid"):
        big = tmp_path / "big"
        big.write_bytes(bytes(1_000_000))
        ref = subprocess.run(["ipfs_cid", str(big)], capture_output=True, text=True).stdout
        assert runner.invoke(app, ["ipfs", "cid", str(big), "--v0"]).stdout.strip() in ref


def test_add_then_get_round_trips_a_folder(tmp_path):
    src = make_tree(tmp_path / "adapter")
    r = runner.invoke(app, ["ipfs", "add", str(src)])
    assert r.exit_code == 0, r.output
    cid = r.stdout.strip()
    assert runner.invoke(app, ["ipfs", "cid", str(src)]).stdout.strip() == cid
    assert (tmp_path / "data" / "ipfs" / "pins" / cid).exists()  # where the daemon looks by default
    dest = tmp_path / "out"
    r = runner.invoke(app, ["ipfs", "get", cid, str(dest)])
    assert r.exit_code == 0, r.output
    assert (dest / "sub" / "w.bin").read_bytes() == (src / "sub" / "w.bin").read_bytes()
    again = runner.invoke(app, ["ipfs", "get", cid, str(dest)])
    assert again.exit_code == 2 and "already exists" in again.output  # bad input (node.cli.errors)


def test_errors_are_one_clear_line(tmp_path):
    r = runner.invoke(app, ["ipfs", "get", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not in the store" in r.output
    r = runner.invoke(app, ["ipfs", "get", "not-a-cid", str(tmp_path / "o")])
    assert r.exit_code == 2 and "multibase" in r.output
    r = runner.invoke(app, ["ipfs", "cid", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such file" in r.output
