"""Every custom error the protocol contracts declare is exercised by a test in this folder.

A static check: each error name must appear quoted in some test module here (the tests assert
the decoded ContractRevert name), so a newly added error without a test fails this test."""

from __future__ import annotations

from pathlib import Path

from chain.artifacts import load_artifact
from chain.deploy import PROTOCOL_CONTRACTS


def test_every_protocol_error_has_a_test():
    here = Path(__file__).parent
    sources = "".join(p.read_text() for p in here.glob("test_*.py") if p.name != Path(__file__).name)
    missing = []
    for name in PROTOCOL_CONTRACTS:
        for entry in load_artifact(name).abi:
            if entry["type"] == "error" and entry["name"].startswith(name):
                if f'"{entry["name"]}"' not in sources:
                    missing.append(entry["name"])
    assert not missing, f"custom errors without a test: {sorted(set(missing))}"
