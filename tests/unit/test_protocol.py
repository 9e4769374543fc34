"""chain/protocol.py: the protocol constants and the one adapter model-name format and parser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chain.protocol import (
    ADAPTER_MODEL_PREFIX,
    DEV_CHAIN_ID,
    MAX_ADAPTER_ID,
    TOTAL_BPS,
    adapter_model_name,
    parse_adapter_model_name,
)


def test_constants_match_the_contracts_and_the_restated_copy():
    from inference.attribution import weights

    contracts = Path(__file__).resolve().parents[2] / "contracts"
    for source in ("AdapterRegistry.sol", "UsageEscrow.sol"):
        found = re.findall(r"constant BPS = ([0-9_]+);", (contracts / source).read_text())
        assert [int(v) for v in found] == [TOTAL_BPS], source
    assert weights.TOTAL_BPS == TOTAL_BPS  # inference cannot import chain, so it restates the total
    assert DEV_CHAIN_ID == 31337  # anvil's default chain id


@pytest.mark.parametrize("adapter_id", [1, 7, 10, 12345, MAX_ADAPTER_ID])
def test_name_round_trips(adapter_id):
    name = adapter_model_name(adapter_id)
    assert name == f"adapter-{adapter_id}" and name.startswith(ADAPTER_MODEL_PREFIX)
    assert parse_adapter_model_name(name) == adapter_id


@pytest.mark.parametrize(
    "name",
    [
        "adapter-0",  # ids start at 1
        "adapter-01",
        "adapter-007",  # leading zeros: one adapter has one name
        "adapter-",
        "adapter",
        "adapter-x",
        "adapter-1x",
        "adapter-1.0",
        "adapter-1e3",
        "adapter--1",
        "adapter-+1",
        "adapter- 1",
        "adapter-1 ",
        " adapter-1",
        "adapter-1\n",
        "adapter-1\x00",
        "adapter-1_000",  # int() would accept the underscore
        "Adapter-1",
        "ADAPTER-1",
        "adapters-1",
        "lora-1",
        "",
        "adapter-\u0661",
        "adapter-1\u0662",
        "adapter-\uff11",
        "adapter-\u00b2",  # Arabic-Indic, fullwidth, superscript
        f"adapter-{MAX_ADAPTER_ID + 1}",  # beyond the node DB's 64-bit ids
        "adapter-99999999999999999999",  # 20 digits
        "adapter-" + "9" * 5000,  # huge: refused before any int() conversion
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ],
)
def test_rejects_anything_else(name):
    assert parse_adapter_model_name(name) is None


@pytest.mark.parametrize("value", [None, 1, b"adapter-1", ["adapter-1"]])
def test_parser_rejects_non_strings(value):
    assert parse_adapter_model_name(value) is None


@pytest.mark.parametrize("bad", [0, -1, MAX_ADAPTER_ID + 1, True, 1.0, "1"])
def test_builder_refuses_ids_that_name_no_adapter(bad):
    with pytest.raises(ValueError, match="adapter id must be an integer"):
        adapter_model_name(bad)


def test_every_layer_uses_the_one_parser():
    """The API catalog, the payer client, chat discovery and the vLLM gateway agree on names."""
    from node.api.catalog import Catalog
    from node.client.payer import ClientError, NodeQuote, VoucherWallet

    quote = NodeQuote("0x" + "11" * 20, DEV_CHAIN_ID, "0x" + "22" * 20, "0x" + "33" * 20, "base/model", 1, {})
    wallet = VoucherWallet("0x" + "44" * 20, quote, signer_key="0x" + "55" * 32)
    assert wallet.adapter_id("adapter-12") == 12 and wallet.adapter_id("base/model") == 0
    for name in ("adapter-01", "adapter-0", "adapter-\u0661"):
        with pytest.raises(ClientError, match="neither the base model nor adapter-<id>"):
            wallet.adapter_id(name)

    from node.api.errors import ModelNotFound
    from node.client.chat.discovery import ProbeError, model_terms

    catalog = Catalog(sessions=None, base_model_id="base/model")  # type: ignore[arg-type]  # never reaches the DB
    for name in ("adapter-01", "adapter-0", "adapter-\uff11", f"adapter-{MAX_ADAPTER_ID + 1}"):
        with pytest.raises(ModelNotFound, match="adapter-<id>"):
            catalog.resolve(name)
    for name in ("adapter-01", "adapter-0", "adapter-\u00b2"):
        with pytest.raises(ProbeError, match="is not adapter-<id>"):
            model_terms(None, name)  # refused before any chain read


def test_the_config_names_the_default_base_model_without_importing_torch():
    import subprocess
    import sys

    from inference.base_model import EMBEDDED_MODEL_ID

    code = (
        "import sys; from node.config import NodeConfig; "
        "print(NodeConfig.model_fields['base_model_id'].default, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]
    ).stdout.split()
    assert out == [EMBEDDED_MODEL_ID, "False"]
