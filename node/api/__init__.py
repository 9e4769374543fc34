"""The node's OpenAI-compatible HTTP API (aiohttp): `app.create_http_app` serves the parts the
composition root (node.daemon.root.build_app) wires; `errors` alone maps domain errors to HTTP."""
