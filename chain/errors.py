"""Exception root of the `chain` package, grouped by what a caller can do about it."""


class ChainError(Exception):
    """Root of every error raised by `chain`."""


class DevChainError(ChainError):
    """The local development chain (anvil) could not be started or reached."""


class ArtifactError(ChainError):
    """A contract artifact (ABI/bytecode) is missing or unreadable: run `make build`."""


class DeployError(ChainError):
    """Deploying the contract set failed (a transaction reverted, or an address was not as predicted)."""


class ContractRevert(ChainError):
    """A contract call or transaction reverted.

    `name` is the custom error's name (e.g. "UsageEscrowUnauthorizedSigner"), or "Error"/"Panic"
    for require strings and panics, or "Unknown" when the revert data matches no known error
    (then `data` holds the raw bytes). `args` are the error's decoded values, in ABI order.
    """

    def __init__(self, name: str, args: tuple = (), data: bytes = b"", message: str | None = None):
        super().__init__(message or f"{name}{tuple(args)!r}")
        self.name = name
        self.message = message or f"{name}{tuple(args)!r}"
        self.args = tuple(args)  # replaces Exception.args: the decoded error values
        self.data = data

    def __str__(self) -> str:
        return self.message
