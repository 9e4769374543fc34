"""Metering per docs/interfaces.md: cost = ceil(tokens * price_per_1k / 1000), exact in integers."""

from __future__ import annotations

from fractions import Fraction
from math import ceil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.metering import Price, cost_for, cost_of


@given(st.integers(0, 10**7), st.integers(0, 10**30))
def test_cost_is_the_exact_ceiling(tokens, price):
    assert cost_of(tokens, price) == ceil(Fraction(tokens * price, 1000))


def test_examples_and_parts():
    assert cost_of(1, 1) == 1 and cost_of(1000, 1) == 1 and cost_of(1001, 1) == 2 and cost_of(0, 10**18) == 0
    c = cost_for(10, 5, Price(compute_per_1k=1000, adapter_per_1k=3001))
    assert (c.compute, c.adapter, c.total) == (15, 46, 61)  # 15 * 3001 / 1000 = 45.015 → 46
    assert c.as_dict() == {"compute": "15", "adapter": "46", "total": "61"}


@pytest.mark.parametrize("tokens,price", [(-1, 1), (1, -1)])
def test_negative_inputs_are_refused(tokens, price):
    with pytest.raises(ValueError):
        cost_of(tokens, price)
