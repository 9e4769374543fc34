"""The node's OpenAI-compatible HTTP API (aiohttp). Build it with `init_app(config, ...)`.

`init_app` is imported lazily: `node.daemon.payments.gate` uses `node.api.errors`, and the app imports payments.
"""

__all__ = ["init_app"]


def __getattr__(name: str):
    if name == "init_app":
        from node.api.app import init_app

        return init_app
    raise AttributeError(name)
