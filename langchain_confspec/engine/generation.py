"""One generation: the step loop of one answer, in one slot of its engine.

A `Generation` opens a session per model in its slot's cache row, then writes the answer
step by step as its mode says (the target alone, the draft alone, or speculation: the draft
writes and judges, the gate decides, the target checks and rewrites), yielding each step's
record and, when streaming, its text as it settles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, TypeVar

from langchain_confspec.config import FastPath, Mode, SpecConfig
from langchain_confspec.engine.answer_text import AnswerText
from langchain_confspec.engine.constrained import Constraint, write_json
from langchain_confspec.engine.decoding import (
    StopScanner,
    TokenChooser,
    WrittenStep,
    write_step_texts,
)
from langchain_confspec.engine.gate import GateAction, gate, target_accepts
from langchain_confspec.engine.outputs import RunResult, TextDelta
from langchain_confspec.engine.remote_session import RemoteSession
from langchain_confspec.engine.speculation import DepthPolicy, speculative_step_texts
from langchain_confspec.engine.verification import VerdictReader, judge
from langchain_confspec.errors import (
    ConfigurationError,
    ContextLengthError,
)
from langchain_confspec.models.batching import BatchScheduler
from langchain_confspec.models.fast_path import FastPaths, ModelPath
from langchain_confspec.models.loading import (
    LoadedModel,
)
from langchain_confspec.models.prompting import OPEN_TAG
from langchain_confspec.models.remote import RemoteModel
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import (
    Decision,
    ModelCounters,
    PhaseBatches,
    PhaseTimes,
    ServerWork,
    Span,
    StepEnd,
    StepRecord,
    TokenSpeculation,
    Writer,
    summarize,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


class StepBudget(NamedTuple):
    """How many tokens the next step may take, and whether filling them ends the answer."""

    tokens: int
    ends_answer: bool


def _retokenized(step: WrittenStep, receiver: LoadedModel | RemoteModel) -> list[int]:
    """A step's text in the receiver's vocabulary (the tokenizers differ)."""
    return receiver.tokenizer.encode(step.text, add_special_tokens=False)


def _check_remote_request(target: RemoteModel, config: SpecConfig, constraint: Constraint | None) -> None:
    """Refuse what a served target cannot do, naming the server."""
    where = f"the {target.engine} server at {target.base_url}"
    if config.token_speculation and not target.scores_proposals:
        raise ConfigurationError(
            f"token_speculation needs the target to score proposed tokens, which {where} cannot do; turn it off "
            "(or let the server speculate itself: llama-server -md DRAFT), or serve the target with vLLM or SGLang."
        )
    if config.token_speculation and config.temperature != 0.0:
        raise ConfigurationError(
            f"Sampled token speculation needs the target's whole next-token distribution, which {where} does not "
            "return; use temperature=0 or turn token_speculation off."
        )
    if config.token_speculation and config.speculation_depth is not None:
        raise ConfigurationError(
            f"speculation_depth runs its rounds on a local target's device, not on {where}; leave it unset."
        )
    if constraint is not None:
        raise ConfigurationError(
            f"Structured output and forced tool calls are written under a constraint that {where} "
            "cannot apply here; use a local target for them."
        )


class _PhaseClock:
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


class Generation:
    """The state of one answer: both sessions, the text so far, the records."""

    def __init__(
        self,
        engine: EngineParts,
        turns: list[dict[str, Any]],
        config: SpecConfig,
        tools: list[dict[str, Any]] | None,
        constraint: Constraint | None,
        stream_text: bool = False,
        *,
        busy: bool = False,
    ) -> None:
        self.engine = engine
        self.stream_text = stream_text
        self.config = config
        if isinstance(engine.target, RemoteModel) and constraint is not None and constraint.opened_by:
            constraint = None  # a served target writes its tool calls freely; they are checked after
        self.constraint = constraint
        self.reasoning = constraint is not None and constraint.after_reasoning  # steps before the object
        if config.token_speculation and not engine.shared_vocabulary:
            raise ConfigurationError(
                "token_speculation needs draft and target to share a vocabulary; these two tokenizers differ."
            )
        self.remote = isinstance(engine.target, RemoteModel)
        if self.remote:
            _check_remote_request(engine.target, config, constraint)
        uses_draft = config.mode is not Mode.TARGET_ONLY or config.token_speculation
        uses_target = config.mode is not Mode.DRAFT_ONLY
        self._used = [role for role, used in (("draft", uses_draft), ("target", uses_target)) if used]
        self._paths = {  # the local models' paths; a served target has none
            role: engine.fast_paths.resolve(config.fast_path, role, busy=busy) for role in self._used if role in engine.local
        }
        self._prompts: dict[str, list[int]] = {}  # every model whose window holds the prompt
        for role in ("draft", "target"):
            try:
                self._prompts[role] = self._prompt(role, turns, tools)
            except ContextLengthError:
                if role in self._used:
                    raise
        self._reserve = {  # room kept for a verification suffix in every mode: one budget rule
            role: len(getattr(engine, role).tokenizer.encode(config.verification_suffix, add_special_tokens=False))
            for role in self._prompts
        }
        self._warmup: dict[str, float] = {}
        self.batch_sizes: list[int] = []  # the batch size of every static-cache pass, in order
        self.draft: ModelSession | None = None
        self.target: ModelSession | RemoteSession | None = None
        steps_are_judged = config.mode in (Mode.CONFSPEC, Mode.ALWAYS_VERIFY)
        self.draft_reader = VerdictReader(engine.draft.tokenizer, config, role="draft") if config.mode is Mode.CONFSPEC else None
        self.target_reader = VerdictReader(engine.target.tokenizer, config, role="target") if steps_are_judged else None
        self.chooser = TokenChooser(config)
        self.stops = StopScanner(config.stop)
        draft_text = AnswerText(engine.draft.tokenizer)  # the answer's text as each vocabulary reads it
        self.texts = {"draft": draft_text, "target": draft_text if engine.shared_vocabulary else AnswerText(engine.target.tokenizer)}
        self.records: list[StepRecord] = []
        self._server_mark = ServerWork()  # a served target's work when the last step was recorded
        self.tokens_used = 0
        self.finish_reason: str | None = None
        self._write_step: Callable[[StepBudget, _PhaseClock], Generator[TextDelta, None, StepRecord]] = {
            Mode.TARGET_ONLY: self._target_only_step,
            Mode.DRAFT_ONLY: self._draft_only_step,
            Mode.CONFSPEC: self._speculative_step,
            Mode.ALWAYS_VERIFY: self._speculative_step,
        }[config.mode]

    def _window(self, role: str) -> tuple[int, str]:
        """`role`'s context on the path this call takes, and what set it."""
        path = self._paths.get(role)
        return self.engine.window(role, path.path if path is not None else FastPath.OFF)

    def _prompt(self, role: str, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        loaded: LoadedModel = getattr(self.engine, role)
        prompt = loaded.render_prompt(turns, tools)
        window, limit = self._window(role)
        whole = self.engine.context[role]
        if len(prompt) + self.config.max_tokens > window < whole and self.config.fast_path is FastPath.AUTO:
            # A static row would cut this call short, the model's window would not: `auto` takes `off`.
            self._paths[role] = ModelPath(FastPath.OFF, f"prompt and max_tokens do not fit the {limit}")
            window, limit = self._window(role)
        if len(prompt) >= window:
            raise ContextLengthError(
                f"The prompt is {len(prompt)} tokens long for the {role} model, whose {limit} "
                f"is {window} tokens: no room is left to answer."
            )
        return prompt

    def paths_ready(self) -> bool:
        return all(self.engine.fast_paths.ready(role, path.path) for role, path in self._paths.items())

    def prepare_paths(self) -> None:
        """Allocate static caches and capture graphs this call is the first to need (while no
        other generation runs); the seconds go into this call's summary."""
        for role in self._paths:
            fallback = self.config.fast_path is FastPath.AUTO
            path, seconds = self.engine.fast_paths.prepare(role, self._paths[role].path, fallback=fallback)
            self._paths[role] = ModelPath(path, self._paths[role].reason)
            self._warmup[role] = seconds

    def open_sessions(self, row: int) -> None:
        """Open each model's session on its prepared path, in cache row `row` (this call's slot)."""
        if self.remote and "target" in self._used:
            assert isinstance(self.engine.target, RemoteModel)
            self.target = RemoteSession(self.engine.target, self._prompts["target"], context_length=self._window("target")[0])
        for role, path in self._paths.items():
            if path.reason:
                logger.debug("%s model on fast_path=%r: %s", role, path.path.value, path.reason)
            kv = self.engine.fast_paths.kv(role, path.path, row=row, scheduler=self.engine.scheduler, batch_sizes=self.batch_sizes)
            session = ModelSession(
                getattr(self.engine, role),
                self._prompts[role],
                kv=kv,
                context_length=self._window(role)[0],
                fast_path=path.path.value,
                warmup_seconds=self._warmup.get(role, 0.0),
            )
            setattr(self, role, session)

    def steps(self) -> Iterator[StepRecord | TextDelta]:
        while self.finish_reason is None:
            budget = self._step_budget()
            if budget.tokens <= 0:
                self.finish_reason = "length"
                break
            clock = _PhaseClock(self.batch_sizes)
            writing = self._write_step(budget, clock)
            while True:
                try:
                    delta = next(writing)
                except StopIteration as written:
                    record: StepRecord = written.value
                    break
                left = time.perf_counter()
                yield delta
                clock.away += time.perf_counter() - left
            record.times, record.batch_sizes = clock.times, clock.batches
            self.records.append(record)
            self.tokens_used += record.n_tokens
            logger.debug(
                "step %d: %s by the %s (draft confidence %s, escalated %s): %r",
                record.index, record.decision.value, record.writer.value, record.draft_confidence, record.escalated,
                record.text,
            )
            if self._opener and record.end is StepEnd.DELIMITER and record.text.endswith(self._opener):
                self.reasoning = False  # the model opened the span: its plan writes the rest
            elif self.reasoning and not self._opener and (record.end in (StepEnd.EOS, StepEnd.STOP) or self._reasoning_room() <= 0):
                self._end_reasoning()
            elif record.end in (StepEnd.EOS, StepEnd.STOP):
                self.finish_reason = "stop"
            elif self.tokens_used >= self.config.max_tokens:
                self.finish_reason = "length"
            yield record

    def result(self, *, wall_time: float, lock_wait: float) -> RunResult:
        text = "".join(r.text for r in self.records)
        cut = StopScanner(self.config.stop).find(text)  # a stop string spanning two steps
        if cut is not None:
            text = text[:cut]
        summary = summarize(
            self.records,
            mode=self.config.mode.value,
            finish_reason=self.finish_reason or "stop",
            draft=self.draft.counters() if self.draft else ModelCounters(),
            target=self.target.counters() if self.target else ModelCounters(),
            wall_time=wall_time,
            lock_wait=lock_wait,
            batch_sizes=self.batch_sizes,
        )
        return RunResult(text=text, records=self.records, summary=summary)

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

    def _end_reasoning(self) -> None:
        """Start the constrained object on a new step after the reasoning, in every model's
        context (the reasoning's end-of-sequence token never entered it)."""
        self.reasoning = False
        separator = self.config.step_delimiters[0]  # the config holds at least one
        for role in self._used:
            session: ModelSession | None = getattr(self, role)
            if session is not None:
                session.append(session.loaded.tokenizer.encode(separator, add_special_tokens=False))

    def _reasoning_room(self) -> int:
        """Tokens the reasoning may still use: half the answer's budget, the object has the rest."""
        return self.config.max_tokens // 2 - self.tokens_used

    # -- budgets -------------------------------------------------------------------------

    def _step_budget(self) -> StepBudget:
        """Tokens the next step may use, by one rule for every mode: the answer's budget, each
        model's room with a verification suffix to spare (estimated for a model this mode does
        not use), and the step cap (not for a constrained span, which is the whole answer). A
        step that fills a limit other than the step cap ends the answer."""
        limits = [self.config.max_tokens - self.tokens_used]
        for role, prompt in self._prompts.items():
            session: ModelSession | None = getattr(self, role)
            room = session.room if session is not None else self._window(role)[0] - len(prompt) - self.tokens_used
            limits.append(room - self._reserve[role])
        if self.reasoning and not self._opener:
            limits.append(self._reasoning_room())
        answer_limit = min(limits)
        if self.active_constraint is not None:
            return StepBudget(answer_limit, ends_answer=True)
        return StepBudget(min(answer_limit, self.config.max_step_tokens), ends_answer=answer_limit <= self.config.max_step_tokens)

    # -- one step per mode ---------------------------------------------------------------

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

    def _target_only_step(self, budget: StepBudget, clock: _PhaseClock) -> Generator[TextDelta, None, StepRecord]:
        with clock.phase("target_write"):
            step, speculation = yield from self._write_as_target(budget)
        return self._record(step, Writer.TARGET, Decision.UNVERIFIED, token_speculation=speculation)

    def _draft_only_step(self, budget: StepBudget, clock: _PhaseClock) -> Generator[TextDelta, None, StepRecord]:
        assert self.draft is not None
        with clock.phase("draft_write"):
            step = yield from self._write(self.draft, budget)
        return self._record(step, Writer.DRAFT, Decision.UNVERIFIED)

    def _speculative_step(self, budget: StepBudget, clock: _PhaseClock) -> Generator[TextDelta, None, StepRecord]:
        """Draft proposes; the gate (or, in always_verify, the target) decides its fate."""
        draft, target = self.draft, self.target
        assert draft is not None and target is not None and self.target_reader is not None
        draft_start, target_start = len(draft), len(target)
        with clock.phase("draft_write"):
            draft.next_logits(keep=(draft_start,))  # so a rejection rewinds without re-reading
            proposal = yield from self._write(draft, budget)

        draft_verdict = None
        action = GateAction.ESCALATE
        if self.draft_reader is not None:
            with clock.phase("draft_verify"):
                draft_verdict = judge(draft, self.draft_reader, keep=(draft_start,))
            action = gate(draft_verdict, self.config)

        target_verdict = None
        # A served target that cannot score a rejected step as a proposal rewrites from scratch.
        seeded = (
            self.config.rewrite_from_rejected
            and self.chooser.greedy
            and self.active_constraint is None
            and (not isinstance(self.engine.target, RemoteModel) or self.engine.target.scores_proposals)
        )
        if action is GateAction.ESCALATE:
            self._hand_over(proposal, target)
            # A seeded rewrite reads the step's logits from this pass: keep every length in it.
            keep = range(target_start, len(target) + 1) if seeded else (target_start,)
            with clock.phase("target_verify"):
                if isinstance(target, RemoteSession):
                    target_verdict = target.judge(self.target_reader)
                else:
                    target_verdict = judge(target, self.target_reader, keep=keep)
            accepted = target_accepts(target_verdict, self.config)
        else:
            accepted = action is GateAction.ACCEPT

        escalated = target_verdict is not None
        verdicts = {
            "draft_verdict": draft_verdict.accepts if draft_verdict else None,
            "draft_confidence": draft_verdict.confidence if draft_verdict else None,
            "target_verdict": target_accepts(target_verdict, self.config) if target_verdict else None,
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
