"""Settlement: receipts into Merkle batches on chain, vouchers redeemed, batches settled in AttributionPool."""
