"""Concurrent generations on one engine, their forward passes run together.

Each generation runs its own step logic in its own thread (the caller's, or the async
bridge's worker) and holds a slot: a row of every model's static cache. When its session
needs a forward pass, it hands the pass to the `BatchScheduler` and waits on it. An executor
thread runs the passes that are waiting for one model, of one kind (one-token decoding, or
multi-token passes: verification suffixes, catch-up, proposal checks), as one batched forward
over their rows, and hands each its rows of logits. Requests join and leave between passes:
continuous batching, bounded by `max_batch` slots.

A batch runs once no generation holding a slot is busy on the host (each is waiting for a
pass, or has handed control to its caller), so requests advance together; a short timeout
keeps a slow host step from holding the others up, and a pass that larger groups have kept
waiting for `STARVATION_LIMIT` runs next. If a batched pass fails, its passes are run again one
by one, so that only the request that really fails sees the error.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

GATHER_TIMEOUT = 0.02
"""Seconds a waiting pass gives busy requests to join its batch before it runs anyway."""
STARVATION_LIMIT = 0.1
"""Seconds a pass may be passed over for larger groups before its group runs first."""
IDLE_EXIT = 1.0
"""Seconds without passes after which the executor thread ends (a new pass starts another)."""


TokenIds = Sequence[int] | torch.Tensor
"""Token ids on the host, or a 1-D tensor of them on the model's device: the draft's proposals
in a fixed-depth speculation round are fed back before anything reads them."""


@dataclass
class PassJob:
    """One request's forward pass over its row of a model's static cache."""

    role: str
    row: int
    tokens: TokenIds
    start: int
    n_rows: int
    graphs: bool = False
    pick: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Its generation's choice of the next token, on the device (greedy or sampled with its own
    generator): a batched decode step makes every row's choice and reads them back at once."""
    result: torch.Tensor | None = None
    chosen: int | None = None  # what `pick` chose, when a batched step read it back
    error: BaseException | None = None
    batch_size: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def kind(self) -> tuple[str, bool]:
        """What can share a forward: one-token decoding or longer passes, on graphs or not."""
        return ("decode" if len(self.tokens) == 1 else "pass", self.graphs)


BatchRunner = Callable[[str, list[PassJob]], list[torch.Tensor]]
"""Runs one batched forward for a role's jobs, returning each job's rows of logits."""


