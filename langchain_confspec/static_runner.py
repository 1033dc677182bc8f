"""One model's static KV cache and every forward pass over it.

A `StaticRunner` is created once per model (per role) by the engine and serves every call,
each in its own row (its slot in the engine's scheduler); `forward_rows` runs several calls'
passes as one. A pass over `L` new tokens at context length `start`
returns next-token logits for its last rows. Without graphs it runs eagerly, attending only
to the slots in use. With graphs, the one-token decode step and passes of up to
`PASS_BUCKETS[-1]` tokens replay graphs captured at warm-up: a pass is padded up to the
next bucket, the padding rows are written like any others and then rolled back by position
(the next pass starts at `start + L`, not `start + bucket`). Longer passes (a long prompt)
and passes that would overrun the cache run eagerly over the same slots.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from pydantic import BaseModel, Field, computed_field

from langchain_confspec.batching import PassJob
from langchain_confspec.cuda_graphs import GraphCapture, Replay, timed
from langchain_confspec.loading import LoadedModel
from langchain_confspec.static_cache import StaticKVCache

logger = logging.getLogger(__name__)

PASS_BUCKETS = (8, 16, 32, 64, 128, 256)
"""Lengths captured for multi-token passes (verification suffixes, catch-up, proposal checks)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""Numbers of rows the one-token step is captured for, up to the engine's `max_batch`."""
EAGER_ATTEND_STEP = 64
"""Eager passes attend to the slots in use, rounded up to this many."""


