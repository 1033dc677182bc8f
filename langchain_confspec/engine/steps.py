"""One step of an answer, in each mode, and what it costs: the step writers a generation runs.

The draft writes a step and judges it, the gate decides, the target checks uncertain steps and
rewrites the ones it rejects (starting from the rejected step where that pays); token
speculation speeds up the target's own writing. Every step ends as a `StepRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, TypeVar

from langchain_confspec.config import FastPath, Mode, SpecConfig, TargetCheck
from langchain_confspec.engine.answer_text import AnswerText
from langchain_confspec.engine.constrained import (
    Constraint,
    write_json,
    write_json_checking,
)
from langchain_confspec.engine.decoding import (
    StopScanner,
    TokenChooser,
    WrittenStep,
    write_step_texts,
)
from langchain_confspec.engine.gate import GateAction, gate, target_accepts
from langchain_confspec.engine.outputs import TextDelta
from langchain_confspec.engine.remote_session import RemoteSession
from langchain_confspec.engine.speculation import DepthPolicy, speculative_step_texts
from langchain_confspec.engine.verification import VerdictReader, agrees, judge
from langchain_confspec.models.batching import BatchScheduler
from langchain_confspec.models.fast_path import FastPaths
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.prompting import OPEN_TAG
from langchain_confspec.models.remote import RemoteModel
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import (
    Decision,
    PhaseBatches,
    PhaseTimes,
    ServerWork,
    Span,
    StepRecord,
    TokenSpeculation,
    Writer,
)

T = TypeVar("T")


class StepBudget(NamedTuple):
    """How many tokens the next step may take, and whether filling them ends the answer."""

    tokens: int
    ends_answer: bool


class PhaseClock:
    """Accumulates wall time per phase for one step, less the time the caller spent between
    streamed pieces of text (`away`), and the mean size of the batches its passes ran in."""

    def __init__(self, batch_sizes: list[int]) -> None:
        self.times = PhaseTimes()
        self.away = 0.0
        self._batch_sizes = batch_sizes  # every pass of the generation, as its sessions log them
        self._batched: dict[str, list[int]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, away, passes = time.perf_counter(), self.away, len(self._batch_sizes)
        try:
            yield
        finally:
            spent = time.perf_counter() - start - (self.away - away)
            setattr(self.times, name, getattr(self.times, name) + spent)
            self._batched.setdefault(name, []).extend(self._batch_sizes[passes:])

    @property
    def batches(self) -> PhaseBatches:
        return PhaseBatches(**{name: sum(sizes) / len(sizes) for name, sizes in self._batched.items() if sizes})


class EngineParts(Protocol):
    """What a generation uses of its engine (`ConfSpecEngine`): the models, their windows,
    fast paths and scheduler, and how token speculation picks its depth."""

    draft: LoadedModel
    target: LoadedModel | RemoteModel
    local: dict[str, LoadedModel]
    context: dict[str, int]
    shared_vocabulary: bool
    fast_paths: FastPaths
    scheduler: BatchScheduler
    depth_policy: DepthPolicy
    depth_samples: list[tuple[float, bool]] | None

    def window(self, role: str, path: FastPath) -> tuple[int, str]: ...


def _retokenized(step: WrittenStep, receiver: LoadedModel | RemoteModel) -> list[int]:
    """A step's text in the receiver's vocabulary (the tokenizers differ)."""
    return receiver.tokenizer.encode(step.text, add_special_tokens=False)


class StepWriter:
    """How one step is written in each mode: the target alone, the draft alone, or speculation
    (the draft writes and judges, the gate decides, the target checks and rewrites). The
    state is the generation's (`Generation` derives from this); each step returns its record."""

    engine: EngineParts
    config: SpecConfig
    constraint: Constraint | None
    reasoning: bool  # writing the steps before a constrained object
    stream_text: bool
    draft: ModelSession | None
    target: ModelSession | RemoteSession | None
    draft_reader: VerdictReader | None
    target_reader: VerdictReader | None
    chooser: TokenChooser
    stops: StopScanner
    texts: dict[str, AnswerText]
    records: list[StepRecord]
    _server_mark: ServerWork

    @property
    def _opener(self) -> str:
        """What opens the constrained span while the steps before it are written, if the model
        decides where it starts."""
        return self.constraint.opened_by if self.reasoning and self.constraint is not None else ""

    @property
    def active_constraint(self) -> Constraint | None:
        """The constraint the next step is written under: none while the steps before the
        object are being written."""
        return None if self.reasoning else self.constraint

    def _write(
        self, session: ModelSession | RemoteSession, budget: StepBudget, seed: Sequence[int] = ()
    ) -> Generator[TextDelta, None, WrittenStep]:
        writer = Writer.DRAFT if session is self.draft else Writer.TARGET
        rules: dict[str, Any] = {
            "budget": budget.tokens,
            "delimiters": self.config.step_delimiters,
            "stops": self.stops,
            "answer": self.texts[writer.value],
            "final": budget.ends_answer,
            "stream": self.stream_text,
            "opener": self._opener,
        }
        if isinstance(session, RemoteSession):  # no constraint reaches a served model
            return (yield from self._deltas(session.write_step_texts(self.chooser, seed=seed, **rules), writer))
        constraint = self.active_constraint
        if constraint is not None:
            return write_json(session, self.chooser, constraint.plan, budget=budget.tokens)
        return (yield from self._deltas(write_step_texts(session, self.chooser, seed=seed, **rules), writer))

    def _write_as_target(
        self, budget: StepBudget, seed: list[int] | None = None
    ) -> Generator[TextDelta, None, tuple[WrittenStep, TokenSpeculation | None]]:
        """The target writes a step; with token speculation the draft proposes ahead of it and
        both sessions end holding the step. A `seed` (a rejected step both sessions end with,
        or only the target without token speculation) is checked first."""
        assert self.target is not None
        if not self.config.token_speculation or self.active_constraint is not None:
            return (yield from self._write(self.target, budget, seed or ())), None
        assert self.draft is not None
        texts = speculative_step_texts(
            self.target,
            self.draft,
            self.chooser,
            self.engine.depth_policy,
            budget=budget.tokens,
            delimiters=self.config.step_delimiters,
            stops=self.stops,
            answer=self.texts["target"],
            final=budget.ends_answer,
            stream=self.stream_text,
            samples=self.engine.depth_samples,
            seed=seed or (),
            fixed_depth=self.config.speculation_depth,
            opener=self._opener,
        )
        return (yield from self._deltas(texts, Writer.TARGET))

    def _deltas(self, texts: Generator[str, None, T], writer: Writer) -> Generator[TextDelta, None, T]:
        """A writer's settled text as `TextDelta`s of the step being written; returns what the
        writer returns. Draft text is provisional where a verdict on it is still to come."""
        provisional = writer is Writer.DRAFT and self.config.mode in (Mode.CONFSPEC, Mode.ALWAYS_VERIFY)
        while True:
            try:
                text = next(texts)
            except StopIteration as written:
                return written.value  # type: ignore[no-any-return]
            span = self.active_constraint.span if self.active_constraint is not None else Span.TEXT
            yield TextDelta(text, step=len(self.records), writer=writer, provisional=provisional, span=span)

    def target_only_step(self, budget: StepBudget, clock: PhaseClock) -> Generator[TextDelta, None, StepRecord]:
        with clock.phase("target_write"):
            step, speculation = yield from self._write_as_target(budget)
        return self._record(step, Writer.TARGET, Decision.UNVERIFIED, token_speculation=speculation)

    def draft_only_step(self, budget: StepBudget, clock: PhaseClock) -> Generator[TextDelta, None, StepRecord]:
        assert self.draft is not None
        with clock.phase("draft_write"):
            step = yield from self._write(self.draft, budget)
        return self._record(step, Writer.DRAFT, Decision.UNVERIFIED)

    def speculative_step(self, budget: StepBudget, clock: PhaseClock) -> Generator[TextDelta, None, StepRecord]:
        """Draft proposes; the gate (or, in always_verify, the target) decides its fate. A tool
        call is the target's own (`target_writes_tool_calls`): written under its constraint, or
        rewritten from the draft's step that holds it; so is a structured-output object
        (`target_writes_objects`)."""
        if self._span_is_the_targets():
            return self.target_span(budget, clock)
        draft, target = self.draft, self.target
        assert draft is not None and target is not None and self.target_reader is not None
        draft_start, target_start = len(draft), len(target)
        with clock.phase("draft_write"):
            draft.next_logits(keep=(draft_start,))  # so a rejection rewinds without re-reading
            proposal = yield from self._write(draft, budget)

        draft_verdict = None
        action = GateAction.ESCALATE
        call = self._free_call_for_target(proposal)
        if call:  # nobody judges it: the target writes it, checking the draft's first where it can
            action = GateAction.REJECT
        elif self.draft_reader is not None:
            with clock.phase("draft_verify"):
                draft_verdict = judge(draft, self.draft_reader, keep=(draft_start,))
            action = gate(draft_verdict, self.config)

        # Checking a step as a proposal (a seeded rewrite, agreement) is greedy, and a served
        # target must score prompt tokens for it.
        checkable = (
            self.chooser.greedy
            and self.active_constraint is None
            and (not isinstance(self.engine.target, RemoteModel) or self.engine.target.scores_proposals)
        )
        by_agreement = checkable and self.config.target_check is TargetCheck.AGREEMENT
        seeded = checkable and self.config.rewrite_from_rejected
        target_verdict = None
        escalated = action is GateAction.ESCALATE
        if escalated:
            self._hand_over(proposal, target)
            with clock.phase("target_verify"):
                if by_agreement:
                    accepted = agrees(target, target_start, proposal.end, target.loaded.eos_token_ids)
                elif isinstance(target, RemoteSession):
                    target_verdict = target.judge(self.target_reader)
                else:  # a seeded rewrite reads the step's logits from this pass: keep every length in it
                    keep = range(target_start, len(target) + 1) if seeded else (target_start,)
                    target_verdict = judge(target, self.target_reader, keep=keep)
            if target_verdict is not None:
                accepted = target_accepts(target_verdict, self.config)
        else:
            accepted = action is GateAction.ACCEPT

        verdicts = {
            "draft_verdict": draft_verdict.accepts if draft_verdict else None,
            "draft_confidence": draft_verdict.confidence if draft_verdict else None,
            "target_verdict": accepted if escalated else None,
            "target_confidence": target_verdict.confidence if target_verdict else None,
            "draft_verdict_mass": draft_verdict.mass if draft_verdict else None,
            "target_verdict_mass": target_verdict.mass if target_verdict else None,
            "escalated": escalated,
        }
        if accepted:
            if not escalated:
                self._hand_over(proposal, target)
            decision = Decision.ACCEPTED_BY_TARGET if escalated else Decision.ACCEPTED_BY_DRAFT
            return self._record(proposal, Writer.DRAFT, decision, **verdicts)

        seed: list[int] = []
        if seeded:  # both sessions end with the rejected step: the rewrite checks it first
            seed = list(proposal.ids) if self.engine.shared_vocabulary else _retokenized(proposal, target.loaded)
            if not escalated:
                target.append(seed)
            if not self.config.token_speculation:
                draft.truncate(draft_start)
        else:
            draft.truncate(draft_start)
            target.truncate(target_start)
        with clock.phase("target_write"):
            rewrite, speculation = yield from self._write_as_target(budget, seed)
        if speculation is None:  # with token speculation the draft already holds the step
            self._hand_over(rewrite, draft)
        decision = Decision.REJECTED_BY_TARGET if escalated else Decision.REJECTED_BY_DRAFT
        if call:
            decision = Decision.UNVERIFIED
        return self._record(
            rewrite,
            Writer.TARGET,
            decision,
            token_speculation=speculation,
            regenerated=True,
            rejected_text=proposal.text,
            rejected_tokens=len(proposal.ids),
            identical_rewrite=rewrite.text == proposal.text,
            rewrite_reused_tokens=rewrite.reused,
            **verdicts,
        )

    def _span_is_the_targets(self) -> bool:
        """Whether the constrained span about to be written is the target's to write."""
        constraint = self.active_constraint
        if constraint is None:
            return False
        if constraint.span is Span.TOOL_CALL:
            return self.config.target_writes_tool_calls
        return self.config.target_writes_objects

    def _free_call_for_target(self, proposal: WrittenStep) -> bool:
        """A draft step holding a tool call written without a constraint (a served target, a
        schema the constraint cannot enforce): the target's to write, like a constrained one."""
        return self.config.target_writes_tool_calls and self.constraint is None and OPEN_TAG in proposal.text

    def target_span(self, budget: StepBudget, clock: PhaseClock) -> StepRecord:
        """The target writes a tool call or an object under its constraint, and nobody judges
        it. Greedy, with a shared vocabulary, the draft writes it first and the target checks
        it as a proposal: the span is still the one the target writes alone, and one the
        target agrees with costs it one pass instead of one per chosen token."""
        draft, target, constraint = self.draft, self.target, self.active_constraint
        assert draft is not None and isinstance(target, ModelSession) and constraint is not None
        if not (self.chooser.greedy and self.engine.shared_vocabulary):
            with clock.phase("target_write"):
                call = write_json(target, self.chooser, constraint.plan, budget=budget.tokens)
            self._hand_over(call, draft)
            return self._record(call, Writer.TARGET, Decision.UNVERIFIED)
        draft_start = len(draft)
        with clock.phase("draft_write"):
            proposal = write_json(draft, self.chooser, constraint.plan, budget=budget.tokens)
        with clock.phase("target_write"):
            call = write_json_checking(target, self.chooser, constraint.plan, budget=budget.tokens, proposal=proposal.ids)
        if call.ids != proposal.ids:
            draft.truncate(draft_start)
            draft.append(call.ids)
        return self._record(call, Writer.TARGET, Decision.UNVERIFIED)

    def _hand_over(self, step: WrittenStep, receiver: ModelSession | RemoteSession) -> None:
        """Append a step written by the other model: as ids when the vocabularies match,
        else as its (whole-character) text re-tokenised by the receiver."""
        receiver.append(step.ids if self.engine.shared_vocabulary else _retokenized(step, receiver.loaded))

    def _record(self, step: WrittenStep, writer: Writer, decision: Decision, **details: Any) -> StepRecord:
        text = step.text
        if step.stop_at is not None:
            text = text[: max(step.stop_at, 0)]
        self.stops.advance(text)
        self.texts[writer.value].release(step.ids, text)
        if not self.engine.shared_vocabulary:
            reader = "draft" if writer is Writer.TARGET else "target"
            self.texts[reader].receive(_retokenized(step, getattr(self.engine, reader)), text)
        if self.active_constraint is not None:
            span = self.active_constraint.span
        else:
            span = Span.TOOL_CALL if OPEN_TAG in text else Span.TEXT
        return StepRecord(
            index=len(self.records),
            text=text,
            n_tokens=step.n_tokens,
            writer=writer,
            decision=decision,
            end=step.end,
            span=span,
            target_server=self._server_step(),
            **details,
        )

    def _server_step(self) -> ServerWork | None:
        """What a served target's server did since the last step's record."""
        if not isinstance(self.target, RemoteSession):
            return None
        now = self.target.server.work.model_copy()
        step, self._server_mark = now - self._server_mark, now
        return step
