"""One model's static KV cache and every forward pass over it.

A `StaticRunner` is created once per model (per role) by the engine and serves every call,
one at a time under the engine's lock. A pass over `L` new tokens at context length `start`
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

from langchain_confspec.cuda_graphs import GraphCapture, Replay, timed
from langchain_confspec.loading import LoadedModel
from langchain_confspec.static_cache import StaticKVCache

logger = logging.getLogger(__name__)

PASS_BUCKETS = (8, 16, 32, 64, 128, 256)
"""Lengths captured for multi-token passes (verification suffixes, catch-up, proposal checks)."""
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
    decode_compiled: bool = Field(default=False, description="Whether the captured one-token step was compiled first.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def seconds(self) -> float:
        """All of it."""
        return self.allocate_seconds + self.decode_capture_seconds + self.passes_capture_seconds


class StaticRunner:
    """Forward passes of one model over its static cache (row 0), eager or as replayed graphs."""

    def __init__(self, loaded: LoadedModel, context_length: int, capture: GraphCapture) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.max_len = context_length
        self.capture = capture
        self.device = self.model.get_input_embeddings().weight.device
        with torch.inference_mode():
            self.allocate_seconds = timed(self.device, self._allocate)
        self.graphs_ready = False
        self._replays: dict[int, Replay] = {}
        self._inputs: dict[int, torch.Tensor] = {}  # pass length -> its (1, length) input buffer
        self._rows: torch.Tensor | None = None  # (longest pass, vocab) float32 logits of the last replay
        self._length: int | None = 0  # what cache.lengths[0] holds, when known on the host
        self.report = WarmupReport(
            model=loaded.name,
            fast_path="static",
            cache_tokens=context_length,
            cache_mib=self.cache.nbytes / 2**20,
            allocate_seconds=self.allocate_seconds,
        )

    def _allocate(self) -> None:
        self.cache = StaticKVCache(self.model, self.max_len)

    # -- passes -------------------------------------------------------------------------------

    def forward(self, tokens: Sequence[int], start: int, n_rows: int, *, graphs: bool) -> torch.Tensor:
        """Read `tokens` at positions `start`..; next-token logits after each of the last
        `n_rows` of them: (n_rows, vocab) float32, valid until the next pass."""
        if start + len(tokens) > self.max_len:
            raise ValueError(f"a pass to {start + len(tokens)} tokens overruns the static cache of {self.max_len}")
        with torch.inference_mode():
            if self._length != start:  # a rollback, or bucket padding, since the last pass
                self.cache.lengths.fill_(start)
            self._length = None  # unknown until this pass has finished
            shape = self._graph_shape(len(tokens), start) if graphs else None
            if shape is None:
                rows = self._eager(tokens, start, n_rows, attend_all=graphs)
                self._length = start + len(tokens)
                return rows
            self._upload(tokens, self._inputs[shape])
            self._replays[shape]()
            self._length = start + shape
            assert self._rows is not None
            return self._rows[len(tokens) - n_rows : len(tokens)]

    def _graph_shape(self, length: int, start: int) -> int | None:
        """The captured pass that can read `length` tokens at `start`, if any."""
        if not self.graphs_ready:
            return None
        if length == 1:
            return 1
        for bucket in PASS_BUCKETS:
            if bucket >= length:
                return bucket if start + bucket <= self.max_len else None
        return None

    def _eager(self, tokens: Sequence[int], start: int, n_rows: int, *, attend_all: bool) -> torch.Tensor:
        # With graphs on, every pass attends to the whole cache, as the captured ones do, so
        # that eager and replayed passes compute alike.
        end = start + len(tokens)
        attend = self.max_len if attend_all else min(self.max_len, -(-end // EAGER_ATTEND_STEP) * EAGER_ATTEND_STEP)
        input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        return self._pass(self.model, input_ids, attend, n_rows).float()

    def _pass(self, forward: object, input_ids: torch.Tensor, attend: int, n_rows: int) -> torch.Tensor:
        """The one forward pass every path runs: (1, L) ids at each row's length -> (n_rows, vocab)."""
        positions, mask = self.cache.begin_pass(input_ids.shape[1], attend)
        output = forward(  # type: ignore[operator]
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            **{self.loaded.cache_argument: self.cache},
            use_cache=True,
            logits_to_keep=n_rows,
        )
        self.cache.end_pass(input_ids.shape[1])
        return output.logits[0]

    def _upload(self, tokens: Sequence[int], buffer: torch.Tensor) -> None:
        if len(tokens) == 1:
            buffer.fill_(tokens[0])
            return
        # Padding repeats the last token: any valid id will do, its rows are rolled back.
        padded = list(tokens) + [tokens[-1]] * (buffer.shape[1] - len(tokens))
        buffer.copy_(torch.tensor([padded], dtype=torch.long), non_blocking=True)

    # -- warm-up --------------------------------------------------------------------------------

    def warm_up_graphs(self) -> WarmupReport:
        """Compile and capture the decode step and the multi-token passes, once."""
        if self.graphs_ready:
            return self.report
        memory_before = self._device_memory()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        pool = self.capture.new_pool(self.device)
        with torch.inference_mode():
            self._rows = torch.zeros((PASS_BUCKETS[-1], vocab), dtype=torch.float32, device=self.device)
            lengths = [1, *(b for b in PASS_BUCKETS if b <= self.max_len)]
            for length in lengths:
                self._inputs[length] = torch.zeros((1, length), dtype=torch.long, device=self.device)
            seconds = {
                length: timed(self.device, lambda length=length: self._capture(length, self.model, pool))
                for length in lengths[1:]
            }
            compiled = self.capture.compile(self.model)
            try:
                seconds[1] = timed(self.device, lambda: self._capture(1, compiled, pool))
            except RuntimeError as error:  # no compiler here (e.g. no Triton): capture it as it is
                logger.warning("%s: compiling the decode step failed (%s); capturing it uncompiled", self.loaded.name, error)
                compiled = self.model
                seconds[1] = timed(self.device, lambda: self._capture(1, self.model, pool))
            self.cache.lengths.zero_()
            self._length = 0
        self.graphs_ready = True
        self.report = self.report.model_copy(
            update={
                "fast_path": "graphs",
                "decode_capture_seconds": seconds[1],
                "passes_capture_seconds": sum(s for n, s in seconds.items() if n > 1),
                "graph_mib": (self._device_memory() - memory_before) / 2**20,
                "captured_lengths": lengths,
                "decode_compiled": compiled is not self.model,
            }
        )
        logger.info("%s: graphs captured for pass lengths %s in %.1f s", self.loaded.name, lengths, self.report.seconds)
        return self.report

    def replay_decode(self, count: int) -> None:
        """Replay the captured one-token step `count` times back to back from slot 0, with no
        host work between: the floor under the engine's decode loop (for benchmarks)."""
        with torch.inference_mode():
            self.cache.lengths.zero_()
            self._length = None
            for _ in range(count):
                self._replays[1]()

    def abandon_graphs(self) -> None:
        """Forget a warm-up that failed part way: eager passes only, cache position unknown."""
        self.graphs_ready = False
        self._replays.clear()
        self._inputs.clear()
        self._rows = None
        self._length = None

    def _capture(self, length: int, forward: object, pool: object) -> None:
        inputs, rows = self._inputs[length], self._rows
        assert rows is not None

        def run() -> None:
            rows[:length].copy_(self._pass(forward, inputs, self.max_len, length))

        self._replays[length] = self.capture.capture(run, pool, reset=self.cache.lengths.zero_, device=self.device)

    def _device_memory(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
