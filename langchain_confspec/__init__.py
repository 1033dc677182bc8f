"""langchain-confspec: step-level speculative reasoning with confidence-gated verification.

A small draft model writes and judges each reasoning step; a large target model checks
only the steps the draft is unsure of and rewrites the ones it rejects. Every step leaves
an audit record.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from langchain_confspec.config import (
    FastPath,
    Mode,
    SpecConfig,
    TargetCheck,
    VerificationStyle,
)
from langchain_confspec.errors import (
    ConfigurationError,
    ConfSpecError,
    ContextLengthError,
    DeviceContextLostError,
    GenerationError,
    InvalidMessagesError,
    ModelLoadError,
    ModelOutOfMemoryError,
    RemoteModelError,
    TokenizerMismatchError,
    UnsupportedSchemaError,
)
from langchain_confspec.records import (
    Decision,
    PhaseTimes,
    RunSummary,
    Span,
    StepEnd,
    StepRecord,
    Writer,
)

# What needs torch, transformers or LangChain is imported on first use (PEP 562), so that
# `import langchain_confspec` and `confspec --help` do not wait for them.
_LAZY = {
    "AuditEntry": "langchain_confspec.audit.log",
    "ConfSpecAuditHandler": "langchain_confspec.audit.log",
    "read_audit_log": "langchain_confspec.audit.log",
    "STEP_EVENT": "langchain_confspec.chat_model.callbacks",
    "SUMMARY_EVENT": "langchain_confspec.chat_model.callbacks",
    "ChatConfSpec": "langchain_confspec.chat_model.model",
    "ConfSpecChatModel": "langchain_confspec.chat_model.model",
    "ConfSpecEngine": "langchain_confspec.engine.engine",
    "RunResult": "langchain_confspec.engine.outputs",
    "CudaGraphCapture": "langchain_confspec.models.cuda_graphs",
    "LoadedModel": "langchain_confspec.models.loading",
    "load_model": "langchain_confspec.models.loading",
    "wrap_model": "langchain_confspec.models.loading",
    "RemoteModel": "langchain_confspec.models.remote",
    "WarmupReport": "langchain_confspec.models.static_runner",
}

if TYPE_CHECKING:
    from langchain_confspec.audit.log import (
        AuditEntry,
        ConfSpecAuditHandler,
        read_audit_log,
    )
    from langchain_confspec.chat_model.callbacks import STEP_EVENT, SUMMARY_EVENT
    from langchain_confspec.chat_model.model import ChatConfSpec, ConfSpecChatModel
    from langchain_confspec.engine.engine import ConfSpecEngine
    from langchain_confspec.engine.outputs import RunResult
    from langchain_confspec.models.cuda_graphs import CudaGraphCapture
    from langchain_confspec.models.loading import LoadedModel, load_model, wrap_model
    from langchain_confspec.models.remote import RemoteModel
    from langchain_confspec.models.static_runner import WarmupReport


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'langchain_confspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# Library convention: log through per-module loggers, print nothing unless the application
# configures logging (e.g. logging.basicConfig(level=logging.DEBUG) shows every step).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "STEP_EVENT",
    "SUMMARY_EVENT",
    "AuditEntry",
    "ChatConfSpec",
    "ConfSpecAuditHandler",
    "ConfSpecChatModel",
    "ConfSpecEngine",
    "ConfSpecError",
    "ConfigurationError",
    "ContextLengthError",
    "CudaGraphCapture",
    "Decision",
    "DeviceContextLostError",
    "FastPath",
    "GenerationError",
    "InvalidMessagesError",
    "LoadedModel",
    "Mode",
    "ModelLoadError",
    "ModelOutOfMemoryError",
    "PhaseTimes",
    "RemoteModel",
    "RemoteModelError",
    "RunResult",
    "RunSummary",
    "Span",
    "SpecConfig",
    "StepEnd",
    "StepRecord",
    "TargetCheck",
    "TokenizerMismatchError",
    "UnsupportedSchemaError",
    "VerificationStyle",
    "WarmupReport",
    "Writer",
    "load_model",
    "read_audit_log",
    "wrap_model",
]
