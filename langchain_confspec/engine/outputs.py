"""What a generation gives back: text as it settles (when streaming), and its result."""

from __future__ import annotations

from dataclasses import dataclass

from langchain_confspec.records import RunSummary, Span, StepRecord, Writer


@dataclass(frozen=True)
class TextDelta:
    """Text a step settled while it was being written (streaming only). `provisional` text is
    a draft step still awaiting its verdict; the rest is final as soon as it is settled."""

    text: str
    step: int
    writer: Writer
    provisional: bool
    span: Span = Span.TEXT


@dataclass(frozen=True)
class RunResult:
    """The answer of one generation and how it was produced."""

    text: str
    records: list[StepRecord]
    summary: RunSummary

    @property
    def input_tokens(self) -> int:
        counters = self.summary.target if self.summary.target.prompt_tokens else self.summary.draft
        return counters.prompt_tokens

    @property
    def output_tokens_by_writer(self) -> dict[str, int]:
        counts = {w.value: 0 for w in Writer}
        for record in self.records:
            counts[record.writer.value] += record.n_tokens
        return counts
