"""Attribution-weighted dataset rewards: the settlement rule (`rule`), the node's settle step
(`settler`), the public audit of a committed batch (`audit`) and a contributor's breakdown
(`breakdown`). The rule is documented in docs/attribution-rewards.md."""
