"""Tool calls in Hermes / Qwen style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Models write tool calls as tagged JSON in their text. `parse_tool_calls` splits an answer
into its plain text and its calls, valid or not (a malformed call keeps its raw text and
the reason it could not be read); `ToolCallHoldback` keeps a half-written call out of a
stream until the answer is complete.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN_TAG) + r"(.*?)(?:" + re.escape(CLOSE_TAG) + r"|$)", re.DOTALL)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """How a call is written in a conversation, for templates that have no tool-call syntax."""
    return f"{OPEN_TAG}\n{json.dumps({'name': name, 'arguments': arguments})}\n{CLOSE_TAG}"


@dataclass
class ParsedAnswer:
    """An answer's text outside tool-call blocks, and the calls, valid or invalid."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def parse_tool_calls(text: str) -> ParsedAnswer:
    """Split `text` into plain content and tool calls; an unclosed block at the end counts as a call."""
    pieces: list[str] = []
    answer = ParsedAnswer(content="")
    position = 0
    for match in _BLOCK.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        raw = match.group(1).strip()
        call_id = new_call_id()
        try:
            name, arguments = _read_call(raw)
        except _MalformedCall as exc:
            # `args` keeps the whole block as written: as a streamed chunk it must not read as
            # (partial) JSON, or merging chunks would turn the broken call into a valid one.
            block = match.group(0)
            answer.invalid_tool_calls.append(invalid_tool_call(name=_guess_name(raw), args=block, id=call_id, error=str(exc)))
        else:
            answer.tool_calls.append(tool_call(name=name, args=arguments, id=call_id))
    pieces.append(text[position:])
    answer.content = "".join(pieces)  # not stripped: streams have already sent the text before a call
    return answer


class _MalformedCall(Exception):
    """Why a tool-call block could not be read."""


def _read_call(raw: str) -> tuple[str, dict[str, Any]]:
    try:
        call = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _MalformedCall(f"The tool call is not valid JSON: {exc.msg} at character {exc.pos}.") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise _MalformedCall('A tool call must be a JSON object with a "name" string.')
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise _MalformedCall("The tool call's arguments are a string that is not JSON.") from None
    if not isinstance(arguments, dict):
        raise _MalformedCall("A tool call's arguments must be a JSON object.")
    return call["name"], arguments


def _guess_name(raw: str) -> str | None:
    found = re.search(r'"name"\s*:\s*"([^"]*)"', raw)
    return found.group(1) if found else None


class ToolCallHoldback:
    """Releases streamed text up to where a tool call begins (or may be beginning)."""

    def __init__(self) -> None:
        self._pending = ""
        self._in_call = False
        self.released = 0

    def feed(self, text: str) -> str:
        if self._in_call:
            return ""
        self._pending += text
        start = self._pending.find(OPEN_TAG)
        if start >= 0:
            self._in_call = True
            cut = start
        else:
            cut = len(self._pending) - max(
                (n for n in range(1, len(OPEN_TAG)) if self._pending.endswith(OPEN_TAG[:n])), default=0
            )
        safe, self._pending = self._pending[:cut], self._pending[cut:]
        self.released += len(safe)
        return safe
