"""Which forward-pass path each model takes for a call, and the per-model state it needs.

`fast_path` is a per-call setting, resolved per model: `off` (dynamic caches), `static`
(the model's static cache, eager modules), `graphs` (static cache plus captured CUDA
graphs), or `auto` (`graphs` where the model is on CUDA and supported, else the faster of the
other two on the CPU). A model the static cache cannot serve (sliding-window or hybrid
attention, position-dependent RoPE, an unsupported attention implementation, weights spread
over devices, a KV budget without room for one useful row, an allocation that failed) gets
`off` under `auto`, with the reason, and a `ConfigurationError` naming the reason when
`static` or `graphs` is asked for.

`FastPaths` owns one `StaticRunner` per model role, sized by the engine's `CachePlan`, created
on first use and warmed up (graphs compiled and captured) once, either by the first call that
needs it or ahead of time by `warm_up`; the seconds a call spends on that are reported in its
summary. A failed capture or allocation is remembered (calls do not retry it) until the next
`warm_up`, which tries again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from langchain_confspec.config import FastPath
from langchain_confspec.errors import (
    ConfigurationError,
    ModelOutOfMemoryError,
    is_sticky_cuda_error,
)
from langchain_confspec.models.batching import BatchScheduler
from langchain_confspec.models.cache_budget import CachePlan
from langchain_confspec.models.cuda_graphs import GraphCapture, timed
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.session import DynamicKV, KVBackend, StaticKV
from langchain_confspec.models.static_cache import check_static_support
from langchain_confspec.models.static_runner import StaticRunner, WarmupReport

logger = logging.getLogger(__name__)

CPU_DEFAULT = FastPath.OFF
"""What `auto` picks off CUDA: measured faster than `static` on the CPU (docs/performance.md)."""


@dataclass(frozen=True)
class ModelPath:
    """A model's resolved path for one call, and why `auto` chose it."""

    path: FastPath
    reason: str = ""


