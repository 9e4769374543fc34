"""aiohttp routes of the dashboard: the page, its two static files, and the state snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from node.api import keys as K
from node.api.dashboard.snapshot import Snapshotter

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}


def _file(name: str):
    body = (STATIC / name).read_bytes()  # read once: the files ship with the package

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=_FILES[name], charset="utf-8", headers=SECURITY_HEADERS)

    return handler


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard", headers=SECURITY_HEADERS)


async def _state(request: web.Request) -> web.Response:
    app = request.app
    holder = app[K.DASHBOARD_SNAPSHOTTER]
    if "s" not in holder:  # the DB and chain exist only once the app has started
        holder["s"] = Snapshotter(app[K.SESSIONS], app[K.CONFIG], app[K.CHAIN], app[K.LEDGER])
    snap = holder["s"]
    loops = {name: h.state for name, h in app[K.LOOPS].health().items()}
    body = await asyncio.to_thread(snap.build, loops)
    return web.json_response(body, headers=SECURITY_HEADERS)


def add_dashboard(app: web.Application) -> None:
    app[K.DASHBOARD_SNAPSHOTTER] = {}
    r = app.router
    r.add_get("/", _redirect)
    r.add_get("/dashboard", _file("index.html"))
    r.add_get("/dashboard/app.js", _file("app.js"))
    r.add_get("/dashboard/app.css", _file("app.css"))
    r.add_get("/dashboard/favicon.svg", _file("favicon.svg"))
    r.add_get("/dashboard/api/state", _state)
