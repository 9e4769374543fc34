"""Test double of the payment gate's escrow reads (`node.daemon.payments.gate.EscrowReader`) for unit
tests that exercise the gate and the ledger without a chain: every payer is funded and signs for
itself. The gate against real contracts is tests/integration/test_api_payments.py."""

from __future__ import annotations


class FundedEscrow:
    """Every payer is funded; only payers sign for themselves (no delegated signers)."""

    def is_authorized(self, payer: str, signer: str) -> bool:
        return False

    def available(self, payer: str, node: str) -> int:
        return 10**18

    def collected_many(self, lanes) -> list[tuple[int, int]]:
        return [(0, 0) for _ in lanes]
