"""`loranode chat`: find the nodes serving a model on chain, pick one, pay with vouchers, stream.

- `endpoints`: NodeRegistry endpoints are untrusted strings: validated, and made safe to show.
- `discovery`: registered nodes → probed (`/v1/node`, `/v1/models`) → checked against the chain
  (address, chain, contracts, prices) → ranked by price and measured latency.
- `state`: the payer's lane totals and receipts in SQLite, so the next invocation pays correctly.
- `session`: one question → streamed answer → cost and verified receipt.
All voucher and receipt checks are `node.client.payer`'s.
"""
