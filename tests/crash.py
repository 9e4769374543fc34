"""Run a "node process" that is expected to SIGKILL itself, in a fresh interpreter.

Crash-safety tests need a real process that dies by SIGKILL mid-work. Forking the pytest process
is unsafe: it is multi-threaded (torch, asyncio executors, group-commit threads, SQLAlchemy pools),
and a fork copies locks held by other threads, so the child can hang forever (seen: inside
sqlite3.connect). The child here is a new interpreter (multiprocessing's "spawn"): it imports the
target's module by name (pytest's sys.path is passed on), builds its own engines and connections,
and reports values to the parent through a pipe. Every wait has a deadline; a child still alive at
the deadline is killed and the test fails with a clear message instead of hanging the suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import multiprocessing
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable

TIMEOUT_S = 120.0


class _Failed:
    """Sent by the child when the target raised: the traceback, for the parent's failure message."""

    def __init__(self, tb: str):
        self.tb = tb


def _load(module: str, file: str, name: str) -> Callable[..., Any]:
    """The target, by module name as the parent knows it; pytest's importlib import mode may have
    named a test module in a way sys.path cannot resolve (run from another directory), so fall back
    to loading its file under that name."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        spec = importlib.util.spec_from_file_location(module, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        spec.loader.exec_module(mod)
    return getattr(mod, name)


def _child(send, where: tuple[str, str, str], args: tuple) -> None:
    try:
        _load(*where)(send.send, *args)
    except BaseException:  # noqa: BLE001 - whatever ends the child early is reported to the test, as a traceback
        try:
            send.send(_Failed(traceback.format_exc()))
        except BaseException:  # noqa: BLE001 - the parent may be gone; the exit code below still tells
            pass
    finally:
        os._exit(3)  # reached only if the kill point never came


def run_until_sigkilled(target: Callable[..., Any], *args: Any, timeout: float = TIMEOUT_S, what: str = "") -> list[Any]:
    """Run `target(report, *args)` in a fresh interpreter, where `report(value)` sends a picklable
    value to this process; the child must end by SIGKILLing itself. Returns the reported values in
    order. `target` must be a module-level function (the child imports it by module name) and
    `args` picklable. Fails if the child exits any other way or is still alive after `timeout` s
    (it is then killed)."""
    label = f"{what}: " if what else ""
    if "." in target.__qualname__:  # a nested function or a method
        raise TypeError(f"{target.__qualname__} must be a module-level function: the child imports it by name")
    where = (target.__module__, inspect.getfile(target), target.__name__)
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, where, args), daemon=True, name=f"crash-{target.__name__}")
    reports: list[Any] = []
    try:
        proc.start()
        send.close()  # the child holds the only write end now
        deadline, reading, ended = time.monotonic() + timeout, True, False
        while not ended and (left := deadline - time.monotonic()) > 0:
            ready = wait([recv, proc.sentinel] if reading else [proc.sentinel], left)
            if recv in ready:  # read before looking at the sentinel: nothing it sent is lost
                try:
                    reports.append(recv.recv())
                except (EOFError, OSError):  # its end closed (it died), maybe mid-message
                    reading = False
            else:
                ended = proc.sentinel in ready
        hung = not ended
        if hung:
            proc.kill()
        proc.join(10)
        while reading and recv.poll(0):  # what it wrote just before dying
            try:
                reports.append(recv.recv())
            except (EOFError, OSError):
                break
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        send.close()
        recv.close()
    failed = [r.tb for r in reports if isinstance(r, _Failed)]
    reports = [r for r in reports if not isinstance(r, _Failed)]
    if hung:
        raise AssertionError(
            f"{label}the crashing child {proc.pid} was still alive after {timeout:.0f} s (killed it); it reported {reports!r}"
        )
    assert not failed, f"{label}the crashing child raised instead of dying by SIGKILL:\n{failed[0]}"
    assert proc.exitcode == -signal.SIGKILL, (
        f"{label}the crashing child ended with exit code {proc.exitcode}, not by SIGKILL; it reported {reports!r}"
    )
    return reports
