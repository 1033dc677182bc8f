"""langchain-confspec: step-level speculative reasoning with confidence-gated verification.

A small draft model writes and judges each reasoning step; a large target model checks
only the steps the draft is unsure of and rewrites the ones it rejects. Every step leaves
an audit record.
"""

from langchain_confspec.callbacks import STEP_EVENT, SUMMARY_EVENT
from langchain_confspec.chat_model import ChatConfSpec, ConfSpecChatModel
from langchain_confspec.config import Mode, SpecConfig, VerificationStyle
from langchain_confspec.engine import ConfSpecEngine, RunResult
from langchain_confspec.errors import (
    ConfigurationError,
    ConfSpecError,
    ContextLengthError,
    InvalidMessagesError,
    ModelLoadError,
    TokenizerMismatchError,
)
from langchain_confspec.loading import LoadedModel, load_model, wrap_model
from langchain_confspec.records import (
    Decision,
    PhaseTimes,
    RunSummary,
    StepEnd,
    StepRecord,
    Writer,
)

__all__ = [
    "STEP_EVENT",
    "SUMMARY_EVENT",
    "ChatConfSpec",
    "ConfSpecChatModel",
    "ConfSpecEngine",
    "ConfSpecError",
    "ConfigurationError",
    "ContextLengthError",
    "Decision",
    "InvalidMessagesError",
    "LoadedModel",
    "Mode",
    "ModelLoadError",
    "PhaseTimes",
    "RunResult",
    "RunSummary",
    "SpecConfig",
    "StepEnd",
    "StepRecord",
    "TokenizerMismatchError",
    "VerificationStyle",
    "Writer",
    "load_model",
    "wrap_model",
]
