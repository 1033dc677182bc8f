"""The engine's settings, validated once.

`SpecConfig` is the single configuration tree of the engine. The chat model builds one
from its fields at construction (so an impossible setting fails there, naming itself) and
again for each call that overrides a setting.
"""

from __future__ import annotations

import math
from enum import Enum

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_confspec.errors import ConfigurationError


class Mode(str, Enum):
    """How steps are written and checked."""

    CONFSPEC = "confspec"
    """Draft writes and judges; confident verdicts stand, uncertain ones go to the target."""
    TARGET_ONLY = "target_only"
    """Plain target decoding: the reference output."""
    DRAFT_ONLY = "draft_only"
    """Plain draft decoding, never checked."""
    ALWAYS_VERIFY = "always_verify"
    """SpecReason-style: the target judges every draft step."""


class FastPath(str, Enum):
    """How forward passes run: over per-call dynamic caches, or a model's preallocated static one."""

    AUTO = "auto"
    """`graphs` on CUDA; on the CPU, the faster of the other two there (`off`, docs/performance.md)."""
    OFF = "off"
    """A fresh `DynamicCache` per call, cropped on rollback: works with every model."""
    STATIC = "static"
    """The model's static KV cache, rolled back by position, with eager modules: any device."""
    GRAPHS = "graphs"
    """The static cache with the decode step compiled and every short pass replayed as a CUDA graph."""


class VerificationStyle(str, Enum):
    """The verdict a verification prompt asks for."""

    BINARY = "binary"
    """A Yes/No answer: confidence is the probability of the likelier word."""
    SCORE = "score"
    """A 0-9 score: the step passes when the score reaches `score_pass_mark`."""


class TargetCheck(str, Enum):
    """How the target checks a step the draft was unsure of."""

    VERDICT = "verdict"
    """Its own verdict on the step (the verification suffix), against `target_accept_threshold`."""
    AGREEMENT = "agreement"
    """The step stands only if the target would write it itself, greedy: one pass checks it as
    a token-level proposal, and the target rewrites it from where it departs. Escalated steps
    then read exactly as the target's own."""


DEFAULT_BINARY_PROMPT = "\n\nIs the last step above correct? Answer Yes or No.\nAnswer:"
DEFAULT_SCORE_PROMPT = "\n\nRate the last step above from 0 (wrong) to 9 (certainly correct).\nScore:"


class SpecConfig(BaseModel):
    """Every knob of one generation. Thresholds above 1 switch a path off entirely."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    mode: Mode = Mode.CONFSPEC
    step_delimiters: tuple[str, ...] = ("\n\n",)
    max_step_tokens: int = Field(default=128, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    stop: tuple[str, ...] = ()
    verification: VerificationStyle = VerificationStyle.BINARY
    verification_prompt: str | None = None
    score_pass_mark: int = Field(default=7, ge=1, le=9)
    accept_threshold: float = 0.8
    reject_threshold: float = 0.9
    target_accept_threshold: float = 0.5
    verdict_mass_floor: float = Field(default=0.5, ge=0.0, le=1.0)
    target_check: TargetCheck = TargetCheck.VERDICT
    token_speculation: bool = False
    speculation_depth: int | None = Field(default=None, ge=1, le=64)
    rewrite_from_rejected: bool = True
    target_writes_tool_calls: bool = True
    target_writes_objects: bool = True
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator takes
    fast_path: FastPath = FastPath.AUTO

    @field_validator("accept_threshold", "reject_threshold", "target_accept_threshold")
    @classmethod
    def _threshold_is_a_probability_or_off(cls, value: float) -> float:
        if math.isnan(value) or value < 0.0:
            raise ValueError("must be a probability in [0, 1] (or above 1 to disable it)")
        return value

    @field_validator("step_delimiters", "stop")
    @classmethod
    def _no_empty_strings(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("must not contain an empty string")
        return value

    @field_validator("step_delimiters")
    @classmethod
    def _at_least_one_delimiter(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one delimiter")
        return value

    @field_validator("verification_prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _agreement_is_greedy(self) -> SpecConfig:
        if self.target_check is TargetCheck.AGREEMENT and self.temperature != 0.0:
            raise ValueError(
                "target_check='agreement' compares a step with the target's greedy choices, so it needs "
                "temperature=0; use target_check='verdict' to sample"
            )
        return self

    @property
    def verification_suffix(self) -> str:
        if self.verification_prompt is not None:
            return self.verification_prompt
        if self.verification is VerificationStyle.SCORE:
            return DEFAULT_SCORE_PROMPT
        return DEFAULT_BINARY_PROMPT


def build_config(**settings: object) -> SpecConfig:
    """Validate settings into a `SpecConfig`, raising `ConfigurationError` that names each bad one.

    `None` means "the default", so callers can pass optional fields straight through.
    """
    cleaned = {k: v for k, v in settings.items() if v is not None}
    for key in ("step_delimiters", "stop"):
        if isinstance(cleaned.get(key), str):
            cleaned[key] = (cleaned[key],)
    try:
        return SpecConfig(**cleaned)
    except ValidationError as exc:
        raise settings_error(exc) from None


def settings_error(exc: ValidationError) -> ConfigurationError:
    """A `ConfigurationError` naming every setting that pydantic refused, and why."""
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors())
    return ConfigurationError(f"Invalid ConfSpec settings: {problems}")