class BatchScheduler:
    """Slots for concurrent generations, and their forward passes run as batches."""

    def __init__(self, max_batch: int, run_batch: BatchRunner) -> None:
        self.max_batch = max_batch
        # Held weakly: the executor thread must not keep an engine (and its weights) alive.
        self._run_batch = weakref.WeakMethod(run_batch) if hasattr(run_batch, "__self__") else lambda: run_batch
        self._executor: threading.Thread | None = None
        self._condition = threading.Condition()
        self._free = list(range(max_batch))  # free rows, the lowest handed out first
        self._tickets = 0  # first come, first served
        self._serving = 0
        self._active = 0  # generations holding a slot
        self._busy = 0  # of those, the ones doing host work now
        self._exclusive = False
        self._pending: list[PassJob] = []
        self._executing = False  # a batch (or a lone generation's pass) is running
        self._current: list[PassJob] = []  # the executor's batch in hand
        self._free_since = 0.0  # when the last batch ended: waiting counts from then

    # -- slots ----------------------------------------------------------------------------------

    @contextmanager
    def slot(self) -> Iterator[tuple[int, float]]:
        """Hold a slot (a cache row) for one generation: (row, seconds waited for it)."""
        started = time.perf_counter()
        with self._condition:
            ticket = self._tickets
            self._tickets += 1
            self._condition.wait_for(lambda: self._serving == ticket and self._free and not self._exclusive)
            self._serving += 1
            row = self._free.pop(0)
            self._active += 1
            self._busy += 1
            self._condition.notify_all()
        try:
            yield row, time.perf_counter() - started
        finally:
            with self._condition:
                self._free.append(row)
                self._free.sort()
                self._active -= 1
                self._busy -= 1
                self._condition.notify_all()

    @contextmanager
    def away(self) -> Iterator[None]:
        """The generation has handed control to its caller (a streamed piece, a record): it
        does not hold up the batch others are waiting to run."""
        with self._condition:
            self._busy -= 1
            self._condition.notify_all()
        try:
            yield
        finally:
            with self._condition:
                self._busy += 1

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No generation holds a slot while this runs (warm-up writes all over the caches)."""
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._condition.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()

    # -- passes ---------------------------------------------------------------------------------

    def forward(self, job: PassJob) -> torch.Tensor:
        """Run `job` as part of a batch and return its logits. A generation alone on the engine
        runs its pass itself: no batch to gather, no thread to hand it to."""
        with self._condition:
            alone = self._active == 1 and not self._pending and not self._executing
            if alone:
                self._executing = True
        if alone:
            try:
                self._execute([job])
            finally:
                with self._condition:
                    self._executing = False
                    self._condition.notify_all()
            return self._outcome(job)
        with self._condition:
            self._pending.append(job)
            self._busy -= 1
            if self._executor is None:  # started on demand, gone when idle
                self._executor = threading.Thread(target=self._execute_batches, name="confspec-batches", daemon=True)
                self._executor.start()
            self._condition.notify_all()
        job.finished.wait()  # the executor counted this request busy again when it finished the job
        return self._outcome(job)

    @staticmethod
    def _outcome(job: PassJob) -> torch.Tensor:
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _execute_batches(self) -> None:
        """The executor: runs a batch whenever one is ready, until there is nothing to do. Should
        it ever die, every waiting pass fails rather than waits forever."""
        try:
            self._execute_loop()
        except BaseException as error:
            with self._condition:
                self._executor = None
                self._busy += len(self._pending)  # the current batch was counted as it ended
                failed, self._pending = [*self._current, *self._pending], []
            for job in failed:
                if not job.finished.is_set():
                    job.error = error
                    job.finished.set()
            raise

    def _execute_loop(self) -> None:
        while True:
            with self._condition:
                while not self._ready():
                    if not self._pending:
                        if not self._condition.wait(IDLE_EXIT):
                            self._executor = None  # idle: the next pass starts a new executor
                            return
                    elif self._executing:  # a lone request's own pass: it notifies as it ends
                        self._condition.wait()
                    else:
                        self._condition.wait(max(0.0, self._waited_since() + GATHER_TIMEOUT - time.perf_counter()))
                batch = self._current = self._take()
                self._executing = True
            try:
                self._execute(batch)
            finally:
                with self._condition:
                    self._executing = False
                    # Their requests are back on the host from now, not from when their threads
                    # wake: a pass that came during the batch waits for them instead of running
                    # alone and keeping the requests out of step for good.
                    self._busy += len(batch)
                    self._free_since = time.perf_counter()
                    self._condition.notify_all()

    def _ready(self) -> bool:
        """A batch runs once no generation holding a slot is busy on the host, or once the
        oldest waiting pass has waited long enough."""
        if not self._pending or self._executing:
            return False
        return self._busy <= 0 or time.perf_counter() - self._waited_since() >= GATHER_TIMEOUT

    def _waited_since(self) -> float:
        """Since when the oldest pass has waited for the others rather than for a batch: a pass
        that arrived during a batch gives the requests that batch served time to catch up, so
        that its forward neither runs beside their host work (both slow, fighting for the GIL) nor
        leaves them out."""
        return max(min(job.submitted for job in self._pending), self._free_since)

    def _take(self) -> list[PassJob]:
        """The largest group of waiting passes of one model and kind (decoding first on ties),
        unless a pass has waited `STARVATION_LIMIT`: then the oldest one's group."""
        groups: dict[tuple[str, tuple[str, bool]], list[PassJob]] = {}
        for job in self._pending:
            groups.setdefault((job.role, job.kind), []).append(job)
        oldest = min(self._pending, key=lambda job: job.submitted)
        if time.perf_counter() - oldest.submitted >= STARVATION_LIMIT:
            batch = groups[(oldest.role, oldest.kind)]
        else:
            batch = max(groups.values(), key=lambda jobs: (len(jobs), jobs[0].kind[0] == "decode"))
        self._pending = [job for job in self._pending if job not in batch]
        return batch

    def _execute(self, batch: list[PassJob]) -> None:
        """Run a batch and hand each job its outcome."""
        try:
            run_batch = self._run_batch()
            if run_batch is None:
                raise RuntimeError("the engine these passes belong to is gone")
            results = run_batch(batch[0].role, batch)
        except Exception as error:  # noqa: BLE001 - handed to the job's own request
            if len(batch) > 1:  # run them alone, so that only the failing request fails
                for job in batch:
                    self._execute([job])
                return
            batch[0].error = error
            batch[0].finished.set()
            return
        for job, result in zip(batch, results):
            job.result, job.batch_size = result, len(batch)
            job.finished.set()
