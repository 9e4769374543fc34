"""Group commit for rows written by many concurrent requests (the API's receipts).

Each caller submits one job and awaits its result; jobs that arrive while a group is being written
wait and go into the next group, written by `write_group` in one transaction in a worker thread
(off the event loop). There is no timer: a lone job is written at once, so low load pays no added
latency, and under load groups form by themselves while the previous commit runs (the classic
database group commit). A caller's result is set only after its group's transaction committed, so
whatever the caller sends afterwards (the HTTP response carrying the receipt) follows a durable
write; a crash before the commit loses the group and every response that would have carried it.

`write_group(jobs)` returns one result or one exception per job, in order (it isolates a bad job
itself, see `node.daemon.payments.ledger.Ledger.append_receipts`); groups are written one at a time, in order.
The payment gate writes the vouchers of concurrent admissions the same way (`Ledger.store_vouchers`),
and uses the mechanism for CPU work too: the signers of concurrent requests' vouchers are recovered
in one thread hop per group (`node.daemon.payments.gate`).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Generic, Sequence, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class GroupCommitter(Generic[J, R]):
    def __init__(self, write_group: Callable[[Sequence[J]], Sequence[R | Exception]], max_group: int = 32) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self.write_group = write_group
        self.max_group = max_group
        self._pending: list[tuple[J, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.groups_written = 0  # for tests and metrics: how many transactions carried the jobs

    async def submit(self, job: J) -> R:
        """Queue `job`; returns its result once its group committed (raises the job's exception).
        A caller that is cancelled while waiting does not withdraw the job: it is written anyway
        (the work it records was done)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((job, fut))
        # a task left behind by a loop that was stopped without cancelling it would never drain
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            group = self._pending[: self.max_group]
            del self._pending[: len(group)]
            try:
                results = await asyncio.to_thread(self.write_group, [job for job, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"write_group returned {len(results)} results for {len(group)} jobs")
            except asyncio.CancelledError:  # the loop is going away: nobody may take an unknown outcome as success
                for _, fut in group + self._pending:
                    if not fut.done():
                        fut.cancel()
                self._pending.clear()
                raise
            except Exception as e:  # noqa: BLE001 - every job of the group learns the failure
                results = [e] * len(group)
            self.groups_written += 1
            for (_, fut), res in zip(group, results, strict=True):
                _settle(fut, res)

    async def close(self) -> None:
        """Wait until every submitted job has been written."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


def _settle(fut: asyncio.Future, res) -> None:
    """Hand a job its outcome, on the loop its caller waits in."""
    loop = fut.get_loop()
    if fut.done() or loop.is_closed():  # its caller was cancelled or is gone; the row is written all the same
        return
    fn = fut.set_exception if isinstance(res, BaseException) else fut.set_result
    if loop is asyncio.get_running_loop():
        fn(res)
    else:
        loop.call_soon_threadsafe(lambda: fut.done() or fn(res))
