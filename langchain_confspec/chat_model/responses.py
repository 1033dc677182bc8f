"""From engine output to LangChain's: message chunks that merge into the final message, the
custom events callbacks receive, and usage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, ToolCallChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_confspec.chat_model.callbacks import (
    DRAFT_TOKEN_EVENT,
    STEP_EVENT,
    SUMMARY_EVENT,
)
from langchain_confspec.chat_model.structured import tool_call_chunks
from langchain_confspec.chat_model.tool_calls import ToolCallHoldback, parse_tool_calls
from langchain_confspec.config import SpecConfig
from langchain_confspec.engine.constrained import Constraint
from langchain_confspec.engine.decoding import StopHoldback
from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.engine.outputs import RunResult, TextDelta
from langchain_confspec.records import Span, StepRecord


def event_of(item: StepRecord | TextDelta | RunResult) -> tuple[str, dict[str, Any]] | None:
    """The custom event announcing a step record, provisional draft text, or the run's summary."""
    if isinstance(item, RunResult):
        return SUMMARY_EVENT, item.summary.model_dump(mode="json")
    if isinstance(item, TextDelta):
        return (DRAFT_TOKEN_EVENT, {"step": item.step, "text": item.text}) if item.provisional else None
    return STEP_EVENT, item.model_dump(mode="json")


@dataclass(frozen=True)
class Request:
    """One call, validated: what to answer, with which settings, tools and constraint."""

    turns: list[dict[str, Any]]
    config: SpecConfig
    tools: list[dict[str, Any]] | None
    constraint: Constraint | None

    def run(self, engine: ConfSpecEngine, *, stream_text: bool) -> Iterator[StepRecord | TextDelta | RunResult]:
        return engine.run(self.turns, self.config, tools=self.tools, constraint=self.constraint, stream_text=stream_text)


class Chunker:
    """Turns engine output into message chunks that merge into the final message.

    With tools bound, text from the first `<tool_call>` on is held back and the calls come
    as `tool_call_chunks` on the last chunk, so no half-written call is streamed as text.
    Reasoning steps before a constrained object go out as `reasoning_content`, so that the
    content is the object alone.
    """

    def __init__(self, request: Request, metadata: Callable[[RunResult], dict[str, Any]]) -> None:
        self.metadata = metadata  # the message's response_metadata for a result
        self.reasoning_first = request.constraint is not None and request.constraint.after_reasoning
        self.holdback = StopHoldback(request.config.stop)
        self.tool_holdback = ToolCallHoldback() if request.tools else None
        self.tools = request.tools
        self._streamed: dict[int, int] = {}  # step index -> characters of it already streamed

    def chunk(self, item: StepRecord | TextDelta | RunResult) -> ChatGenerationChunk | None:
        if isinstance(item, RunResult):
            return self._last_chunk(item)
        if isinstance(item, TextDelta):
            if item.provisional:  # a draft step awaiting its verdict: announced by an event only
                return None
            self._streamed[item.step] = self._streamed.get(item.step, 0) + len(item.text)
            return self._reasoning_chunk(item.text) if self._is_reasoning(item.span) else self._text_chunk(item.text)
        rest = item.text[self._streamed.pop(item.index, 0) :]  # what was not streamed yet
        return self._reasoning_chunk(rest) if self._is_reasoning(item.span) else self._text_chunk(rest)

    def _is_reasoning(self, span: Span) -> bool:
        return self.reasoning_first and span is Span.TEXT

    @staticmethod
    def _reasoning_chunk(text: str) -> ChatGenerationChunk | None:
        if not text:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": text}))

    def _text_chunk(self, text: str) -> ChatGenerationChunk | None:
        text = self.holdback.feed(text)
        if self.tool_holdback is not None:
            text = self.tool_holdback.feed(text)
        return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None

    def _last_chunk(self, result: RunResult) -> ChatGenerationChunk:
        # Usage, names and float-valued summaries go on the last chunk only: merging chunks
        # sums usage, concatenates strings and refuses two different floats.
        metadata = self.metadata(result)
        content = result.text
        if self.reasoning_first:
            content = "".join(r.text for r in result.records if r.span is not Span.TEXT)
        rest = self.holdback.finish(content)
        call_chunks: list[ToolCallChunk] = []
        if self.tool_holdback is not None:
            answer = parse_tool_calls(result.text, self.tools)
            rest = answer.content[self.tool_holdback.released :]
            call_chunks = tool_call_chunks(answer)
            if answer.tool_calls:
                metadata["finish_reason"] = "tool_calls"
            if answer.invalid_tool_calls:
                metadata["confspec"]["invalid_tool_call_errors"] = {c["id"]: c["error"] for c in answer.invalid_tool_calls}
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=rest,
                chunk_position="last",
                response_metadata=metadata,
                usage_metadata=usage_of(result),
                tool_call_chunks=call_chunks,
            )
        )


def with_tool_call_errors(result: ChatResult) -> ChatResult:
    """Put back the reasons why tool calls were invalid (merging chunks drops them)."""
    message = result.generations[0].message
    errors = message.response_metadata.get("confspec", {}).get("invalid_tool_call_errors")
    if errors and isinstance(message, AIMessage):
        for call in message.invalid_tool_calls:
            call["error"] = errors.get(call["id"] or "", call["error"])
    return result


def usage_of(result: RunResult) -> UsageMetadata:
    output_tokens = sum(r.n_tokens for r in result.records)
    return UsageMetadata(
        input_tokens=result.input_tokens,
        output_tokens=output_tokens,
        total_tokens=result.input_tokens + output_tokens,
        output_token_details=result.output_tokens_by_writer,  # type: ignore[typeddict-item]
    )
