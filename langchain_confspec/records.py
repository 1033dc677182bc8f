"""The audit trail: one `StepRecord` per reasoning step and one `RunSummary` per answer.

Records are plain pydantic models, JSON-serialisable with `model_dump(mode="json")`. They
are built after each step's decision (never per token) and travel unchanged to callback
events, the message's `response_metadata` and audit logs.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field, computed_field


class Writer(str, Enum):
    """The model whose tokens became the step's text."""

    DRAFT = "draft"
    TARGET = "target"


class Decision(str, Enum):
    """What happened to the step the draft proposed (or `unverified` when nobody judged it)."""

    ACCEPTED_BY_DRAFT = "accepted_by_draft"
    ACCEPTED_BY_TARGET = "accepted_by_target"
    REJECTED_BY_DRAFT = "rejected_by_draft"
    REJECTED_BY_TARGET = "rejected_by_target"
    UNVERIFIED = "unverified"


class StepEnd(str, Enum):
    """Why the writer stopped writing the step."""

    DELIMITER = "delimiter"
    EOS = "eos"
    STOP = "stop"
    LENGTH = "length"


class Span(str, Enum):
    """What kind of text the step is: free reasoning, or a span written under a JSON constraint."""

    TEXT = "text"
    TOOL_CALL = "tool_call"
    JSON = "json"


class Verdict(BaseModel):
    """A model's judgement of a step, read from its next-token distribution."""

    p_accept: float = Field(ge=0.0, le=1.0, description="Share of the verdict mass on the accepting answers.")
    mass: float = Field(default=1.0, ge=0.0, le=1.0, description="Probability the verdict tokens received at all.")

    @property
    def accepts(self) -> bool:
        return self.p_accept >= 0.5

    @property
    def confidence(self) -> float:
        """Probability of the likelier side, in [0.5, 1]."""
        return max(self.p_accept, 1.0 - self.p_accept)


class PhaseTimes(BaseModel):
    """Seconds spent in each phase of a step (or a run)."""

    draft_write: float = 0.0
    draft_verify: float = 0.0
    target_verify: float = 0.0
    target_write: float = 0.0

    def __add__(self, other: PhaseTimes) -> PhaseTimes:
        return PhaseTimes(**{k: getattr(self, k) + getattr(other, k) for k in PhaseTimes.model_fields})


class PhaseBatches(BaseModel):
    """Mean number of concurrent generations whose forward passes ran together, per phase
    (0 where a phase ran no pass over a static cache)."""

    draft_write: float = 0.0
    draft_verify: float = 0.0
    target_verify: float = 0.0
    target_write: float = 0.0


