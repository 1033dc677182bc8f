"""One generation's view of a served model: its token ids, and the step and verdict requests.

The local `ModelSession` reads tokens into a KV cache it owns; a `RemoteSession` only keeps the
ids, since the server's prompt cache finds the longest prefix it already read (a rollback is
cutting the list). A step is streamed and fed token by token to the same `StepBuilder` the
local models use, so it ends where a local model's step would, and the stream is closed there;
a verdict is one request for the next token's probabilities.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import replace

from langchain_confspec.engine.answer_text import AnswerText
from langchain_confspec.engine.decoding import (
    StepBuilder,
    StopScanner,
    TokenChooser,
    WrittenStep,
    take_seed,
)
from langchain_confspec.engine.verification import VerdictReader
from langchain_confspec.errors import RemoteModelError
from langchain_confspec.models.remote import RemoteModel, ServerCounters
from langchain_confspec.records import ModelCounters, Verdict

FAST_PATH = "remote"
"""What the records say a served model's passes ran on."""


class RemoteSession:
    """Token ids and work counters of a served model for one generation."""

    def __init__(self, remote: RemoteModel, prompt_ids: Sequence[int], *, context_length: int | None = None) -> None:
        self.loaded = remote
        self.ids: list[int] = list(prompt_ids)
        self.prompt_tokens = len(prompt_ids)
        self.context_length = context_length or remote.context_length
        self.server = ServerCounters()
        self.tokens_written = 0
        self._steps = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def room(self) -> int:
        return self.context_length - len(self.ids)

    def append(self, ids: Iterable[int]) -> None:
        self.ids.extend(ids)

    def truncate(self, length: int) -> None:
        if length < 0 or length > len(self.ids):
            raise ValueError(f"cannot truncate a context of {len(self.ids)} tokens to {length}")
        del self.ids[length:]

    def counters(self) -> ModelCounters:
        return ModelCounters(
            prompt_tokens=self.prompt_tokens,
            tokens_written=self.tokens_written,
            forward_passes=self.server.work.requests,
            forward_tokens=self.server.work.prompt_tokens,
            fast_path=FAST_PATH,
            server=f"{self.loaded.engine} {self.loaded.version}",
            server_work=self.server.work.model_copy(),
        )

    def write_step_texts(
        self,
        chooser: TokenChooser,
        *,
        budget: int,
        delimiters: Sequence[str],
        stops: StopScanner,
        answer: AnswerText | None = None,
        final: bool = False,
        stream: bool = False,
        seed: Sequence[int] = (),
        opener: str = "",
    ) -> Generator[str, None, WrittenStep]:
        """Write one step of at most `budget` tokens on the server, appending it here; with
        `stream`, yield its settled text as it grows, and with a `seed` start from as much of
        it as the model agrees with (as `decoding.write_step_texts` does)."""
        step = StepBuilder(self, budget=budget, delimiters=delimiters, stops=stops, answer=answer, final=final, opener=opener)
        reused = 0
        if seed:
            done, reused = take_seed(self, step, seed)
            if stream and (text := step.new_text(done)):
                yield text
            if done is not None:
                return replace(done, reused=reused)
        draw = None if chooser.greedy else (chooser.seed + self._steps) % 2**32  # a fresh draw per step, repeatable
        self._steps += 1
        with self.loaded.stream(
            self.ids, self.server, max_tokens=budget - len(step.ids), temperature=chooser.temperature,
            top_p=chooser.top_p, seed=draw,
        ) as tokens:
            for token in tokens:
                done = step.add(token)
                if token not in step.eos:  # an end-of-sequence token never enters the context
                    self.ids.append(token)
                    self.tokens_written += 1
                if stream and (text := step.new_text(done)):
                    yield text
                if done is not None:
                    return replace(done, reused=reused) if seed else done
        raise RemoteModelError(
            f"The server at {self.loaded.base_url} stopped after {len(step.ids)} of a step's {budget} tokens "
            f"without an end of sequence (its context is {self.loaded.context_length} tokens)."
        )

    def greedy_choices(self, start: int) -> list[int]:
        """The model's greedy token at every length from `start` to the end, scored by the
        server in one request (`RemoteModel.scores_proposals`)."""
        return self.loaded.greedy_choices(self.ids, start, self.server)

    def judge(self, reader: VerdictReader) -> Verdict:
        """The model's verdict on the step at the end of the context: one request for the
        probabilities after the verification suffix, which never enters the context."""
        return reader.read_probs(self.loaded.next_token_probs([*self.ids, *reader.suffix_ids], self.server, reader.answer_ids))
