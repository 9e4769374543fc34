"""Exception root of the `node` package, grouped by what a caller can do about it."""


class NodeError(Exception):
    """Root of every error raised by `node`."""


class ConfigError(NodeError):
    """The configuration is invalid; the message says which option and why."""
