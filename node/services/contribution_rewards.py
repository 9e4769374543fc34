"""An address's rewards per dataset contribution (`node.attribution_rewards.breakdown`), and their
table rows as `rewards show` and the demo print them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.services.amounts import format_amount
from node.services.content import fetch_cache, read_backends


def contributions_of(c, who: str, store: Path | None, kubo_url: str | None):
    """The breakdown, reading committed receipts files from the store, then Kubo."""
    from node.attribution_rewards.breakdown import breakdown

    return asyncio.run(breakdown(c, who, read_backends(store, kubo_url, None), fetch_cache()))


def contribution_rows(b, places: int | None = 6) -> list[dict]:
    return [
        {
            "contribution": r.contribution_id,
            "dataset": r.dataset_id,
            "status": r.status,
            "answers": r.answers,
            "tokens attributed": f"{float(r.tokens_attributed):.1f}",
            "earned by attribution": format_amount(r.earned_by_attribution, places=places),
            "earned": format_amount(r.earned, places=places),
            "pending": format_amount(r.pending, places=places),
            "harvested": format_amount(r.harvested, places=places),
        }
        for r in b.contributions
    ]
