"""The step loop: draft writes, draft judges, the gate decides, the target steps in.

`ConfSpecEngine` is plain Python and torch (no LangChain). `run` is a generator that yields
one `StepRecord` as soon as each step is decided and a `RunResult` at the end, so callers can
stream accepted steps. Up to `max_batch` generations run at once per engine, each in its own
slot (its own cache row), their forward passes batched by the `BatchScheduler`; each one's step
logic runs in its caller's thread and never sees the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch

from langchain_confspec.answer_text import AnswerText
from langchain_confspec.batching import BatchScheduler, PassJob
from langchain_confspec.cache_budget import (
    CachePlan,
    KVBudget,
    plan_caches,
    resolve_budget,
)
from langchain_confspec.config import FastPath, Mode, SpecConfig
from langchain_confspec.constrained import Node, write_json
from langchain_confspec.cuda_graphs import CudaGraphCapture, GraphCapture
from langchain_confspec.decoding import (
    StopScanner,
    TokenChooser,
    WrittenStep,
    token_texts,
    write_step_texts,
)
from langchain_confspec.errors import (
    ConfigurationError,
    ConfSpecError,
    ContextLengthError,
    DeviceContextLostError,
    GenerationError,
    ModelOutOfMemoryError,
    is_sticky_cuda_error,
)
from langchain_confspec.fast_path import FastPaths, ModelPath
from langchain_confspec.gate import GateAction, gate, target_accepts
from langchain_confspec.loading import LoadedModel, rollback_problem, same_vocabulary
from langchain_confspec.records import (
    Decision,
    ModelCounters,
    PhaseBatches,
    PhaseTimes,
    RunSummary,
    ServerWork,
    Span,
    StepEnd,
    StepRecord,
    TokenSpeculation,
    Writer,
    summarize,
)
from langchain_confspec.remote import RemoteModel
from langchain_confspec.remote_session import RemoteSession
from langchain_confspec.session import ModelSession
from langchain_confspec.speculation import DepthPolicy, speculative_step_texts
from langchain_confspec.static_cache import bytes_per_token, check_static_support
from langchain_confspec.static_runner import WarmupReport
from langchain_confspec.tool_calls import OPEN_TAG
from langchain_confspec.verification import VerdictReader, judge

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Constraint:
    """An answer that must follow a JSON plan, and what kind of span that makes it.

    `after_reasoning`: the steps are written first, unconstrained and speculated as for a
    plain answer, and the constrained span comes after them with the steps in context, so
    that a chain-of-thought model can reason before it commits to the object.
    `opened_by`: the constrained span is written only where the model itself writes this
    opener (a tool call's tag, under `tool_choice="auto"`), right after it; an answer that
    ends without it is a plain answer.
    """

    plan: Node
    span: Span
    after_reasoning: bool = False
    opened_by: str = ""


T = TypeVar("T")
DEFAULT_MAX_BATCH = 8
"""Generations one engine runs at once; each holds a row of every static cache."""


@dataclass(frozen=True)
class TextDelta:
    """Text a step settled while it was being written (streaming only). `provisional` text is
    a draft step still awaiting its verdict; the rest is final as soon as it is settled."""

    text: str
    step: int
    writer: Writer
    provisional: bool
    span: Span = Span.TEXT


class StepBudget(NamedTuple):
    """How many tokens the next step may take, and whether filling them ends the answer."""

    tokens: int
    ends_answer: bool


@dataclass(frozen=True)
class RunResult:
    """The answer of one generation and how it was produced."""

    text: str
    records: list[StepRecord]
    summary: RunSummary

    @property
    def input_tokens(self) -> int:
        counters = self.summary.target if self.summary.target.prompt_tokens else self.summary.draft
        return counters.prompt_tokens

    @property
    def output_tokens_by_writer(self) -> dict[str, int]:
        counts = {w.value: 0 for w in Writer}
        for record in self.records:
            counts[record.writer.value] += record.n_tokens
        return counts


class ConfSpecEngine:
    """A draft and a target model, their static caches, and the scheduler that runs up to
    `max_batch` generations at once, their forward passes batched together.

    `max_context` caps the context window the engine uses for both models; `kv_cache_memory`
    (bytes, or a fraction of the free device memory) bounds their static caches, whose rows
    and row length come out of it (`cache_budget`): the rows cap `max_batch`, the row length
    the context of calls on `static` and `graphs`; `graph_capture` says how graphs are
    captured (CUDA graphs by default; `EagerRehearsal` runs the graph path's passes eagerly
    on any device).
    """

    def __init__(
        self,
        draft: LoadedModel,
        target: LoadedModel | RemoteModel,
        depth_policy: DepthPolicy | None = None,
        *,
        max_context: int | None = None,
        graph_capture: GraphCapture | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        kv_cache_memory: KVBudget | None = None,
    ) -> None:
        if max_context is not None and max_context < 2:
            raise ConfigurationError(f"max_context must be at least 2 tokens, not {max_context}.")
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be at least 1, not {max_batch}.")
        self.draft = draft
        self.target = target
        self.max_context = max_context
        self.shared_vocabulary = same_vocabulary(draft.tokenizer, target.tokenizer)
        self.depth_policy = depth_policy or DepthPolicy.for_model(getattr(target, "directory", None))
        self.depth_samples: list[tuple[float, bool]] | None = None
        """When a list, token speculation records (entropy, kept) there, for `DepthPolicy.fit`."""
        self.context = {
            role: min(loaded.context_length, max_context or loaded.context_length)
            for role, loaded in (("draft", draft), ("target", target))
        }
        self.local = {role: m for role, m in (("draft", draft), ("target", target)) if isinstance(m, LoadedModel)}
        """The models in this process (a target may be served: `RemoteModel`)."""
        for role, loaded in self.local.items():
            if (problem := rollback_problem(loaded.model, self.context[role])) is not None:
                raise ConfigurationError(f"The {role} model {loaded.name!r} cannot be used: {problem}.")
        self.context_limit = {  # what set each model's context, for errors
            role: "context window" if self.context[role] == loaded.context_length else "context window (max_context)"
            for role, loaded in (("draft", draft), ("target", target))
        }
        self.cache_plan = self._plan_caches(kv_cache_memory, max_batch)
        self.static_context = dict(self.cache_plan.tokens) if isinstance(self.cache_plan, CachePlan) else {}
        """Positions a static-cache row holds per model: the context of calls on `static` and `graphs`."""
        self.max_batch = self.cache_plan.rows if isinstance(self.cache_plan, CachePlan) else max_batch
        self.fast_paths = FastPaths(
            self.local,
            {**self.context, **self.static_context},
            graph_capture or CudaGraphCapture(),
            plan=self.cache_plan,
        )
        self.scheduler = BatchScheduler(self.max_batch, self._run_batch)
        self._preparing = threading.Lock()
        self._in_flight = 0  # calls inside run(): under `auto`, a busy CPU engine batches
        self._in_flight_lock = threading.Lock()
        self.lost: str | None = None  # why, once a sticky CUDA error broke the device context for good

    def window(self, role: str, path: FastPath) -> tuple[int, str]:
        """The context `role`'s model has on `path`, and what set it (for errors)."""
        if path is not FastPath.OFF and self.static_context.get(role, self.context[role]) < self.context[role]:
            assert isinstance(self.cache_plan, CachePlan)
            budget = self.cache_plan.budget_bytes / 2**20
            return self.static_context[role], f"static KV cache row (sized by kv_cache_memory={budget:,.1f} MiB)"
        return self.context[role], self.context_limit[role]

    def _plan_caches(self, kv_cache_memory: KVBudget | None, max_batch: int) -> CachePlan | str:
        """Size the static caches of the models that can have one to the KV budget (a call on
        `off` keeps the whole window); a reason where none fits."""
        static = {}
        for role, loaded in sorted(self.local.items(), reverse=True):  # the target first
            try:
                check_static_support(loaded.model, self.context[role])
                static[role] = loaded
            except ConfigurationError:
                continue
        if not static:
            return "neither model can use a static KV cache"
        budget = resolve_budget(kv_cache_memory, next(iter(static.values())).device)
        per_token = {role: bytes_per_token(loaded.model) for role, loaded in static.items()}
        plan = plan_caches(per_token, {role: self.context[role] for role in static}, max_batch, budget)
        if isinstance(plan, str):
            logger.warning("static KV caches: %s; fast_path 'auto' uses 'off'", plan)
        else:
            logger.info("%s", plan.describe())
        return plan

    def warmup(self, fast_path: FastPath | str = FastPath.AUTO) -> list[WarmupReport]:
        """Allocate static caches and capture graphs for `fast_path` now, and build each
        tokenizer's token-text table, so that no call pays for them; one report per model.
        Waits until no generation is running, and holds new ones back meanwhile."""
        self._check_device()
        with self.scheduler.exclusive(), self._model_failures():
            for loaded in (self.draft, self.target):
                token_texts(loaded.tokenizer)
            return self.fast_paths.warm_up(FastPath(fast_path))

    def prepare_batching(self) -> None:
        """Ready the static caches that concurrent calls share under `auto` on the CPU, before
        a batch of calls starts (a no-op where they are ready, where `auto` takes graphs, or
        where the pair has no static cache)."""
        roles = tuple(self.local)
        if any(self.fast_paths.capture.available(self.local[role].device) for role in roles):
            return
        if all(self.fast_paths.ready(role, FastPath.STATIC) for role in roles):
            return
        try:
            self.warmup(FastPath.STATIC)
        except ConfigurationError:
            logger.debug("no static cache for batching: concurrent calls take turns on 'off'")

    def run(
        self,
        turns: list[dict[str, Any]],
        config: SpecConfig,
        *,
        tools: list[dict[str, Any]] | None = None,
        constraint: Constraint | None = None,
        stream_text: bool = False,
    ) -> Iterator[StepRecord | TextDelta | RunResult]:
        """Yield each step's record as it is decided, then the `RunResult`.

        `tools` (OpenAI-style definitions) are shown to both models; with a `constraint`
        the whole answer is one span written to that plan (a forced tool call, a JSON
        document), drafted, judged and rewritten under the same rules as any step. With
        `stream_text`, each piece of a step's text is also yielded (`TextDelta`) as soon as it
        settles, before the step's record.
        """
        started = time.perf_counter()
        self._check_device()
        with self._in_flight_lock:
            busy = self._in_flight > 0
            self._in_flight += 1
        try:
            yield from self._run(turns, config, tools, constraint, stream_text, started=started, busy=busy)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _run(
        self,
        turns: list[dict[str, Any]],
        config: SpecConfig,
        tools: list[dict[str, Any]] | None,
        constraint: Constraint | None,
        stream_text: bool,
        *,
        started: float,
        busy: bool,
    ) -> Iterator[StepRecord | TextDelta | RunResult]:
        generation = _Generation(self, turns, config, tools, constraint, stream_text, busy=busy)
        if not generation.paths_ready():
            with self._preparing:  # one call warms up; the others then find the paths ready
                if not generation.paths_ready():
                    with self.scheduler.exclusive(), self._model_failures():
                        generation.prepare_paths()
        with self.scheduler.slot() as (row, slot_wait):
            logger.debug("generation starts (%s) in row %d after waiting %.3f s for a slot", config.mode.value, row, slot_wait)
            with self._model_failures():
                generation.open_sessions(row)
                for item in generation.steps():
                    with self.scheduler.away():  # the caller has the item: others may batch meanwhile
                        yield item
            result = generation.result(wall_time=time.perf_counter() - started, lock_wait=slot_wait)
            with self.scheduler.away():
                yield result

    def _check_device(self) -> None:
        """Refuse at once when a sticky CUDA error has broken the device context."""
        if self.lost is not None:
            raise DeviceContextLostError(self.lost)

    @contextmanager
    def _model_failures(self) -> Iterator[None]:
        """`_model_failures`, and a sticky CUDA error marks the engine lost for every later call."""
        try:
            with _model_failures():
                yield
        except GenerationError as error:
            cause = error.__cause__
            if cause is not None and is_sticky_cuda_error(cause):
                self.lost = (
                    f"The CUDA context is no longer usable ({type(cause).__name__}: {cause}): restart the process. "
                    "A device-side assert or illegal memory access breaks every later CUDA call in this process."
                )
                raise DeviceContextLostError(self.lost) from cause
            raise

    def _run_batch(self, role: str, jobs: list[PassJob]) -> list[torch.Tensor]:
        runner = self.fast_paths.runner(role)
        assert runner is not None, "a batched pass needs the model's static cache"
        return runner.forward_rows(jobs)

    def generate(self, turns: list[dict[str, Any]], config: SpecConfig, **request: Any) -> RunResult:
        """Run to the end and return the result (`request`: as for `run`)."""
        for item in self.run(turns, config, **request):
            if isinstance(item, RunResult):
                return item
        raise AssertionError("run() ended without a result")


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


@contextmanager
def _model_failures() -> Iterator[None]:
    """Turn an exception from inside a model into a `GenerationError` that says so.

    Everything a generation holds (sessions, KV caches) belongs to that call and is dropped
    with it, and its slot is freed on the way out, so the next call starts clean.
    """
    try:
        yield
    except ConfSpecError:
        raise
    except (RuntimeError, MemoryError, ValueError, IndexError) as error:
        if isinstance(error, MemoryError | torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise ModelOutOfMemoryError(f"A model ran out of memory while answering: {error}") from error
        raise GenerationError(f"A model failed while answering ({type(error).__name__}: {error}).") from error


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


class _Generation:
    """The state of one answer: both sessions, the text so far, the records."""

    def __init__(
        self,
        engine: ConfSpecEngine,
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