class FastPaths:
    """The static runners of an engine's models and the rule resolving `fast_path` for them."""

    def __init__(
        self, models: dict[str, LoadedModel], context: dict[str, int], capture: GraphCapture, *, plan: CachePlan | str
    ) -> None:
        self.models = models
        self.context = context
        self.capture = capture
        self.plan = plan  # the caches' rows and lengths, or why no static cache fits the budget
        self._turns = {role: threading.Lock() for role in models}  # dynamic-cache passes: one at a time
        self._runners: dict[str, StaticRunner] = {}
        self._static_failures: dict[str, str] = {}  # role -> why its static cache could not be allocated
        self._graph_failures: dict[str, str] = {}  # role -> why its graphs could not be captured

    @property
    def rows(self) -> int:
        return self.plan.rows if isinstance(self.plan, CachePlan) else 1

    def resolve(self, requested: FastPath, role: str, *, busy: bool = False) -> ModelPath:
        """The path `role`'s model takes when a call asks for `requested`. On the CPU `auto`
        takes `off` for a lone call (the faster path there) and `static` when other calls are
        in flight (`busy`) and the static cache is ready, so that they share batched passes
        instead of taking turns; preparing it would wait for the calls in flight, which may be
        suspended in the caller's own thread (`ConfSpecEngine.prepare_batching` does it first)."""
        if requested is FastPath.OFF:
            return ModelPath(FastPath.OFF)
        loaded = self.models[role]
        try:
            check_static_support(loaded.model, self.context[role])
            if isinstance(self.plan, str):
                raise ConfigurationError(f"No static KV cache fits: {self.plan}.")
            if role in self._static_failures:
                raise ConfigurationError(self._static_failures[role])
        except ConfigurationError as unsupported:
            if requested is FastPath.AUTO:
                return ModelPath(FastPath.OFF, str(unsupported))
            raise ConfigurationError(f"fast_path={requested.value!r} for the {role} model: {unsupported}") from None
        graphs_possible = self.capture.available(loaded.device)
        if requested is FastPath.GRAPHS and not graphs_possible:
            raise ConfigurationError(
                f"fast_path='graphs' needs CUDA, but the {role} model is on {loaded.device}; "
                "use 'static' or 'off' there (or 'auto', which picks for each device)."
            )
        if requested is FastPath.AUTO:
            batch = busy and self.ready(role, FastPath.STATIC)
            requested = FastPath.GRAPHS if graphs_possible else (FastPath.STATIC if batch else CPU_DEFAULT)
        if requested is FastPath.GRAPHS and role in self._graph_failures:
            return ModelPath(FastPath.STATIC, self._graph_failures[role])
        return ModelPath(requested)

    def ready(self, role: str, path: FastPath) -> bool:
        """Whether `role` can take `path` with nothing to allocate or capture first."""
        runner = self._runners.get(role)
        if path is FastPath.OFF:
            return True
        return runner is not None and (path is not FastPath.GRAPHS or runner.graphs_ready or role in self._graph_failures)

    def prepare(self, role: str, path: FastPath, *, fallback: bool = True) -> tuple[FastPath, float]:
        """Allocate `role`'s static cache and capture its graphs if `path` needs them (while no
        generation runs); the path it really takes and the seconds spent now.

        Graphs that cannot be captured leave the model on `static`. A cache that cannot be
        allocated sends it to `off` where `fallback` allows it (`auto`), else raises
        `ModelOutOfMemoryError` naming the cache's size.
        """
        if path is FastPath.OFF:
            return path, 0.0
        seconds = 0.0
        if role not in self._runners:
            try:
                runner = self._allocate(role)
            except ModelOutOfMemoryError as error:
                self._static_failures[role] = str(error)
                logger.warning("%s model: %s; using fast_path='off'", role, error)
                if not fallback:
                    raise
                return FastPath.OFF, 0.0
            self._runners[role] = runner
            seconds += runner.allocate_seconds
        runner = self._runners[role]
        if path is FastPath.GRAPHS and not runner.graphs_ready and role not in self._graph_failures:
            seconds += self._warm_up_graphs(role, runner)
        if path is FastPath.GRAPHS and not runner.graphs_ready:
            path = FastPath.STATIC
        return path, seconds

    def kv(
        self, role: str, path: FastPath, *, row: int, scheduler: BatchScheduler, batch_sizes: list[int]
    ) -> KVBackend:
        """A generation's KV backend for `role` on a prepared `path`, in cache row `row`."""
        if path is FastPath.OFF:
            return DynamicKV(self.models[role], away=scheduler.away, turn=self._turns[role])
        return StaticKV(
            self._runners[role],
            graphs=path is FastPath.GRAPHS,
            row=row,
            scheduler=scheduler,
            role=role,
            batch_sizes=batch_sizes,
        )

    def backend(self, role: str, path: FastPath) -> tuple[KVBackend | None, FastPath, float]:
        """For single-threaded tools (benchmarks): `prepare`, then a backend in row 0 that runs
        its passes directly (None: a dynamic cache)."""
        path, seconds = self.prepare(role, path)
        if path is FastPath.OFF:
            return None, path, seconds
        return StaticKV(self._runners[role], graphs=path is FastPath.GRAPHS), path, seconds

    def warm_up(self, requested: FastPath) -> list[WarmupReport]:
        """Get every model ready for `requested` now, so that no call pays for it; allocations
        and captures that failed before are tried again."""
        self._static_failures.clear()
        self._graph_failures.clear()
        reports = []
        for role, loaded in self.models.items():
            resolved = self.resolve(requested, role)
            path, _ = self.prepare(role, resolved.path, fallback=requested is FastPath.AUTO)
            if path is FastPath.OFF:
                reports.append(WarmupReport(model=loaded.name, fast_path=path.value, cache_tokens=0, cache_mib=0.0))
            else:
                reports.append(self._runners[role].report)
        return reports

    def runner(self, role: str) -> StaticRunner | None:
        return self._runners.get(role)

    def _allocate(self, role: str) -> StaticRunner:
        assert isinstance(self.plan, CachePlan)
        size = f"{self.plan.rows} rows of {self.context[role]:,} tokens"
        try:
            runner = StaticRunner(
                self.models[role], self.context[role], self.capture, rows=self.plan.rows, budget_mib=self.plan.budget_bytes / 2**20
            )
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
            if not isinstance(error, torch.OutOfMemoryError | MemoryError) and "out of memory" not in str(error).lower():
                raise
            failure = f"{type(error).__name__}: {str(error)[:200]}"
        else:
            logger.info("%s model: %s", role, self.plan.describe())
            return runner
        # Out of the handler: the traceback, and the half-built cache it holds, are gone.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ModelOutOfMemoryError(
            f"the {role} model's static KV cache ({size}) could not be allocated ({failure}); set kv_cache_memory "
            f"lower (now {self.plan.budget_bytes / 2**20:,.0f} MiB for both caches)"
        )

    def _warm_up_graphs(self, role: str, runner: StaticRunner) -> float:
        device = self.models[role].device
        logger.info("%s model: capturing CUDA graphs once (model.warmup() does this ahead of the first call)", role)
        try:
            return timed(device, runner.warm_up_graphs)
        except (RuntimeError, AssertionError) as error:  # capture refused this model: stay eager
            if is_sticky_cuda_error(error):
                raise
            runner.abandon_graphs()
            self._graph_failures[role] = f"CUDA graph capture failed ({type(error).__name__}: {error}); using 'static'"
            logger.warning("%s model: %s (warmup() tries again)", role, self._graph_failures[role])
            return 0.0
