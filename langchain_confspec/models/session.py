"""One model's view of one generation: its token ids, what its KV cache has read, checkpoints.

A `ModelSession` holds the token ids a model has been given and knows how many of them its
KV cache has read. New text is appended unread and read lazily, all pending tokens in one
batched forward pass, so every token costs one forward position no matter how it arrived
(written by this model, handed over from the other one, or a verification suffix).
`truncate` rolls suffixes and rejected steps back out.

Where the keys and values live is a `KVBackend`: a `DynamicCache` of the call's own
(`fast_path="off"`), or the call's row of the model's preallocated static cache, shared by
concurrent calls (a row each) and rolled back by position (`static`, `graphs`). The step logic above
sees no difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from langchain_confspec.models.batching import BatchScheduler, PassJob, TokenIds
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.static_runner import StaticRunner
from langchain_confspec.records import ModelCounters


class TokenChooser(Protocol):
    """How the engine picks a token from logits (`engine.decoding.TokenChooser`): on the
    device for a batched step (`pick`), or from one row's logits (`choose`)."""

    def pick(self, logits: torch.Tensor) -> torch.Tensor: ...

    def choose(self, logits: torch.Tensor) -> int: ...


class KVBackend(Protocol):
    """Reads tokens into a KV cache and forgets them again."""

    def forward(self, tokens: TokenIds, start: int, n_rows: int) -> torch.Tensor:
        """Read `tokens` (host ids, or a tensor of them on the model's device) after the first `start` ones: logits after each of the last `n_rows`,
        (n_rows, vocab) float32, valid until the next `forward`."""
        ...

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on."""
        ...

    pick: Callable[[torch.Tensor], torch.Tensor] | None
    """Set while the session chooses a token: a batched pass then makes this row's choice and
    reads it back with every other row's."""
    last_choice: int | None
    """The token `pick` chose after the last one-token `forward`, if the backend read it back
    already, else None."""


