"""Token amounts: what a user types ('1.5') to base units and back."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from node.services.errors import InputError

TOKEN_DECIMALS = 18


def parse_amount(text: str, decimals: int = TOKEN_DECIMALS) -> int:
    """'1.5' tokens -> 1.5e18 base units; refuses negatives, NaN and excess precision."""
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise InputError(f"not an amount: {text!r}") from None
    if not d.is_finite() or d < 0:
        raise InputError(f"amount must be a non-negative number, got {text!r}")
    units = d * (Decimal(10) ** decimals)
    if units != units.to_integral_value():
        raise InputError(f"amount {text!r} has more than {decimals} decimals")
    value = int(units)
    if value >= 2**256:
        raise InputError(f"amount {text!r} is too large")
    return value


def format_amount(units: int, decimals: int = TOKEN_DECIMALS, places: int | None = None) -> str:
    """Base units as a decimal token amount; `places` rounds (down) for display only."""
    q = Decimal(units) / (Decimal(10) ** decimals)
    if places is not None:
        q = q.quantize(Decimal(1).scaleb(-places), rounding="ROUND_DOWN")
    return f"{q.normalize():f}"
