"""Payments: the voucher gate, escrow reads and events, signed receipts and the lane ledger."""