class DynamicKV:
    """A `DynamicCache` owned by one generation, cropped on rollback. Its passes run in the
    generation's own thread, one at a time per model (`turn`: concurrent passes would only
    fight over the cores), marked `away` so that they hold up no batch."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        away: Callable[[], AbstractContextManager[None]] = nullcontext,
        turn: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.loaded = loaded
        self._cache = DynamicCache(config=loaded.model.config)
        self._length = 0
        self._away = away
        self._turn = turn or nullcontext()
        self.pick: Callable[[torch.Tensor], torch.Tensor] | None = None  # never batched: unused
        self.last_choice: int | None = None

    def forward(self, tokens: TokenIds, start: int, n_rows: int) -> torch.Tensor:
        assert start == self._length, "a dynamic cache reads on from where it ends"
        if isinstance(tokens, torch.Tensor):
            input_ids = tokens.view(1, -1)
        else:
            input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.loaded.device)
        with torch.inference_mode(), self._away(), self._turn:
            output = self.loaded.model(
                input_ids=input_ids, use_cache=True, logits_to_keep=n_rows, **{self.loaded.cache_argument: self._cache}
            )
        self._length += len(tokens)
        return output.logits[0].float()

    def rewind(self, length: int) -> None:
        if length < self._length:
            self._cache.crop(length - self._length)
            self._length = length


class StaticKV:
    """A generation's row of a model's static cache: rolling back is only remembering where to
    write next. With a scheduler, its passes run in batches with other generations' rows; the
    size of each batch is logged in `batch_sizes`."""

    def __init__(
        self,
        runner: StaticRunner,
        *,
        graphs: bool,
        row: int = 0,
        scheduler: BatchScheduler | None = None,
        role: str = "",
        batch_sizes: list[int] | None = None,
    ) -> None:
        self.runner = runner
        self.pick: Callable[[torch.Tensor], torch.Tensor] | None = None  # set around a choice of the next token
        self.graphs = graphs
        self.row = row
        self.scheduler = scheduler
        self.role = role
        self.batch_sizes = batch_sizes if batch_sizes is not None else []
        self.last_choice: int | None = None

    def forward(self, tokens: TokenIds, start: int, n_rows: int) -> torch.Tensor:
        job = PassJob(self.role, self.row, tokens, start, n_rows, self.graphs, pick=self.pick)
        if self.scheduler is None:
            (logits,) = self.runner.forward_rows([job])
            job.batch_size = 1
        else:
            logits = self.scheduler.forward(job)
        self.batch_sizes.append(job.batch_size)
        self.last_choice = job.chosen
        return logits

    def rewind(self, length: int) -> None:
        return None  # the next pass says where it starts


class ModelSession:
    """Token ids, KV cache and work counters of one model for one generation."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompt_ids: Sequence[int],
        *,
        kv: KVBackend | None = None,
        context_length: int | None = None,
        fast_path: str = "off",
        warmup_seconds: float = 0.0,
    ) -> None:
        self.loaded = loaded
        self.fast_path = fast_path
        self.warmup_seconds = warmup_seconds
        self.context_length = context_length or loaded.context_length
        self.prompt_tokens = len(prompt_ids)
        self.ids: list[int] = list(prompt_ids)
        self._kv = kv or DynamicKV(loaded)
        self._n_read = 0
        self._next_logits: torch.Tensor | None = None  # (vocab,): distribution after ids[:n_read]
        self._next_choice: int | None = None  # the next token, when the batched pass that made the logits chose it
        self._checkpoints: dict[int, torch.Tensor] = {}  # length -> next-token logits there (own copies)
        self._ahead = 0  # positions read past `ids` whose ids are still on the device (`read_ahead`)
        self.forward_passes = 0
        self.forward_tokens = 0
        self.tokens_written = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def room(self) -> int:
        """Positions left in the context window the engine gives this model."""
        return self.context_length - len(self.ids)

    def append(self, ids: Iterable[int]) -> None:
        """Add tokens to the context; they are read on the next `next_logits`."""
        self._not_ahead()
        self.ids.extend(ids)

    def read_ahead(self, tokens: torch.Tensor, *, keep: bool = False) -> torch.Tensor:
        """Read `tokens`, ids still on the device (a 1-D tensor), after the context and its
        pending ids in one forward pass, without reading them back: next-token logits after
        each of them, (len(tokens), vocab). With `keep`, the logits before the first one lead,
        (len(tokens) + 1, vocab), and every row is remembered for `truncate`, as `logits_from`
        does. Until `settle` names these tokens, the session can only read further ahead.
        """
        end = len(self.ids) + self._ahead
        start = self._n_read
        assert start < end or self._next_logits is not None, "a rollback leaves a token to re-read or the logits kept"
        pending = self.ids[start:]  # empty while reading ahead: `append` waits for `settle`
        before = None
        if keep:
            self._checkpoints = {k: v for k, v in self._checkpoints.items() if k >= end}  # as `next_logits` forgets
            if not pending:
                assert self._next_logits is not None
                before = self._next_logits.clone()[None]  # before the pass can overwrite it
        inputs = tokens
        if pending:
            inputs = torch.cat([torch.tensor(pending, dtype=torch.long).to(tokens.device, non_blocking=True), tokens])
        n_rows = len(tokens) + (1 if keep and pending else 0)
        rows = self._kv.forward(inputs, start, n_rows)[:, : self.loaded.vocab_size]
        self.forward_passes += 1
        self.forward_tokens += len(inputs)
        if keep:
            rows = rows.clone() if before is None else torch.cat([before, rows])
            for offset, logits in enumerate(rows):
                self._checkpoints.setdefault(end + offset, logits)
        self._n_read = end + len(tokens)
        self._ahead += len(tokens)
        self._next_logits = rows[-1]
        self._next_choice = None
        return rows

    def settle(self, ids: Sequence[int]) -> None:
        """Name the tokens read ahead, once their ids are back on the host."""
        if len(ids) != self._ahead:
            raise ValueError(f"{len(ids)} ids named for {self._ahead} tokens read ahead")
        self._ahead = 0
        self.ids.extend(ids)

    def next_logits(self, keep: Iterable[int] = ()) -> torch.Tensor:
        """Next-token logits after all ids (valid until the next forward pass), reading pending
        tokens in one forward pass.

        `keep` lists context lengths whose next-token logits should be remembered, so that
        `truncate` back to one of them needs no extra forward pass. Lengths remembered
        earlier than the shortest one named are forgotten: the engine never rewinds past the
        step it is working on, and memory stays bounded over long answers.
        """
        self._not_ahead()
        keep = tuple(keep)
        if keep:
            oldest = min(keep)
            self._checkpoints = {k: v for k, v in self._checkpoints.items() if k >= oldest}
            if self._n_read in keep and self._next_logits is not None:
                self._save(self._n_read, self._next_logits)  # before a pass can overwrite it
        if self._n_read < len(self.ids) or self._next_logits is None:
            self._read_pending(keep)
        assert self._next_logits is not None
        return self._next_logits

    def choose_next(self, chooser: TokenChooser) -> int:
        """The next token `chooser` picks after all ids. In a batched decode step every row's
        choice is made on the device and read back at once, so this row needs no
        synchronisation of its own; alone, it chooses as `chooser.choose` does."""
        self._kv.pick = chooser.pick
        try:
            logits = self.next_logits()
        finally:
            self._kv.pick = None
        choice, self._next_choice = self._next_choice, None  # a choice is used once: a second draw samples anew
        return choice if choice is not None else chooser.choose(logits)

    def logits_from(self, start: int) -> torch.Tensor:
        """Next-token logits at every length from `start` to the end: (len(self) - start + 1, vocab).

        One forward pass reads the pending tokens; this is how a proposal of several tokens
        is checked at once.
        """
        lengths = range(start, len(self.ids) + 1)
        self.next_logits(keep=lengths)
        return torch.stack([self._checkpoints[length] for length in lengths])

    def greedy_choices(self, start: int) -> list[int]:
        """The model's greedy next token at every length from `start` to the end: the tokens
        from `start` on checked as a proposal, with one forward pass and one read."""
        return torch.argmax(self.logits_from(start), dim=-1).tolist()  # type: ignore[no-any-return]

    def truncate(self, length: int) -> None:
        """Forget every token from position `length` on, rolling them out of the cache."""
        self._not_ahead()
        if length < 0 or length > len(self.ids):
            raise ValueError(f"cannot truncate a context of {len(self.ids)} tokens to {length}")
        del self.ids[length:]
        self._checkpoints = {k: v for k, v in self._checkpoints.items() if k <= length}
        if self._n_read <= length:
            return
        self._n_read = length
        self._next_logits = self._checkpoints.get(length)
        self._next_choice = None
        if self._next_logits is None and length > 0:
            self._n_read -= 1  # unknown distribution here: re-read the last token to get it back
        self._kv.rewind(self._n_read)

    def _not_ahead(self) -> None:
        if self._ahead:
            raise RuntimeError(f"{self._ahead} tokens were read ahead and not settled")

    def counters(self) -> ModelCounters:
        return ModelCounters(
            prompt_tokens=self.prompt_tokens,
            tokens_written=self.tokens_written,
            forward_passes=self.forward_passes,
            forward_tokens=self.forward_tokens,
            fast_path=self.fast_path,
            warmup_seconds=self.warmup_seconds,
        )

    def _read_pending(self, keep: Sequence[int]) -> None:
        start = self._n_read
        assert start < len(self.ids), "a rollback leaves a token to re-read or the logits kept"
        pending = self.ids[start:]
        # Rows needed: one per kept length inside this pass, plus the last one.
        kept_inside = [k for k in keep if start < k <= len(self.ids)]
        n_rows = len(self.ids) - min(kept_inside, default=len(self.ids)) + 1
        # Padded embedding rows are cut before anything chooses, samples or compares: they never win.
        rows = self._kv.forward(pending, start, n_rows)[:, : self.loaded.vocab_size]  # (n_rows, vocab)
        self.forward_passes += 1
        self.forward_tokens += len(pending)
        self._n_read = len(self.ids)
        self._next_logits = rows[-1]
        self._next_choice = self._kv.last_choice if len(pending) == 1 else None
        first_length = len(self.ids) - n_rows + 1
        for length in kept_inside:
            self._save(length, rows[length - first_length])

    def _save(self, length: int, logits: torch.Tensor) -> None:
        if length not in self._checkpoints:
            self._checkpoints[length] = logits.clone()
