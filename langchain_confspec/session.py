"""One model's KV cache over one generation.

A `ModelSession` holds the token ids a model has been given and a cache of the prefix it
has already read. New text is appended unread and read lazily, all pending tokens in one
batched forward pass, so every token costs one forward position no matter how it arrived
(written by this model, handed over from the other one, or a verification suffix).
`truncate` crops suffixes and rejected steps back out of the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import DynamicCache

from langchain_confspec.loading import LoadedModel
from langchain_confspec.records import ModelCounters


class ModelSession:
    """Token ids, KV cache and work counters of one model for one generation."""

    def __init__(self, loaded: LoadedModel, prompt_ids: Sequence[int]) -> None:
        self.loaded = loaded
        self.prompt_tokens = len(prompt_ids)
        self.ids: list[int] = list(prompt_ids)
        self._cache = DynamicCache(config=loaded.model.config)
        self._n_read = 0
        self._next_logits: torch.Tensor | None = None  # (vocab,): distribution after ids[:n_read]
        self._checkpoints: dict[int, torch.Tensor] = {}  # length -> next-token logits there
        self.forward_passes = 0
        self.forward_tokens = 0
        self.tokens_written = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def room(self) -> int:
        """Positions left in the model's context window."""
        return self.loaded.context_length - len(self.ids)

    def append(self, ids: Iterable[int]) -> None:
        """Add tokens to the context; they are read on the next `next_logits`."""
        self.ids.extend(ids)

    def next_logits(self, keep: Iterable[int] = ()) -> torch.Tensor:
        """Next-token logits after all ids, reading pending tokens in one forward pass.

        `keep` lists context lengths whose next-token logits should be remembered, so that
        `truncate` back to one of them needs no extra forward pass. Lengths remembered
        earlier than the shortest one named are forgotten: the engine never rewinds past the
        step it is working on, and memory stays bounded over long answers.
        """
        keep = tuple(keep)
        if keep:
            oldest = min(keep)
            self._checkpoints = {k: v for k, v in self._checkpoints.items() if k >= oldest}
        if self._n_read < len(self.ids) or self._next_logits is None:
            self._read_pending(sorted(set(keep)))
        else:
            self._remember(keep, {})
        assert self._next_logits is not None
        return self._next_logits

    def logits_from(self, start: int) -> torch.Tensor:
        """Next-token logits at every length from `start` to the end: (len(self) - start + 1, vocab).

        One forward pass reads the pending tokens; this is how a proposal of several tokens
        is checked at once.
        """
        lengths = range(start, len(self.ids) + 1)
        self.next_logits(keep=lengths)
        return torch.stack([self._checkpoints[length] for length in lengths])

    def truncate(self, length: int) -> None:
        """Forget every token from position `length` on, cropping them out of the cache."""
        if length < 0 or length > len(self.ids):
            raise ValueError(f"cannot truncate a context of {len(self.ids)} tokens to {length}")
        del self.ids[length:]
        self._checkpoints = {k: v for k, v in self._checkpoints.items() if k <= length}
        if self._n_read <= length:
            return
        self._cache.crop(length - self._n_read)
        self._n_read = length
        self._next_logits = self._checkpoints.get(length)
        if self._next_logits is None and length > 0:
            # Unknown distribution at this length: re-read the last token to get it back.
            self._cache.crop(-1)
            self._n_read -= 1

    def counters(self) -> ModelCounters:
        return ModelCounters(
            prompt_tokens=self.prompt_tokens,
            tokens_written=self.tokens_written,
            forward_passes=self.forward_passes,
            forward_tokens=self.forward_tokens,
        )

    def _read_pending(self, keep: list[int]) -> None:
        start = self._n_read
        if start == len(self.ids):  # everything read but the distribution was dropped
            self._cache.crop(-1)
            start = self._n_read = start - 1
        pending = self.ids[start:]
        # Rows needed: one per kept length inside this pass, plus the last one.
        first_row = min([k - start - 1 for k in keep if start < k <= len(self.ids)], default=len(pending) - 1)
        input_ids = torch.tensor([pending], dtype=torch.long, device=self.loaded.device)
        with torch.inference_mode():
            output = self.loaded.model(
                input_ids=input_ids,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=len(pending) - first_row,
            )
        rows = output.logits[0].float()  # (len(pending) - first_row, vocab)
        self.forward_passes += 1
        self.forward_tokens += len(pending)
        previous = self._next_logits
        self._n_read = len(self.ids)
        self._next_logits = rows[-1]
        rows_by_length = {start + first_row + 1 + i: rows[i] for i in range(rows.shape[0])}
        if previous is not None:
            rows_by_length[start] = previous
        self._remember(keep, rows_by_length)

    def _remember(self, keep: Iterable[int], rows_by_length: dict[int, torch.Tensor]) -> None:
        rows_by_length.setdefault(self._n_read, self._next_logits)  # type: ignore[arg-type]
        for length in keep:
            if length in rows_by_length:
                self._checkpoints[length] = rows_by_length[length]
