"""Tool calls in Hermes / Qwen style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Models write tool calls as tagged JSON in their text. `parse_tool_calls` splits an answer
into its plain text and its calls, valid or not (a malformed call, or one that names a tool
that is not bound or whose arguments do not fit its schema, keeps its raw text and the reason);
`ToolCallHoldback` keeps a half-written call out of a stream until the answer is complete.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

from langchain_confspec.models.prompting import CLOSE_TAG, OPEN_TAG

_BLOCK = re.compile(re.escape(OPEN_TAG) + r"(.*?)(?:" + re.escape(CLOSE_TAG) + r"|$)", re.DOTALL)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ParsedAnswer:
    """An answer's text outside tool-call blocks, and the calls, valid or invalid."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None = None) -> ParsedAnswer:
    """Split `text` into plain content and tool calls; an unclosed block at the end counts as a call.

    With the bound `tools` (OpenAI-style definitions), a call is valid only if it names one of
    them with arguments that fit its parameters: an agent runtime looks tools up by name and
    calls them with the arguments as given, so anything else must come back as invalid."""
    schemas = None if tools is None else {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
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
            if schemas is not None:
                _check_bound(name, arguments, schemas)
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


def _check_bound(name: str, arguments: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> None:
    if name not in schemas:
        raise _MalformedCall(f"The tool {name!r} is not bound; the bound tools are {sorted(schemas)}.")
    problem = schema_mismatch(arguments, schemas[name])
    if problem is not None:
        raise _MalformedCall(f"The arguments of {name!r} do not fit its schema: {problem}.")


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


def schema_mismatch(value: Any, schema: dict[str, Any], where: str = "arguments") -> str | None:
    """Why `value` does not fit the JSON `schema` (types, required and unknown keys, enums,
    items, alternatives), or None when it does; keywords it does not know are not checked."""
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        problems = [schema_mismatch(value, option, where) for option in options]
        return None if any(p is None for p in problems) else next(p for p in problems if p)
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} is {value!r}, not one of {schema['enum']}"
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        fits = any(isinstance(value, _JSON_TYPES.get(k, object)) for k in allowed)
        if isinstance(value, bool) and "boolean" not in allowed:
            fits = False  # JSON true is no number
        if not fits:
            return f"{where} is {type(value).__name__} {value!r}, not {' or '.join(allowed)}"
    if isinstance(value, dict) and ("properties" in schema or schema.get("type") == "object"):
        properties = schema.get("properties", {})
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            return f"{where} lacks {missing}"
        unknown = [k for k in value if k not in properties]
        if unknown and not schema.get("additionalProperties", False):
            return f"{where} has unknown keys {unknown}"
        for key, item in value.items():
            if key in properties and (problem := schema_mismatch(item, properties[key], f"{where}.{key}")):
                return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            if problem := schema_mismatch(item, schema["items"], f"{where}[{index}]"):
                return problem
    return None


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
