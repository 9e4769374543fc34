"""Test double of the payment gate's escrow reads (`node.daemon.payments.gate.EscrowReader`) for unit
tests that exercise the gate and the ledger without a chain, and for benchmarks/profile_api_path.py's
admission crowds: every payer is funded and signs for itself. The gate against real contracts is
tests/integration/test_api_payments.py."""

from __future__ import annotations


class FundedEscrow:
    """Every payer is funded with `funds`; only payers sign for themselves (no delegated signers)."""

    def __init__(self, funds: int = 10**18):
        self.funds = funds

    def is_authorized(self, payer: str, signer: str) -> bool:
        return False

    def available(self, payer: str, node: str) -> int:
        return self.funds

    def collected_many(self, lanes) -> list[tuple[int, int]]:
        return [(0, 0) for _ in lanes]
