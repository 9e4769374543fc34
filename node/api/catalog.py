"""Which `model` names this node serves: the base model and the adapters loaded here.

The adapter rows (chain columns + lifecycle state) live in the node DB, written by the watcher
and the adapter lifecycle; a short TTL cache keeps the DB off the per-request path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chain.protocol import adapter_model_name, parse_adapter_model_name
from node.api.errors import ModelNotFound, Unavailable
from node.db import models as m


@dataclass(frozen=True)
class Target:
    model: str  # the API model name
    adapter_id: int  # 0 = the base model
    engine_adapter: str | None
    adapter_price_per_1k: int
    created: int = 0
    owner: str = ""


class Catalog:
    def __init__(self, sessions: sessionmaker[Session], base_model_id: str, ttl_s: float = 1.0) -> None:
        self.sessions = sessions
        self.base_model_id = base_model_id
        self.ttl_s = ttl_s
        self._cache: dict[int, tuple[float, m.Adapter | None]] = {}

    def _adapter(self, adapter_id: int) -> m.Adapter | None:
        hit = self._cache.get(adapter_id)
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl_s:
            return hit[1]
        with self.sessions() as s:
            row = s.get(m.Adapter, adapter_id)
        if len(self._cache) > 10_000:  # unknown ids from clients must not grow it without bound
            self._cache.clear()
        self._cache[adapter_id] = (now, row)
        return row

    def resolve(self, model: str) -> Target:
        if model == self.base_model_id:
            return Target(model, 0, None, 0)
        adapter_id = parse_adapter_model_name(model)
        if adapter_id is None:
            raise ModelNotFound(
                f"model {model!r} is not served here: use the base model {self.base_model_id!r} "
                "or \"adapter-<id>\" (see /v1/models)",
                param="model",
            )
        row = self._adapter(adapter_id)
        if row is None:
            raise ModelNotFound(f"adapter {adapter_id} is not registered", param="model")
        if row.base_model != self.base_model_id:
            raise ModelNotFound(
                f"adapter {adapter_id} is for base model {row.base_model!r}; this node serves {self.base_model_id!r}",
                param="model",
            )
        if row.state != m.AdapterState.LOADED.value:
            if row.state in (m.AdapterState.REGISTERED.value, m.AdapterState.FETCHING.value, m.AdapterState.VERIFIED.value):
                raise Unavailable(
                    f"adapter {adapter_id} is not ready yet (state: {row.state}); retry shortly",
                    code="adapter_loading",
                    headers={"Retry-After": "2"},
                )
            reason = f": {row.failure_reason}" if row.failure_reason else ""
            raise ModelNotFound(
                f"adapter {adapter_id} is not served here (state: {row.state}{reason})", param="model", code="adapter_unavailable"
            )
        return Target(
            model,
            adapter_id,
            adapter_model_name(adapter_id),
            int(row.price_per_1k),
            created=int(row.updated_at or 0),
            owner=row.owner,
        )

    def list_models(self) -> list[dict]:
        data = [
            {
                "id": self.base_model_id,
                "object": "model",
                "created": 0,
                "owned_by": "base",
                "adapter_id": "0",
                "price_per_1k": "0",
            }
        ]
        with self.sessions() as s:
            rows = s.scalars(
                select(m.Adapter)
                .where(m.Adapter.state == m.AdapterState.LOADED.value, m.Adapter.base_model == self.base_model_id)
                .order_by(m.Adapter.id)
            ).all()
        for r in rows:
            data.append(
                {
                    "id": r.model_name,
                    "object": "model",
                    "created": int(r.updated_at or 0),
                    "owned_by": r.owner,
                    "adapter_id": str(r.id),
                    "price_per_1k": str(r.price_per_1k),
                    "root": self.base_model_id,
                    "cid": r.cid,
                    "rank": r.rank,
                }
            )
        return data

    def states(self) -> dict[str, int]:
        """Adapter count per lifecycle state (for /healthz)."""
        from sqlalchemy import func

        with self.sessions() as s:
            return {st: n for st, n in s.execute(select(m.Adapter.state, func.count()).group_by(m.Adapter.state))}
