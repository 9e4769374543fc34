"""Exception root of the `inference` package, grouped by what a caller can do about it."""


class InferenceError(Exception):
    """Root of every error raised by `inference`."""


class BaseModelError(InferenceError):
    """The base model could not be found, converted or loaded."""


# --- engine errors (inference/engine.py, scheduler.py, tiers.py) ---


class EngineError(InferenceError):
    """Root of errors raised by the engine while serving requests."""


class InvalidRequest(EngineError, ValueError):
    """The request is malformed or exceeds a configured limit; the caller must change it."""


class PromptTooLong(InvalidRequest):
    """The tokenized prompt does not fit in the engine's max_model_len."""


class UnknownAdapter(InvalidRequest):
    """The request names an adapter that is not registered with the engine."""


class EngineOverloaded(EngineError):
    """The waiting queue is full; retry later (back-pressure, never unbounded memory)."""


class RequestCancelled(EngineError):
    """The request was cancelled before it finished; `partial` holds what was generated."""

    def __init__(self, message: str, partial=None):
        super().__init__(message)
        self.partial = partial


class EngineStopped(EngineError):
    """The engine is not running (not started yet, or stopped while the request was pending)."""


class SlotsExhausted(EngineError):
    """Pinning would leave no GPU slot for unpinned adapters."""


# --- adapter and multi-LoRA layer errors (inference/adapters.py, lora.py) ---


class AdapterError(InferenceError):
    """Something is wrong with one adapter; the engine and other adapters are unaffected."""


class AdapterValidationError(AdapterError):
    """An adapter folder was refused before use. `reason` says why, in words fit for an operator."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LoraSlotError(InferenceError):
    """Misuse of the multi-LoRA slot bank (bad slot index, routing that does not fit the batch,
    weights for modules the bank was not built for). A programming error of the caller."""
