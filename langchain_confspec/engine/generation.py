"""One generation: the step loop of one answer, in one slot of its engine.

A `Generation` opens a session per model in its slot's cache row, then writes the answer
step by step as its mode says (the target alone, the draft alone, or speculation: the draft
writes and judges, the gate decides, the target checks and rewrites), yielding each step's
record and, when streaming, its text as it settles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from langchain_confspec.config import FastPath, Mode, SpecConfig, TargetCheck
from langchain_confspec.engine.answer_text import AnswerText
from langchain_confspec.engine.constrained import Constraint
from langchain_confspec.engine.decoding import StopScanner, TokenChooser
from langchain_confspec.engine.outputs import RunResult, TextDelta
from langchain_confspec.engine.remote_session import RemoteSession
from langchain_confspec.engine.steps import (
    EngineParts,
    PhaseClock,
    StepBudget,
    StepWriter,
)
from langchain_confspec.engine.verification import VerdictReader
from langchain_confspec.errors import ConfigurationError, ContextLengthError
from langchain_confspec.models.fast_path import ModelPath
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.remote import RemoteModel
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import (
    ModelCounters,
    ServerWork,
    StepEnd,
    StepRecord,
    summarize,
)

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()  # servers already named for checking by verdict instead of agreement


def _check_remote_request(target: RemoteModel, config: SpecConfig, constraint: Constraint | None) -> None:
    """Refuse what a served target cannot do, naming the server; say once where it checks by
    verdict because agreement needs scores it cannot give."""
    where = f"the {target.engine} server at {target.base_url}"
    if config.token_speculation and not target.scores_proposals:
        raise ConfigurationError(
            f"token_speculation needs the target to score proposed tokens, which {where} cannot do; turn it off "
            "(or let the server speculate itself: llama-server -md DRAFT), or serve the target with vLLM or SGLang."
        )
    if config.target_check is TargetCheck.AGREEMENT and not target.scores_proposals and where not in _WARNED:
        _WARNED.add(where)
        logger.warning(
            "target_check='agreement' needs the target to score a proposed step, which %s cannot do: it checks "
            "escalated steps by its verdict instead (serve the target with vLLM or SGLang for agreement).",
            where,
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


class Generation(StepWriter):
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
        self._write_step: Callable[[StepBudget, PhaseClock], Generator[TextDelta, None, StepRecord]] = {
            Mode.TARGET_ONLY: self.target_only_step,
            Mode.DRAFT_ONLY: self.draft_only_step,
            Mode.CONFSPEC: self.speculative_step,
            Mode.ALWAYS_VERIFY: self.speculative_step,
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
            clock = PhaseClock(self.batch_sizes)
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

