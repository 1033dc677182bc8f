"""Compiling and capturing forward passes: the only CUDA-specific code of the fast path.

A `GraphCapture` turns a pass function (no arguments; reads and writes fixed buffers) into
something to replay. `CudaGraphCapture` records it once as a CUDA graph, compiling the
module first where asked; `EagerRehearsal` returns the function itself, so the graph path's
shapes, padding and rollback run on any device (the CPU tests and `benchmarks/gpu.py
--smoke` use it). `StaticRunner` decides what to capture; this module only knows how.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

Replay = Callable[[], None]
CAPTURE_ERROR_MODE = "thread_local"


class GraphCapture(Protocol):
    """How a `StaticRunner` turns its pass functions into replayable ones."""

    def available(self, device: torch.device) -> bool: ...

    def compile(self, module: torch.nn.Module) -> Callable[..., object]: ...

    def capture(self, fn: Callable[[], None], pool: object, *, reset: Callable[[], object], device: torch.device) -> Replay: ...

    def new_pool(self, device: torch.device) -> object: ...


class CudaGraphCapture:
    """Real CUDA graphs. With `compile_decode`, the module is compiled (`torch.compile`,
    static shapes) before the one-token step is captured: 31-35 s once per model on the H100,
    for 1.67 instead of 3.0 ms/token at 0.5B and 7.52 instead of 8.9 at 7B
    (docs/performance.md). Multi-token passes are captured uncompiled (about a second)."""

    def __init__(self, *, compile_decode: bool = True, warmup_runs: int = 3) -> None:
        self.compile_decode = compile_decode
        self.warmup_runs = warmup_runs

    def available(self, device: torch.device) -> bool:
        return device.type == "cuda" and torch.cuda.is_available()

    def compile(self, module: torch.nn.Module) -> Callable[..., object]:
        return torch.compile(module, dynamic=False) if self.compile_decode else module

    def capture(self, fn: Callable[[], None], pool: object, *, reset: Callable[[], object], device: torch.device) -> Replay:
        # Warm up on a side stream (compilation and lazy initialisation happen here, not in
        # the graph), then record one run; replays rerun exactly those kernels. `reset` puts
        # the state `fn` advances back before each run; it is never recorded. Everything,
        # replays included, runs on the model's device, whichever device is current.
        # `thread_local`: CUDA work of other threads (the other model, an embedder, a tool)
        # during the capture does not invalidate it, as the default `global` mode would.
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup_runs):
                    reset()
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            reset()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode=CAPTURE_ERROR_MODE):
                fn()

        def replay() -> None:
            with torch.cuda.device(device):
                graph.replay()

        return replay

    def new_pool(self, device: torch.device) -> object:
        with torch.cuda.device(device):
            return torch.cuda.graph_pool_handle()


class EagerRehearsal:
    """Runs pass functions as they are: the graph path without CUDA graphs."""

    def available(self, device: torch.device) -> bool:
        return True

    def compile(self, module: torch.nn.Module) -> Callable[..., object]:
        return module

    def capture(self, fn: Callable[[], None], pool: object, *, reset: Callable[[], object], device: torch.device) -> Replay:
        return fn

    def new_pool(self, device: torch.device) -> object:
        return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds `work` takes, device work included."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


@dataclass
class GraphMemory:
    """Device memory reserved while graphs were captured, filled in on leaving `graph_memory`."""

    mib: float = 0.0


@contextmanager
def graph_memory(device: torch.device) -> Iterator[GraphMemory]:
    """Measure what captures keep: memory *reserved* by the allocator, which counts the graphs'
    private pools (temporaries freed into a pool stay reserved for its replays); 0 off CUDA.

    The allocator's idle cache is released at both ends: released midway (compiling can),
    it made the difference negative, -13,936 MiB for the 0.5B on the H200 on 2026-12-04.
    """
    measured = GraphMemory()
    before = reserved_after_release(device)
    try:
        yield measured
    finally:
        measured.mib = (reserved_after_release(device) - before) / 2**20


def reserved_after_release(device: torch.device) -> int:
    """Bytes the allocator holds once its idle blocks are returned (live pools stay); 0 off CUDA."""
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device)