class TokenSpeculation(BaseModel):
    """What token-level speculation did while the target wrote one step."""

    proposed: int = Field(default=0, description="Draft tokens proposed to the target.")
    accepted: int = Field(default=0, description="Proposed tokens the target kept and the step used.")
    tokens: int = Field(default=0, description="Tokens these passes gave the step: kept proposals and the target's own.")
    target_passes: int = Field(default=0, description="Target forward passes while writing the step.")
    depths: list[int] = Field(default_factory=list, description="Proposal length of each pass.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_accepted_per_pass(self) -> float:
        """Tokens the step gained per target forward pass."""
        return self.tokens / self.target_passes if self.target_passes else 0.0


class StepRecord(BaseModel):
    """Who wrote one step, who verified it, with what confidence, at what cost."""

    index: int
    text: str
    n_tokens: int = Field(description="Tokens of `text`, in the writer's tokenizer.")
    writer: Writer
    decision: Decision
    end: StepEnd
    span: Span = Field(default=Span.TEXT, description="`tool_call` and `json` spans are written under a schema.")
    draft_verdict: bool | None = Field(default=None, description="True when the draft judged its step correct.")
    draft_confidence: float | None = None
    target_verdict: bool | None = None
    target_confidence: float | None = None
    draft_verdict_mass: float | None = Field(default=None, description="Probability the draft put on verdict tokens.")
    target_verdict_mass: float | None = Field(default=None, description="Probability the target put on verdict tokens.")
    escalated: bool = False
    regenerated: bool = False
    rejected_text: str | None = Field(default=None, description="The draft's step that the target rewrote.")
    rejected_tokens: int = 0
    identical_rewrite: bool = Field(
        default=False, description="A rewrite with the rejected step's very text: the rejection changed nothing."
    )
    rewrite_reused_tokens: int = Field(
        default=0, description="Leading tokens of a rewrite kept from the rejected step (checked in one pass, not decoded)."
    )
    token_speculation: TokenSpeculation | None = Field(
        default=None, description="Set on target-written steps when token-level speculation ran."
    )
    times: PhaseTimes = Field(default_factory=PhaseTimes)
    batch_sizes: PhaseBatches = Field(default_factory=PhaseBatches)
    target_server: ServerWork | None = Field(
        default=None, description="For a served target: what its server did for this step (verdict, rewrite, writing)."
    )


class ServerWork(BaseModel):
    """What the server of a served model reported doing, from its replies."""

    requests: int = 0
    prompt_tokens: int = Field(default=0, description="Prompt tokens the server evaluated.")
    cached_prompt_tokens: int = Field(default=0, description="Prompt tokens it reused from its prompt cache.")
    seconds: float = Field(default=0.0, description="Its own time: prompt processing and writing.")

    def __add__(self, other: ServerWork) -> ServerWork:
        return ServerWork(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            seconds=self.seconds + other.seconds,
        )

    def __sub__(self, earlier: ServerWork) -> ServerWork:
        return ServerWork(
            requests=self.requests - earlier.requests,
            prompt_tokens=self.prompt_tokens - earlier.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens - earlier.cached_prompt_tokens,
            seconds=self.seconds - earlier.seconds,
        )


class ModelCounters(BaseModel):
    """Work done by one model during a run."""

    prompt_tokens: int = 0
    tokens_written: int = 0
    forward_passes: int = 0
    forward_tokens: int = 0
    fast_path: str | None = Field(default=None, description="How its passes ran: off, static or graphs (None: unused).")
    warmup_seconds: float = Field(default=0.0, description="One-time warm-up this call paid (cache, compile, capture).")
    server: str | None = Field(default=None, description="For a served model: its serving engine and version.")
    server_work: ServerWork | None = Field(default=None, description="For a served model: what its server reported doing.")


class RunSummary(BaseModel):
    """Totals over one answer."""

    mode: str
    finish_reason: str
    n_steps: int
    steps_by_decision: dict[str, int]
    draft_steps_proposed: int = Field(
        description="Draft steps put to the gate; tool calls the target writes itself, even from a draft's step, are not."
    )
    identical_rewrites: int = Field(default=0, description="Rewritten steps whose new text equals the rejected one.")
    draft_acceptance_rate: float | None = Field(
        description="Share of draft-proposed steps kept, on the draft's own verdict or the target's (kept / proposed)."
    )
    escalation_rate: float | None = Field(description="Share of draft-proposed steps sent to the target.")
    draft: ModelCounters
    target: ModelCounters
    times: PhaseTimes
    wall_time: float
    lock_wait: float = Field(description="Seconds this call waited for a slot (at most max_batch calls run at once).")
    mean_batch_size: float = Field(
        default=0.0, description="Mean number of calls whose forward passes ran together with this one's (static caches)."
    )
    warmup_time: float = Field(
        default=0.0, description="Seconds of `wall_time` spent on one-time fast-path warm-up (0 once warm)."
    )


def summarize(
    records: list[StepRecord],
    *,
    mode: str,
    finish_reason: str,
    draft: ModelCounters,
    target: ModelCounters,
    wall_time: float,
    lock_wait: float,
    batch_sizes: list[int] | None = None,
) -> RunSummary:
    """Aggregate step records and model counters into the run's summary."""
    by_decision = {d.value: 0 for d in Decision}
    for record in records:
        by_decision[record.decision.value] += 1
    proposed = len(records) - by_decision[Decision.UNVERIFIED.value]
    kept = by_decision[Decision.ACCEPTED_BY_DRAFT.value] + by_decision[Decision.ACCEPTED_BY_TARGET.value]
    escalated = sum(r.escalated for r in records)
    times = sum((r.times for r in records), PhaseTimes())
    return RunSummary(
        mode=mode,
        finish_reason=finish_reason,
        n_steps=len(records),
        steps_by_decision=by_decision,
        draft_steps_proposed=proposed,
        identical_rewrites=sum(r.identical_rewrite for r in records),
        draft_acceptance_rate=kept / proposed if proposed else None,
        escalation_rate=escalated / proposed if proposed else None,
        draft=draft,
        target=target,
        times=times,
        wall_time=wall_time,
        lock_wait=lock_wait,
        warmup_time=draft.warmup_seconds + target.warmup_seconds,
        mean_batch_size=sum(batch_sizes) / len(batch_sizes) if batch_sizes else 0.0,
    )
