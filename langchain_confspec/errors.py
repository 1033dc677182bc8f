"""Error types raised by langchain-confspec.

Every error a caller can cause (bad settings, bad messages, a model that cannot be
loaded, a prompt that does not fit) is one of these, so chains can catch them by type
instead of parsing torch or transformers tracebacks.
"""

from __future__ import annotations


class ConfSpecError(Exception):
    """Base class of every error raised by this package."""


class ConfigurationError(ConfSpecError, ValueError):
    """A setting is impossible (a threshold out of range, an empty delimiter, ...)."""


class InvalidMessagesError(ConfSpecError, ValueError):
    """The message list cannot be turned into a prompt (empty, unknown message type)."""


class ModelLoadError(ConfSpecError, OSError):
    """A draft or target model or tokenizer could not be loaded from its id or path."""


class TokenizerMismatchError(ConfSpecError, ValueError):
    """A tokenizer does not fit the model it was paired with."""


class ContextLengthError(ConfSpecError, ValueError):
    """The prompt leaves no room to generate within a model's context window."""


class UnsupportedSchemaError(ConfigurationError):
    """A JSON schema (tool parameters, structured output) that constrained decoding cannot enforce."""


class GenerationError(ConfSpecError, RuntimeError):
    """A model failed while answering (an exception inside a forward pass). The call's caches
    are dropped with it; the next call starts clean."""


class RemoteModelError(GenerationError):
    """A model served over HTTP failed to answer: the server was down, too slow, refused the
    request or sent a reply that cannot be read. The message names the server and what came
    back; the call leaves nothing behind for the next one."""


class ModelOutOfMemoryError(GenerationError):
    """A model ran out of memory while answering: shorten `max_tokens` or the prompt, use a
    smaller dtype, or spread the model over more devices (`device_map`)."""


class DeviceContextLostError(GenerationError):
    """A device-side assert or another sticky CUDA error broke the process's CUDA context:
    every later CUDA call in this process fails, so the engine refuses every later call with
    this error. Restart the process."""


STICKY_CUDA_ERRORS = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "cudaErrorLaunchFailure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "the launch timed out",
    "uncorrectable ECC error",
)
"""Phrases of CUDA errors after which the context cannot be used again (they are not cleared)."""


def is_sticky_cuda_error(error: BaseException) -> bool:
    """Whether `error` is one of the CUDA errors that poison the whole context."""
    text = str(error)
    return any(phrase in text for phrase in STICKY_CUDA_ERRORS)
