"""Metering: what a request costs, per docs/interfaces.md.

Prices are in the payment token's smallest unit per 1,000 tokens (prompt + completion);
`cost = ceil(tokens * price_per_1k / 1000)`. The compute part uses the node's price, the adapter
part the adapter's registered price (0 for the base model).
"""

from __future__ import annotations

from dataclasses import dataclass


def cost_of(tokens: int, price_per_1k: int) -> int:
    """ceil(tokens * price_per_1k / 1000) in integers (no float rounding on token amounts)."""
    if tokens < 0 or price_per_1k < 0:
        raise ValueError("tokens and price must be non-negative")
    return -(-tokens * price_per_1k // 1000)


@dataclass(frozen=True)
class Price:
    """The quoted price of one lane: node compute price + adapter price, per 1K tokens."""

    compute_per_1k: int
    adapter_per_1k: int = 0

    @property
    def total_per_1k(self) -> int:
        return self.compute_per_1k + self.adapter_per_1k


@dataclass(frozen=True)
class Cost:
    compute: int
    adapter: int

    @property
    def total(self) -> int:
        return self.compute + self.adapter

    def as_dict(self) -> dict:
        return {"compute": str(self.compute), "adapter": str(self.adapter), "total": str(self.total)}


def cost_for(prompt_tokens: int, completion_tokens: int, price: Price) -> Cost:
    tokens = prompt_tokens + completion_tokens
    return Cost(compute=cost_of(tokens, price.compute_per_1k), adapter=cost_of(tokens, price.adapter_per_1k))
