"""One model's static KV cache and every forward pass over it.

A `StaticRunner` is created once per model (per role) by the engine and serves every call,
each in its own row (its slot in the engine's scheduler); `forward_rows` runs several calls'
passes as one. A pass over `L` new tokens at context length `start` returns next-token logits
for its last rows. Every pass covers a span of rows: jobs' tokens are right-aligned in it, and
padding and rows without a job write to their row's dump slot (`StaticKVCache`), so any mix
of job lengths and rows stays inside each row.

A pass attends to the first `attend` slots of its rows: an eager pass to exactly the furthest
row's context, a replayed graph to the smallest *attend bucket* that holds it
(`attend_buckets`: 1,024 slots, growing fourfold, then the whole row), since graphs are
captured per bucket. Either way a decode step's cost follows the live context, not the
window (and on a CPU, where a tiny model's 30-token pass over 1,024 slots costs twice one
over its 150 live ones, the exact context is what makes batched passes pay). With graphs,
one-token steps replay graphs captured per (rows, attend bucket), and passes of up to
`PASS_BUCKETS[-1]` tokens per (rows, length bucket, attend bucket), for any rows and any batch;
graphs write logits only for the rows that stepped and only the last `keep` positions a caller
reads. Longer passes (a long prompt) run eagerly.
"""

from __future__ import annotations

import logging

import torch
from pydantic import BaseModel, Field, computed_field

from langchain_confspec.models.batching import PassJob, TokenIds
from langchain_confspec.models.cuda_graphs import (
    GraphCapture,
    Replay,
    graph_memory,
    timed,
)
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.static_cache import StaticKVCache

logger = logging.getLogger(__name__)

PASS_BUCKETS = (16, 64, 256)
"""Lengths captured for multi-token passes (verification suffixes, catch-up, proposal checks).
Coarse, since a padded pass costs about what a short one does on a GPU (8 tokens 4.1 ms, 128
tokens 4.7 ms at 0.5B: docs/performance.md), and each bucket multiplies the captures."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""Numbers of rows the passes are captured for below the cache's rows (and the rows themselves)."""
PASS_KEEP = 16
"""Positions whose logits a captured multi-token pass returns per row (its last ones): a
verification or catch-up pass reads one, a proposal check one more than it proposed."""
ATTEND_BASE = 1024
ATTEND_GROWTH = 4


def attend_buckets(max_len: int) -> list[int]:
    """How many slots a pass may attend to: 1,024, then four times more each, then `max_len`."""
    buckets, size = [], ATTEND_BASE
    while size < max_len:
        buckets.append(size)
        size *= ATTEND_GROWTH
    return [*buckets, max_len]


GraphKey = tuple[int, int, int]
"""A captured pass: (rows, tokens per row, attended slots)."""


