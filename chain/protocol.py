"""Protocol constants and naming rules, in one place every layer may import.

`chain` sits below `node` and beside `inference`, so `node`, `benchmarks` and the tests import
these from here. `inference` cannot import `chain`: the attribution weights there restate the
bps total, and tests/unit/test_protocol.py pins the two together.
"""

from __future__ import annotations

# Basis points in a whole (AdapterRegistry.BPS, UsageEscrow's BPS): revenue splits and
# attribution weights are expressed against it.
TOTAL_BPS = 10_000

# anvil / hardhat: the only chain where anvil's well-known dev keys are accepted.
DEV_CHAIN_ID = 31337

# An adapter's model name, in the API, the engine and the client: "adapter-<AdapterRegistry id>".
ADAPTER_MODEL_PREFIX = "adapter-"
# The node DB stores adapter ids as signed 64-bit integers; a name beyond that names no adapter.
MAX_ADAPTER_ID = 2**63 - 1
_MAX_ID_DIGITS = len(str(MAX_ADAPTER_ID))
_ASCII_DIGITS = frozenset("0123456789")


def adapter_model_name(adapter_id: int) -> str:
    """The model name of adapter `adapter_id` (ids start at 1)."""
    if isinstance(adapter_id, bool) or not isinstance(adapter_id, int) or not 1 <= adapter_id <= MAX_ADAPTER_ID:
        raise ValueError(f"adapter id must be an integer in 1..{MAX_ADAPTER_ID}, got {adapter_id!r}")
    return f"{ADAPTER_MODEL_PREFIX}{adapter_id}"


def parse_adapter_model_name(name: str) -> int | None:
    """The adapter id of a model name "adapter-<id>", or None when `name` is not one.

    The id is written as `adapter_model_name` writes it: ASCII digits, no sign, no leading zero,
    no surrounding space, in 1..MAX_ADAPTER_ID. Anything else (e.g. "adapter-01", "adapter-0",
    non-ASCII digits) is not an adapter name, so one adapter has exactly one name.
    """
    if not isinstance(name, str) or not name.startswith(ADAPTER_MODEL_PREFIX):
        return None
    digits = name[len(ADAPTER_MODEL_PREFIX) :]
    if not digits or len(digits) > _MAX_ID_DIGITS or digits[0] == "0" or not set(digits) <= _ASCII_DIGITS:
        return None
    adapter_id = int(digits)
    return adapter_id if adapter_id <= MAX_ADAPTER_ID else None
