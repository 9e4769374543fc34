"""Exception root of the `inference` package, grouped by what a caller can do about it."""


class InferenceError(Exception):
    """Root of every error raised by `inference`."""


class BaseModelError(InferenceError):
    """The base model could not be found, converted or loaded."""
