"""chain.deploy and chain.contracts plumbing: deployment files, wiring, revert decoding."""

from __future__ import annotations

import json

import pytest
from web3 import Web3

from chain.contracts import Contracts
from chain.reverts import decode_revert
from chain.deploy import Deployment, create_address, deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.errors import ChainError, DeployError


def test_deploy_writes_file_and_wires_contracts(anvil, tmp_path):
    dep = deploy(anvil.url, DEV_PRIVATE_KEYS[0], protocol_fee_bps=250, thaw_seconds=60, out_dir=tmp_path)
    path = tmp_path / f"{dep.chain_id}.json"
    assert path.exists()
    loaded = Deployment.load(path)
    assert loaded == dep
    assert set(dep.addresses) == {
        "PaymentToken",
        "DatasetRegistry",
        "AdapterRegistry",
        "NodeRegistry",
        "RewardVault",
        "UsageEscrow",
        "ReceiptLog",
        "AttributionPool",
    }
    assert dep.stale_abis() == []
    assert dep.start_block == min(dep.blocks.values()) > 0
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    c = Contracts(w3, dep)
    a = dep.addresses
    assert c.escrow.contract.functions.peers().call() == [
        a["PaymentToken"],
        a["AdapterRegistry"],
        a["AttributionPool"],
        a["RewardVault"],
        a["NodeRegistry"],
    ]
    terms = c.nodes.dispute_terms()
    assert (terms.arbitrator, terms.receipts) == (dep.deployer, a["ReceiptLog"]) and terms.min_bond == dep.params["min_bond"]
    assert c.vault.contract.functions.creditors().call() == [a["UsageEscrow"], a["DatasetRegistry"]]
    assert c.datasets.contract.functions.peers().call() == [a["RewardVault"], a["AttributionPool"]]
    assert c.pool.contract.functions.peers().call() == [
        a["DatasetRegistry"],
        a["UsageEscrow"],
        a["ReceiptLog"],
        a["AdapterRegistry"],
        a["NodeRegistry"],
    ]
    assert c.escrow.protocol_fee().bps == 250 and c.escrow.thaw_seconds() == 60
    assert c.nodes.contract.functions.bondTerms().call()[1] == 60
    assert len(c.event_topics()) >= 20 and all(t.startswith("0x") and len(t) == 66 for t in c.event_topics())


def test_deploy_with_existing_token(anvil):
    first = deploy(anvil.url, DEV_PRIVATE_KEYS[0], out_dir=None)
    second = deploy(anvil.url, DEV_PRIVATE_KEYS[1], token=first.addresses["PaymentToken"], out_dir=None)
    assert second.addresses["PaymentToken"] == first.addresses["PaymentToken"]
    assert second.addresses["UsageEscrow"] != first.addresses["UsageEscrow"]


def test_deploy_rejects_bad_arguments(anvil):
    with pytest.raises(DeployError, match="protocol_fee_bps"):
        deploy(anvil.url, DEV_PRIVATE_KEYS[0], protocol_fee_bps=1001, out_dir=None)
    with pytest.raises(DeployError, match="thaw_seconds"):
        deploy(anvil.url, DEV_PRIVATE_KEYS[0], thaw_seconds=-1, out_dir=None)
    with pytest.raises(DeployError, match="min_bond"):
        deploy(anvil.url, DEV_PRIVATE_KEYS[0], min_bond=0, out_dir=None)
    with pytest.raises(DeployError, match="no code"):
        deploy(anvil.url, DEV_PRIVATE_KEYS[0], token="0x" + "42" * 20, out_dir=None)


def test_deployment_load_rejects_bad_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(DeployError, match="unreadable"):
        Deployment.load(p)
    p.write_text(json.dumps({"chain_id": 1, "addresses": {"PaymentToken": "0x" + "11" * 20}, "blocks": {}, "abi_hashes": {}}))
    with pytest.raises(DeployError, match="lacks"):
        Deployment.load(p)
    with pytest.raises(DeployError):
        Deployment.load(tmp_path / "missing.json")


def test_contracts_refuse_a_deployment_of_another_chain(anvil):
    dep = deploy(anvil.url, DEV_PRIVATE_KEYS[0], out_dir=None)
    dep.chain_id = 1
    with pytest.raises(ChainError, match="chain 1"):
        Contracts(Web3(Web3.HTTPProvider(anvil.url)), dep)


def test_create_address_matches_known_value():
    # anvil's first contract from the first dev account is a well-known address
    assert create_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", 0) == "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def test_decode_revert_handles_unknown_and_malformed_data():
    assert decode_revert(b"").name == "Unknown"
    assert decode_revert(b"\xde\xad\xbe\xef").name == "Unknown"
    err = decode_revert(bytes.fromhex("08c379a0") + bytes(31) + b"\x20" + bytes(31) + b"\x02" + b"hi" + bytes(30))
    assert (err.name, err.args) == ("Error", ("hi",))
    # a known selector with truncated arguments must not crash
    from eth_utils import keccak

    sel = keccak(text="UsageEscrowBadBatch(uint256,uint256)")[:4]
    assert decode_revert(sel + b"\x01").name == "Unknown"
    assert decode_revert(sel + (1).to_bytes(32, "big") + (2).to_bytes(32, "big")).args == (1, 2)


def test_deploy_command_line(anvil, tmp_path, capsys):
    from chain.deploy import _main

    assert _main(["--rpc-url", anvil.url, "--dev-key", "0", "--out-dir", str(tmp_path), "--thaw-seconds", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Deployment.load(out["file"]).params["thaw_seconds"] == 5
    assert _main(["--rpc-url", anvil.url, "--dev-key", "0", "--out-dir", str(tmp_path), "--protocol-fee-bps", "5000"]) == 1
    with pytest.raises(SystemExit):
        _main(["--rpc-url", anvil.url, "--dev-key", "99"])


def test_deploy_command_line_with_keystore(anvil, tmp_path, monkeypatch, capsys):
    from eth_account import Account

    from chain.deploy import _main

    acct = Account.create()
    ks = tmp_path / "deployer.json"
    ks.write_text(json.dumps(Account.encrypt(acct.key, "pw", iterations=2)))
    anvil.rpc("anvil_setBalance", [acct.address, hex(10**20)])
    monkeypatch.setenv("LORANODE_KEYSTORE_PASSWORD", "pw")
    assert _main(["--rpc-url", anvil.url, "--keystore", str(ks), "--out-dir", str(tmp_path)]) == 0
    assert Deployment.load(tmp_path / "31337.json").deployer == acct.address
    monkeypatch.setenv("LORANODE_KEYSTORE_PASSWORD", "wrong")
    with pytest.raises(SystemExit):
        _main(["--rpc-url", anvil.url, "--keystore", str(ks), "--out-dir", str(tmp_path)])