class WarmupReport(BaseModel):
    """What getting one model's fast path ready cost, once."""

    model: str
    fast_path: str
    cache_tokens: int = Field(description="Positions the static KV cache holds (its context window).")
    cache_mib: float = Field(description="Memory of the static KV cache.")
    allocate_seconds: float = 0.0
    decode_capture_seconds: float = Field(default=0.0, description="Compiling and capturing the one-token step.")
    passes_capture_seconds: float = Field(default=0.0, description="Capturing the multi-token passes.")
    graph_mib: float = Field(default=0.0, description="Device memory the captured graphs keep (CUDA only).")
    captured_lengths: list[int] = Field(default_factory=list)
    captured_batches: list[int] = Field(default_factory=list, description="Rows the one-token step was captured for.")
    decode_compiled: bool = Field(default=False, description="Whether the captured one-token step was compiled first.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def seconds(self) -> float:
        """All of it."""
        return self.allocate_seconds + self.decode_capture_seconds + self.passes_capture_seconds


class StaticRunner:
    """Forward passes of one model over its static cache, one row per concurrent generation,
    eager or as replayed graphs."""

    def __init__(self, loaded: LoadedModel, context_length: int, capture: GraphCapture, rows: int = 1) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.max_len = context_length
        self.rows = rows
        self.capture = capture
        self.device = self.model.get_input_embeddings().weight.device
        with torch.inference_mode():
            self.allocate_seconds = timed(self.device, self._allocate)
        self.graphs_ready = False
        self._replays: dict[tuple[int, int], Replay] = {}  # (rows, tokens) -> replay of that pass
        self._inputs: dict[tuple[int, int], torch.Tensor] = {}  # (rows, tokens) -> its input buffer
        self._decode_out: torch.Tensor | None = None  # (rows, vocab): each row's logits from its last decode step
        self._active: torch.Tensor | None = None  # (rows,): the rows stepping in the replay being set up
        self._pass_out: torch.Tensor | None = None  # (longest pass, vocab): logits of a replayed pass
        self.report = WarmupReport(
            model=loaded.name,
            fast_path="static",
            cache_tokens=context_length,
            cache_mib=self.cache.nbytes / 2**20,
            allocate_seconds=self.allocate_seconds,
        )

    def _allocate(self) -> None:
        self.cache = StaticKVCache(self.model, self.max_len, batch_size=self.rows, scratch_len=PASS_BUCKETS[-1])

    # -- passes -------------------------------------------------------------------------------

    def forward(self, tokens: Sequence[int], start: int, n_rows: int, *, graphs: bool, row: int = 0) -> torch.Tensor:
        """One generation's pass: read `tokens` at positions `start`.. of `row`; next-token
        logits after each of the last `n_rows` of them: (n_rows, vocab) float32, valid until
        the next pass."""
        return self.forward_rows([PassJob("", row, tokens, start, n_rows, graphs)])[0]

    def forward_rows(self, jobs: list[PassJob]) -> list[torch.Tensor]:
        """One batched pass for jobs in distinct rows, all on graphs or all not; each job's
        logits as `forward` returns them."""
        for job in jobs:
            if job.start + len(job.tokens) > self.max_len:
                raise ValueError(
                    f"a pass to {job.start + len(job.tokens)} tokens overruns the static cache of {self.max_len}"
                )
        with torch.inference_mode():
            shape = self._graph_shape(jobs) if jobs[0].graphs else None
            if shape is not None:
                return self._replay(jobs, shape)
            by_row = sorted(jobs, key=lambda job: job.row)
            if max(len(job.tokens) for job in jobs) <= self.cache.scratch_len:  # one forward over the rows' span
                runs = [by_row]
            else:  # rows between the jobs' could not be parked in the scratch slots: runs of rows
                runs = _contiguous(by_row)
            outputs: dict[int, torch.Tensor] = {}
            for run in runs:
                for job, output in zip(run, self._eager(run, attend_all=jobs[0].graphs)):
                    outputs[job.row] = output
            return [outputs[job.row] for job in jobs]  # in the order asked

    def _graph_shape(self, jobs: list[PassJob]) -> tuple[int, int] | None:
        """The captured pass (rows, tokens) that can serve these jobs, if any: one-token steps
        for batches of rows from the first, longer passes padded to a bucket in the first row."""
        if not self.graphs_ready:
            return None
        length = max(len(job.tokens) for job in jobs)
        if length == 1:
            rows = next((b for b in BATCH_BUCKETS if b > max(job.row for job in jobs)), None)
            return (rows, 1) if (rows, 1) in self._replays else None
        if len(jobs) > 1 or jobs[0].row != 0:
            return None
        bucket = next((b for b in PASS_BUCKETS if b >= length), None)
        if bucket is None or jobs[0].start + bucket > self.max_len:
            return None
        return (1, bucket)

    def _eager(self, jobs: list[PassJob], *, attend_all: bool) -> list[torch.Tensor]:
        """One forward over the rows from the first job's to the last's (sorted by row), their
        tokens padded to the longest; rows between without a job write into the scratch slots."""
        length = max(len(job.tokens) for job in jobs)
        first = jobs[0].row
        rows = slice(first, jobs[-1].row + 1)
        # With graphs on, every pass attends to the whole cache, as the captured ones do, so
        # that eager and replayed passes compute alike.
        end = max(job.start for job in jobs) + length
        attend = self.max_len if attend_all else min(self.max_len, -(-end // EAGER_ATTEND_STEP) * EAGER_ATTEND_STEP)
        span = rows.stop - first
        tokens, starts = [[0] * length for _ in range(span)], [self.cache.scratch] * span
        for job in jobs:
            tokens[job.row - first], starts[job.row - first] = _padded(job.tokens, length), job.start
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        self.cache.lengths[rows].copy_(torch.tensor(starts))
        keep = length - min(len(job.tokens) - job.n_rows for job in jobs)  # last rows any job needs
        logits = self._pass(self.model, input_ids, attend, keep, rows).float()  # (span, keep, vocab)
        skipped = length - keep
        return [
            logits[job.row - first, len(job.tokens) - job.n_rows - skipped : len(job.tokens) - skipped] for job in jobs
        ]

    def _pass(self, forward: object, input_ids: torch.Tensor, attend: int, keep: int, rows: slice) -> torch.Tensor:
        """The one forward pass every path runs: (rows, L) ids at each row's length ->
        (rows, keep, vocab) logits after the last `keep` of them."""
        positions, mask = self.cache.begin_pass(input_ids.shape[1], attend, rows)
        output = forward(  # type: ignore[operator]
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            **{self.loaded.cache_argument: self.cache},
            use_cache=True,
            logits_to_keep=keep,
        )
        self.cache.end_pass(input_ids.shape[1], rows)
        return output.logits

    def _replay(self, jobs: list[PassJob], shape: tuple[int, int]) -> list[torch.Tensor]:
        rows, length = shape
        buffer = self._inputs[shape]
        if length == 1:
            assert self._active is not None
            if rows == 1:  # one generation decoding: small kernels, no copy from the host
                buffer.fill_(jobs[0].tokens[0])
                self.cache.lengths[:1].fill_(jobs[0].start)
                self._active[:1].fill_(True)
            else:  # rows without a step here write into the scratch slot, which nothing reads
                starts, tokens, active = [self.cache.scratch] * rows, [0] * rows, [False] * rows
                for job in jobs:
                    starts[job.row], tokens[job.row], active[job.row] = job.start, job.tokens[0], True
                buffer.copy_(torch.tensor(tokens).view(rows, 1), non_blocking=True)
                self.cache.lengths[:rows].copy_(torch.tensor(starts), non_blocking=True)
                self._active[:rows].copy_(torch.tensor(active), non_blocking=True)
            self._replays[shape]()
            assert self._decode_out is not None
            return [self._decode_out[job.row : job.row + 1] for job in jobs]
        (job,) = jobs
        buffer.copy_(torch.tensor([_padded(job.tokens, length)]), non_blocking=True)  # padding is rolled back
        self.cache.lengths[:1].fill_(job.start)
        self._replays[shape]()
        assert self._pass_out is not None
        return [self._pass_out[len(job.tokens) - job.n_rows : len(job.tokens)]]

    # -- warm-up --------------------------------------------------------------------------------

    def warm_up_graphs(self) -> WarmupReport:
        """Compile and capture the decode step (and capture it for batches of rows) and the
        multi-token passes, once."""
        if self.graphs_ready:
            return self.report
        memory_before = self._device_memory()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        pool = self.capture.new_pool(self.device)
        with torch.inference_mode():
            self._decode_out = torch.zeros((self.rows, vocab), dtype=torch.float32, device=self.device)
            self._active = torch.ones(self.rows, dtype=torch.bool, device=self.device)
            self._pass_out = torch.zeros((PASS_BUCKETS[-1], vocab), dtype=torch.float32, device=self.device)
            shapes = [(1, b) for b in PASS_BUCKETS if b <= self.max_len]
            shapes += [(b, 1) for b in BATCH_BUCKETS[1:] if b <= self.rows]
            for shape in [(1, 1), *shapes]:
                self._inputs[shape] = torch.zeros(shape, dtype=torch.long, device=self.device)
            seconds = {shape: timed(self.device, lambda shape=shape: self._capture(shape, self.model, pool)) for shape in shapes}
            compiled = self.capture.compile(self.model)
            try:
                seconds[(1, 1)] = timed(self.device, lambda: self._capture((1, 1), compiled, pool))
            except RuntimeError as error:  # no compiler here (e.g. no Triton): capture it as it is
                logger.warning("%s: compiling the decode step failed (%s); capturing it uncompiled", self.loaded.name, error)
                compiled = self.model
                seconds[(1, 1)] = timed(self.device, lambda: self._capture((1, 1), self.model, pool))
        self.graphs_ready = True
        self.report = self.report.model_copy(
            update={
                "fast_path": "graphs",
                "decode_capture_seconds": sum(t for (rows, length), t in seconds.items() if length == 1),
                "passes_capture_seconds": sum(t for (rows, length), t in seconds.items() if length > 1),
                "graph_mib": (self._device_memory() - memory_before) / 2**20,
                "captured_lengths": sorted(length for rows, length in seconds if rows == 1),
                "captured_batches": sorted(rows for rows, length in seconds if length == 1),
                "decode_compiled": compiled is not self.model,
            }
        )
        logger.info("%s: graphs captured for %s in %.1f s", self.loaded.name, sorted(seconds), self.report.seconds)
        return self.report

    def replay_decode(self, count: int) -> None:
        """Replay the captured one-token step `count` times back to back from slot 0, with no
        host work between: the floor under the engine's decode loop (for benchmarks)."""
        with torch.inference_mode():
            self.cache.lengths.zero_()
            for _ in range(count):
                self._replays[(1, 1)]()

    def abandon_graphs(self) -> None:
        """Forget a warm-up that failed part way: eager passes only."""
        self.graphs_ready = False
        self._replays.clear()
        self._inputs.clear()
        self._decode_out = self._pass_out = self._active = None

    def _capture(self, shape: tuple[int, int], forward: object, pool: object) -> None:
        rows, length = shape
        inputs = self._inputs[shape]
        out = self._decode_out if length == 1 else self._pass_out
        assert out is not None

        def run() -> None:
            logits = self._pass(forward, inputs, self.max_len, length, slice(0, rows))
            if length == 1:  # a row's logits change only when it stepped: others may not have read theirs
                assert self._active is not None
                out[:rows].copy_(torch.where(self._active[:rows, None], logits[:, -1], out[:rows]))
            else:
                out[:length].copy_(logits[0])

        self._replays[shape] = self.capture.capture(run, pool, reset=self.cache.lengths.zero_, device=self.device)

    def _device_memory(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0


def _padded(tokens: Sequence[int], length: int) -> list[int]:
    """Tokens padded to `length` by repeating the last: any valid id will do, padding is rolled back."""
    return [*tokens, *[tokens[-1]] * (length - len(tokens))]


def _contiguous(jobs: list[PassJob]) -> list[list[PassJob]]:
    """Jobs (sorted by row) split into runs of consecutive rows."""
    runs: list[list[PassJob]] = []
    for job in jobs:
        if runs and runs[-1][-1].row + 1 == job.row:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs
