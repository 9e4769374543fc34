"""The daemon's supervisor (node.daemon.supervisor): a crashing loop is restarted, and /healthz
reports every loop with its state, restarts and last error."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.api import keys as K
from node.api.app import create_http_app
from node.config import load_config
from node.daemon.supervisor import Supervisor
from node.metrics import NodeMetrics


class _CrashesFirst:
    """Crashes `crashes` times, then runs until asked to stop."""

    def __init__(self, crashes: int) -> None:
        self.crashes, self.runs = crashes, 0
        self.steady = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        self.steady.set()
        await stop.wait()


class _Steady:
    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


async def test_a_crashing_loop_is_restarted_and_its_error_kept():
    sup = Supervisor(restart_delay_s=0.01)
    flaky = _CrashesFirst(crashes=2)
    sup.add("flaky", flaky)
    sup.start()
    await asyncio.wait_for(flaky.steady.wait(), 5)
    h = sup.health()["flaky"]
    assert (h.state, h.restarts, h.last_error) == ("running", 2, "RuntimeError: boom 2")
    await sup.stop(timeout=5)
    assert sup.health()["flaky"].state == "stopped"


async def test_a_loop_crashing_waits_before_its_restart():
    sup = Supervisor(restart_delay_s=60)
    sup.add("flaky", _CrashesFirst(crashes=1))
    sup.start()
    for _ in range(100):
        if sup.health()["flaky"].state == "restarting":
            break
        await asyncio.sleep(0.01)
    h = sup.health()["flaky"]
    assert (h.state, h.restarts, h.last_error) == ("restarting", 0, "RuntimeError: boom 1")
    await sup.stop(timeout=5)  # the pause ends at once when the node stops
    assert sup.health()["flaky"].state == "stopped"


async def test_a_loop_cancelled_from_outside_is_reported_failed():
    sup = Supervisor()
    sup.add("steady", _Steady())
    sup.start()
    await asyncio.sleep(0)
    sup._tasks["steady"].cancel()
    await asyncio.gather(sup._tasks["steady"], return_exceptions=True)
    assert sup.health()["steady"].state == "failed"


def test_two_loops_with_one_name_are_refused():
    sup = Supervisor()
    sup.add("watcher", _Steady())
    with pytest.raises(ValueError, match="already supervised"):
        sup.add("watcher", _Steady())


class _Catalog:
    def states(self) -> dict:
        return {}


class _Engine:
    running = True


async def test_healthz_reports_every_loop_with_its_restarts(tmp_path):
    config = load_config(None, environ={}, data_dir=tmp_path, dev_mode=True, dashboard_enabled=False)
    sup = Supervisor(restart_delay_s=0.01)
    flaky = _CrashesFirst(crashes=1)
    sup.add("flaky", flaky)
    sup.add("steady", _Steady())

    async def parts(app):  # what the composition root puts under the keys /healthz reads
        app[K.ENGINE] = _Engine()
        app[K.CATALOG] = _Catalog()
        app[K.CHAIN] = K.ChainInfo(chain_id=31337, node_address="0x" + "11" * 20, escrow="", receipt_log="", addresses={})
        sup.start()
        yield
        await sup.stop(timeout=5)

    app = create_http_app(config, node_metrics=NodeMetrics(), loops=sup, startup=[parts])
    async with TestClient(TestServer(app)) as client:
        await asyncio.wait_for(flaky.steady.wait(), 5)
        resp = await client.get("/healthz")
        body = await resp.json()
    assert resp.status == 200
    assert body["background"] == {
        "flaky": {"state": "running", "restarts": 1, "last_error": "RuntimeError: boom 1"},
        "steady": {"state": "running", "restarts": 0, "last_error": None},
    }
