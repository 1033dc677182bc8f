"""Writing one reasoning step with one model.

`write_step` decodes token by token over a `ModelSession` until a step delimiter, an
end-of-sequence token, a stop string or its token budget. Delimiters and stop strings are
matched on the decoded text, so they are found even when they straddle token boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from langchain_confspec.config import SpecConfig
from langchain_confspec.records import StepEnd
from langchain_confspec.session import ModelSession


class TokenChooser:
    """Greedy choice, or temperature / top-p sampling from a seeded generator."""

    def __init__(self, config: SpecConfig) -> None:
        self.temperature = config.temperature
        self.top_p = config.top_p
        self._generator = torch.Generator()
        if config.seed is not None:
            self._generator.manual_seed(config.seed)
        else:
            self._generator.seed()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def choose(self, logits: torch.Tensor) -> int:
        if self.greedy:
            return int(torch.argmax(logits))
        return self.sample(self.distribution(logits))

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution: temperature, then top-p truncation, renormalised."""
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return probs / probs.sum()

    def sample(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self._generator))


@dataclass(frozen=True)
class WrittenStep:
    """A step as one model wrote it."""

    ids: list[int]
    text: str
    end: StepEnd
    stop_at: int | None = None  # index in `text` where a stop string begins


class StopScanner:
    """Finds stop strings in the answer, including across step and token boundaries."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._tail_len = max((len(s) for s in self.stops), default=1) - 1
        self._tail = ""

    def find(self, step_text: str) -> int | None:
        """Index in `step_text` where the first stop string begins (negative: it began earlier)."""
        if not self.stops:
            return None
        window = self._tail + step_text
        hits = [i for i in (window.find(s) for s in self.stops) if i >= 0]
        return min(hits) - len(self._tail) if hits else None

    def advance(self, step_text: str) -> None:
        """Remember the end of an accepted step, where the next stop string may begin."""
        if self._tail_len:
            self._tail = (self._tail + step_text)[-self._tail_len :]


def ends_step(text: str, delimiters: Sequence[str]) -> bool:
    """True once a delimiter follows some non-blank text (leading blank lines belong to the step)."""
    content_start = len(text) - len(text.lstrip())
    return any(text.find(d, content_start) > content_start for d in delimiters)


class StepBuilder:
    """Grows a step token by token and says when, and why, it ends."""

    def __init__(self, session: ModelSession, *, budget: int, delimiters: Sequence[str], stops: StopScanner) -> None:
        self.tokenizer = session.loaded.tokenizer
        self.eos = session.loaded.eos_token_ids
        self.budget = budget
        self.delimiters = delimiters
        self.stops = stops
        self.ids: list[int] = []
        self.text = ""

    def add(self, token: int) -> WrittenStep | None:
        """Take the next token; return the finished step if this token ends it.

        An end-of-sequence token ends the step without becoming part of it.
        """
        if token in self.eos:
            return WrittenStep(self.ids, self.text, StepEnd.EOS)
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        stop_at = self.stops.find(self.text)
        if stop_at is not None:
            return WrittenStep(self.ids, self.text, StepEnd.STOP, stop_at)
        if ends_step(self.text, self.delimiters):
            return WrittenStep(self.ids, self.text, StepEnd.DELIMITER)
        if len(self.ids) >= self.budget:
            return WrittenStep(self.ids, self.text, StepEnd.LENGTH)
        return None


def write_step(
    session: ModelSession,
    chooser: TokenChooser,
    *,
    budget: int,
    delimiters: Sequence[str],
    stops: StopScanner,
) -> WrittenStep:
    """Decode one step of at most `budget` tokens, appending it to `session`."""
    step = StepBuilder(session, budget=budget, delimiters=delimiters, stops=stops)
    while True:
        token = chooser.choose(session.next_logits())
        done = step.add(token)
        if token not in step.eos:  # an end-of-sequence token never enters the context
            session.append((token,))
            session.tokens_written += 1
        if done is not None:
            return done


class StopHoldback:
    """Releases streamed text only once no stop string can still begin inside it.

    A stop string may straddle two steps; holding back the tail of each step that could be
    the start of one keeps the streamed text equal to the final, stop-trimmed answer.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._pending = ""
        self.released = 0

    def feed(self, text: str) -> str:
        """Add a step's text; return the part now safe to stream."""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:  # a whole stop string: nothing from it on is ever released
            cut = min(hits)
        else:
            cut = len(self._pending) - max(
                (n for s in self.stops for n in range(1, len(s)) if self._pending.endswith(s[:n])), default=0
            )
        safe, self._pending = self._pending[:cut], self._pending[cut:]
        self.released += len(safe)
        return safe

    def finish(self, final_text: str) -> str:
        """The rest of the final answer after what was already released."""
        rest = final_text[self.released :]
        self.released = len(final_text)
        return rest
