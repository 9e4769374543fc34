"""Every background loop of the daemon, supervised (the composition root, node.daemon.root, adds
them): chain watcher → adapter lifecycle, settlement, escrow follower, attribution service.

A loop is any object with `async run(stop_event)`; it survives RPC/IPFS outages itself and serving
never waits on it. If it crashes anyway (a bug), the supervisor logs it and restarts it after a
pause instead of letting it die silently; `health()` tells /healthz each loop's state, its restarts
and its last error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
MAX_ERROR_CHARS = 200


class Loop(Protocol):
    async def run(self, stop_event: asyncio.Event) -> None: ...


@dataclass
class LoopHealth:
    # starting → running; after a crash restarting → running; stopped once it returned;
    # failed if its task ended in a way the supervisor did not expect (cancelled from outside)
    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


@dataclass
class Supervisor:
    restart_delay_s: float = RESTART_DELAY_S
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    _loops: dict[str, Loop] = field(default_factory=dict)
    _health: dict[str, LoopHealth] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def add(self, name: str, loop: Loop) -> None:
        if name in self._loops:
            raise ValueError(f"a loop named {name!r} is already supervised")
        self._loops[name] = loop
        self._health[name] = LoopHealth()

    def start(self) -> None:
        """Start every added loop that is not running yet (on the running event loop)."""
        for name, loop in self._loops.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._supervise(name, loop), name=f"loranode-{name}")

    def health(self) -> dict[str, LoopHealth]:
        for name, task in self._tasks.items():
            h = self._health[name]
            if task.done() and h.state not in ("stopped", "failed"):
                # ended outside `_supervise`'s own bookkeeping: cancelled while it paused to restart
                h.state = "stopped" if self.stop_event.is_set() else "failed"
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    h.last_error = _describe(exc)
        return dict(self._health)

    async def _supervise(self, name: str, loop: Loop) -> None:
        health = self._health[name]
        while not self.stop_event.is_set():
            health.state = "running"
            try:
                await loop.run(self.stop_event)
                health.state = "stopped"
                return
            except asyncio.CancelledError:
                health.state = "stopped" if self.stop_event.is_set() else "failed"
                raise
            except Exception as e:  # any crash of a loop is a bug: log it, restart it
                health.state, health.last_error = "restarting", _describe(e)
                log.exception("%s loop crashed; restarting in %.0f s", name, self.restart_delay_s)
                try:
                    await asyncio.wait_for(self.stop_event.wait(), self.restart_delay_s)
                except asyncio.TimeoutError:
                    health.restarts += 1
        health.state = "stopped"

    async def stop(self, timeout: float = 15.0) -> None:
        """Ask every loop to stop, wait for them, then cancel the stragglers."""
        self.stop_event.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
