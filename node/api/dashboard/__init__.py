"""The node's read-only dashboard at `/dashboard` (`/` redirects there), on the API's listen address.

Plain HTML/JS/CSS served from `static/` (no build step); the page polls `/dashboard/api/state`, a
JSON snapshot built by `snapshot.py`. Every string from chain (dataset names, endpoints, CIDs) is
untrusted: the page only ever sets `textContent`, and a strict Content-Security-Policy (scripts and
styles from this origin only, nothing inline, no frames) backs that up. Turned off with
`dashboard_enabled = false`.
"""

from node.api.dashboard.routes import add_dashboard

__all__ = ["add_dashboard"]