class WarmupReport(BaseModel):
    """What getting one model's fast path ready cost, once, and what its cache holds."""

    model: str
    fast_path: str
    cache_tokens: int = Field(description="Positions each row of the static KV cache holds (the context per call).")
    cache_rows: int = Field(default=0, description="Rows of the static KV cache: generations that can run at once.")
    cache_mib: float = Field(description="Memory of the static KV cache.")
    budget_mib: float = Field(default=0.0, description="The KV memory budget both models' caches were sized to.")
    allocate_seconds: float = 0.0
    decode_capture_seconds: float = Field(default=0.0, description="Compiling and capturing the one-token steps.")
    passes_capture_seconds: float = Field(default=0.0, description="Capturing the multi-token passes.")
    graph_mib: float = Field(default=0.0, description="Device memory the captured graphs reserve (CUDA only).")
    captured_lengths: list[int] = Field(default_factory=list)
    captured_batches: list[int] = Field(default_factory=list, description="Rows the passes were captured for.")
    captured_attend: list[int] = Field(default_factory=list, description="Attend buckets the passes were captured for.")
    decode_compiled: bool = Field(default=False, description="Whether the captured one-row step was compiled first.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def seconds(self) -> float:
        """All of it."""
        return self.allocate_seconds + self.decode_capture_seconds + self.passes_capture_seconds


class StaticRunner:
    """Forward passes of one model over its static cache, one row per concurrent generation,
    eager or as replayed graphs."""

    def __init__(self, loaded: LoadedModel, context_length: int, capture: GraphCapture, rows: int = 1, budget_mib: float = 0.0) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.max_len = context_length
        self.rows = rows
        self.capture = capture
        self.cache_argument = loaded.cache_argument  # read once: a traced pass must not call into the loader
        self.device = self.model.get_input_embeddings().weight.device
        self.attend_buckets = attend_buckets(context_length)
        self.batch_buckets = sorted({b for b in BATCH_BUCKETS if b < rows} | {rows})  # the last one holds every row
        with torch.inference_mode():
            self.allocate_seconds = timed(self.device, self._allocate)
        self.graphs_ready = False
        self.attended: list[int] | None = None  # set to a list to log the slots each pass attends to
        self._replays: dict[GraphKey, Replay] = {}
        self._inputs: dict[tuple[int, int], torch.Tensor] = {}  # (rows, tokens) -> its input ids buffer
        self._decode_out: torch.Tensor | None = None  # (rows, vocab): each row's logits from its last decode step
        self._pass_out: torch.Tensor | None = None  # (rows, PASS_KEEP, vocab): each row's last pass's logits
        self.report = WarmupReport(
            model=loaded.name,
            fast_path="static",
            cache_tokens=context_length,
            cache_rows=rows,
            cache_mib=self.cache.nbytes / 2**20,
            budget_mib=budget_mib,
            allocate_seconds=self.allocate_seconds,
        )

    def _allocate(self) -> None:
        self.cache = StaticKVCache(self.model, self.max_len, rows=self.rows)

    def attend_for(self, end: int) -> int:
        """The attend bucket of a pass whose furthest row reaches `end` tokens."""
        return next(b for b in self.attend_buckets if b >= end)

    # -- passes -------------------------------------------------------------------------------

    def forward(self, tokens: TokenIds, start: int, n_rows: int, *, graphs: bool, row: int = 0) -> torch.Tensor:
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
            if not 0 <= job.row < self.rows:
                raise ValueError(f"row {job.row} is outside the static cache's {self.rows} rows")
        with torch.inference_mode():
            key = self._graph_key(jobs) if jobs[0].graphs else None
            # an eager pass attends to exactly the live context: its shapes are free to change
            attend = key[2] if key is not None else max(job.start + len(job.tokens) for job in jobs)
            if self.attended is not None:
                self.attended.append(attend)
            outputs = self._replay(jobs, key) if key is not None else self._eager(jobs, attend)
            if len(jobs) > 1 and all(len(job.tokens) == 1 for job in jobs):
                self._read_choices(jobs, outputs)
            return outputs

    def _read_choices(self, jobs: list[PassJob], outputs: list[torch.Tensor]) -> None:
        """Each decoding job's next token, chosen on the device by its own generation's rule
        (greedy, or sampled with its own seeded generator) and all read back with one
        synchronisation instead of one per row. A lone job chooses and reads its own, as before."""
        vocab = self.loaded.vocab_size  # padded embedding rows never win
        picked = [(job, job.pick(output[-1, :vocab])) for job, output in zip(jobs, outputs) if job.pick is not None]
        if not picked:
            return
        for (job, _), token in zip(picked, torch.stack([choice for _, choice in picked]).tolist()):
            job.chosen = int(token)

    def _graph_key(self, jobs: list[PassJob]) -> GraphKey | None:
        """The captured pass that can serve these jobs, if any."""
        if not self.graphs_ready:
            return None
        rows = next(b for b in self.batch_buckets if b > max(job.row for job in jobs))
        length = max(len(job.tokens) for job in jobs)
        bucket = 1 if length == 1 else next((b for b in PASS_BUCKETS if b >= length), None)
        if bucket is None or max(job.n_rows for job in jobs) > min(bucket, PASS_KEEP):
            return None
        key = (rows, bucket, self.attend_for(max(job.start + len(job.tokens) for job in jobs)))
        return key if key in self._replays else None

    def _eager(self, jobs: list[PassJob], attend: int) -> list[torch.Tensor]:
        """One forward over the span of rows from the lowest job's row to the highest's."""
        first, last = min(job.row for job in jobs), max(job.row for job in jobs)
        span = slice(first, last + 1)
        length = max(len(job.tokens) for job in jobs)
        keep = max(job.n_rows for job in jobs)
        ids = self._stage(jobs, span, length)
        logits = self._pass(self.model, ids, attend, keep, span).float()  # (span, keep, vocab)
        return [logits[job.row - first, keep - job.n_rows :] for job in jobs]

    def _stage(self, jobs: list[PassJob], span: slice, length: int, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Put the jobs' tokens (right-aligned), starts and counts in the pass's inputs for `span`."""
        width = span.stop - span.start
        tokens, starts, counts = [[0] * length for _ in range(width)], [0] * width, [0] * width
        for job in jobs:
            at = job.row - span.start
            if not isinstance(job.tokens, torch.Tensor):
                tokens[at][length - len(job.tokens) :] = job.tokens
            starts[at], counts[at] = job.start, len(job.tokens)
        staged = torch.tensor([*starts, *counts, *(t for row in tokens for t in row)], dtype=torch.long)
        staged = staged.to(self.device, non_blocking=True)  # one copy to the device
        self.cache.starts[span].copy_(staged[:width])
        self.cache.counts[span].copy_(staged[width : 2 * width])
        if ids is None:
            ids = staged[2 * width :].view(width, length)
        else:
            ids.copy_(staged[2 * width :].view(width, length))
        for job in jobs:  # ids still on the device are copied there, never read back
            if isinstance(job.tokens, torch.Tensor):
                ids[job.row - span.start, length - len(job.tokens) :].copy_(job.tokens)
        return ids

    def _pass(self, forward: object, input_ids: torch.Tensor, attend: int, keep: int, span: slice) -> torch.Tensor:
        """The one forward pass every path runs: (span, L) ids as the cache's starts and counts
        place them -> (span, keep, vocab) logits after the last `keep` of them."""
        positions, mask = self.cache.begin_pass(input_ids.shape[1], attend, span)
        output = forward(  # type: ignore[operator]
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            **{self.cache_argument: self.cache},
            use_cache=True,
            logits_to_keep=keep,
        )
        self.cache.end_pass()
        return output.logits

    def _replay(self, jobs: list[PassJob], key: GraphKey) -> list[torch.Tensor]:
        rows, length, _ = key
        if rows == 1 and length == 1:  # one generation decoding: small kernels, no copy from the host
            (job,) = jobs
            if isinstance(job.tokens, torch.Tensor):
                self._inputs[(1, 1)].copy_(job.tokens.view(1, 1))
            else:
                self._inputs[(1, 1)].fill_(job.tokens[0])
            self.cache.starts[:1].fill_(job.start)
            self.cache.counts[:1].fill_(1)
        else:
            self._stage(jobs, slice(0, rows), length, self._inputs[(rows, length)])
        self._replays[key]()
        if length == 1:
            assert self._decode_out is not None
            return [self._decode_out[job.row : job.row + 1] for job in jobs]
        assert self._pass_out is not None
        keep = min(length, PASS_KEEP)
        return [self._pass_out[job.row, keep - job.n_rows : keep] for job in jobs]

    # -- warm-up --------------------------------------------------------------------------------

    def graph_keys(self) -> list[GraphKey]:
        """Every pass `warm_up_graphs` captures: per rows and attend bucket, the one-token step
        and each multi-token length."""
        batches = self.batch_buckets
        lengths = [1, *(length for length in PASS_BUCKETS if length <= self.max_len)]
        return [(b, length, attend) for length in lengths for b in batches for attend in self.attend_buckets]

    def warm_up_graphs(self) -> WarmupReport:
        """Capture every pass in `graph_keys` (the one-row step compiled first), once.

        Capturing runs each pass with no row in it (every count 0): it writes only dump slots
        and leaves every row's logits as they were.
        """
        if self.graphs_ready:
            return self.report
        vocab = self.model.get_output_embeddings().weight.shape[0]
        pool = self.capture.new_pool(self.device)
        seconds: dict[GraphKey, float] = {}
        with torch.inference_mode(), graph_memory(self.device) as memory:
            self._decode_out = torch.zeros((self.rows, vocab), dtype=torch.float32, device=self.device)
            self._pass_out = torch.zeros((self.rows, PASS_KEEP, vocab), dtype=torch.float32, device=self.device)
            self.cache.counts.zero_()
            compiled = self.capture.compile(self.model)
            for key in self.graph_keys():
                rows, length, _ = key
                self._inputs.setdefault((rows, length), torch.zeros((rows, length), dtype=torch.long, device=self.device))
                forward = compiled if (rows, length) == (1, 1) else self.model
                try:
                    seconds[key] = timed(self.device, lambda key=key, forward=forward: self._capture(key, forward, pool))
                except RuntimeError as error:
                    if forward is self.model:
                        raise
                    logger.warning("%s: compiling the decode step failed (%s); capturing it uncompiled", self.loaded.name, error)
                    compiled = self.model
                    seconds[key] = timed(self.device, lambda key=key: self._capture(key, self.model, pool))
        self.graphs_ready = True
        self.report = self.report.model_copy(
            update={
                "fast_path": "graphs",
                "decode_capture_seconds": sum(t for (_, length, _), t in seconds.items() if length == 1),
                "passes_capture_seconds": sum(t for (_, length, _), t in seconds.items() if length > 1),
                "graph_mib": memory.mib,
                "captured_lengths": sorted({length for _, length, _ in seconds}),
                "captured_batches": sorted({rows for rows, _, _ in seconds}),
                "captured_attend": sorted({attend for _, length, attend in seconds if length == 1}),
                "decode_compiled": compiled is not self.model,
            }
        )
        logger.info("%s: %d graphs captured in %.1f s", self.loaded.name, len(seconds), self.report.seconds)
        return self.report

    def replay_decode(self, count: int, *, live: int = 1) -> None:
        """Replay the captured one-row step `count` times back to back at position `live - 1`,
        with no host work between: the floor under the engine's decode loop (for benchmarks)."""
        key = (1, 1, self.attend_for(live))
        with torch.inference_mode():
            self.cache.starts[:1].fill_(live - 1)
            self.cache.counts[:1].fill_(1)
            for _ in range(count):
                self._replays[key]()

    def abandon_graphs(self) -> None:
        """Forget a warm-up that failed part way: eager passes only."""
        self.graphs_ready = False
        self._replays.clear()
        self._inputs.clear()
        self._decode_out = self._pass_out = None

    def _capture(self, key: GraphKey, forward: object, pool: object) -> None:
        rows, length, attend = key
        inputs = self._inputs[(rows, length)]
        keep = 1 if length == 1 else min(length, PASS_KEEP)
        counts = self.cache.counts[:rows]

        def run() -> None:  # a row's logits change only when it stepped: others may not have read theirs
            logits = self._pass(forward, inputs, attend, keep, slice(0, rows))  # (rows, keep, vocab)
            stepped = (counts > 0)[:, None]
            if length == 1:
                out = self._decode_out[:rows]  # type: ignore[index]
                out.copy_(torch.where(stepped, logits[:, -1].float(), out))
            else:
                out = self._pass_out[:rows, :keep]  # type: ignore[index]
                out.copy_(torch.where(stepped[:, :, None], logits.float(), out))

        self._replays[key] = self.capture.capture(run, pool, reset=self.cache.counts.zero_, device=self.device)
