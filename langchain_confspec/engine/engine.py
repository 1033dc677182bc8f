"""`ConfSpecEngine`: a draft and a target, their caches, and the generations that run on them.

Plain Python and torch (no LangChain). `run` is a generator that yields
one `StepRecord` as soon as each step is decided and a `RunResult` at the end, so callers can
stream accepted steps. Up to `max_batch` generations run at once per engine, each in its own
slot (its own cache row), their forward passes batched by the `BatchScheduler`; each one's step
logic (`generation.py`, `steps.py`) runs in its caller's thread and never sees the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from langchain_confspec.config import FastPath, SpecConfig
from langchain_confspec.engine.constrained import Constraint
from langchain_confspec.engine.decoding import token_texts
from langchain_confspec.engine.generation import Generation
from langchain_confspec.engine.outputs import RunResult, TextDelta
from langchain_confspec.engine.speculation import DepthPolicy
from langchain_confspec.errors import (
    ConfigurationError,
    ConfSpecError,
    DeviceContextLostError,
    GenerationError,
    ModelOutOfMemoryError,
    is_sticky_cuda_error,
)
from langchain_confspec.models.batching import BatchScheduler, PassJob
from langchain_confspec.models.cache_budget import (
    CachePlan,
    KVBudget,
    plan_caches,
    resolve_budget,
)
from langchain_confspec.models.cuda_graphs import CudaGraphCapture, GraphCapture
from langchain_confspec.models.fast_path import FastPaths
from langchain_confspec.models.loading import (
    LoadedModel,
    rollback_problem,
    same_vocabulary,
)
from langchain_confspec.models.remote import RemoteModel
from langchain_confspec.models.static_cache import bytes_per_token, check_static_support
from langchain_confspec.models.static_runner import WarmupReport
from langchain_confspec.records import StepRecord

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
"""Generations one engine runs at once; each holds a row of every static cache."""


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
        self._batches = 0  # batches of calls announced (`batch_of_calls`) and not over
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

    @contextmanager
    def batch_of_calls(self) -> Iterator[None]:
        """Calls started inside are one batch: under `auto` on the CPU each takes the batched
        path (`static`, once `prepare_batching` has readied it), the first one too, which would
        otherwise start alone on `off` and never share a pass with the others."""
        with self._in_flight_lock:
            self._batches += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._batches -= 1

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
            busy = self._in_flight > 0 or self._batches > 0
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
        generation = Generation(self, turns, config, tools, constraint, stream_text, busy=busy)
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
