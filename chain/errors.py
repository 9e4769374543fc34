"""Exception root of the `chain` package, grouped by what a caller can do about it."""


class ChainError(Exception):
    """Root of every error raised by `chain`."""


class DevChainError(ChainError):
    """The local development chain (anvil) could not be started or reached."""


class ArtifactError(ChainError):
    """A contract artifact (ABI/bytecode) is missing or unreadable: run `make build`."""
