"""Rendering a conversation, tools included, through a tokenizer's chat template.

Turns are neutral dicts: `role`, `content`, and for tool use `tool_calls` (assistant) and
`tool_call_id` (tool). Templates differ in what they understand, so each is probed once:
tool definitions, assistant tool calls and the tool role are passed natively where the
template renders them, and written as Hermes-style text where it does not (definitions in
the system turn, calls as `<tool_call>` blocks, results as `<tool_response>` user turns).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

# Tool calls as Hermes / Qwen-style models write them, in their text.
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

# For tokenizers that ship without a chat template (base models): plain role prefixes.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)

_PROBE_NAME = "probe_tool_x7"
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": _PROBE_NAME, "description": "", "parameters": {"type": "object", "properties": {}}},
}


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """How a call is written in a conversation, for templates that have no tool-call syntax."""
    return f"{OPEN_TAG}\n{json.dumps({'name': name, 'arguments': arguments})}\n{CLOSE_TAG}"


@dataclass(frozen=True)
class TemplateAbilities:
    """What a chat template renders natively."""

    tool_definitions: bool
    tool_calls: bool
    tool_role: bool


_ABILITIES: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, TemplateAbilities] = weakref.WeakKeyDictionary()


def template_abilities(tokenizer: PreTrainedTokenizerBase) -> TemplateAbilities:
    if tokenizer not in _ABILITIES:
        _ABILITIES[tokenizer] = TemplateAbilities(
            tool_definitions=_renders(tokenizer, [{"role": "user", "content": "hi"}], _PROBE_NAME, tools=[_PROBE_TOOL]),
            tool_calls=_renders(
                tokenizer,
                [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "", "tool_calls": [_native_call("c1", _PROBE_NAME, {})]},
                ],
                _PROBE_NAME,
            ),
            tool_role=_renders(
                tokenizer,
                [{"role": "user", "content": "hi"}, {"role": "tool", "content": _PROBE_NAME, "tool_call_id": "c1"}],
                _PROBE_NAME,
            ),
        )
    return _ABILITIES[tokenizer]


def _renders(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, Any]], marker: str, **extra: Any) -> bool:
    try:
        return marker in _apply(tokenizer, turns, **extra)
    except Exception:  # noqa: BLE001 - a template that raises on these turns does not support them
        return False


def _apply(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, Any]], **extra: Any) -> str:
    template = tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        turns, chat_template=template, add_generation_prompt=True, tokenize=False, **extra
    )


def _native_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tools_instruction(tools: list[dict[str, Any]]) -> str:
    """The system text that teaches a template without tool support how to call tools."""
    listed = "\n".join(json.dumps(tool["function"]) for tool in tools)
    return (
        "You may call tools. To call one, write\n"
        f'{OPEN_TAG}\n{{"name": <tool name>, "arguments": <arguments as JSON>}}\n{CLOSE_TAG}\n'
        f"Tools:\n{listed}"
    )


def prepare_turns(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Turns this template can render, and the extra `apply_chat_template` arguments."""
    abilities = template_abilities(tokenizer)
    rendered: list[dict[str, Any]] = []
    for turn in turns:
        turn = dict(turn)
        calls = turn.pop("tool_calls", None)
        if calls and abilities.tool_calls:
            turn["tool_calls"] = [_native_call(c["id"], c["name"], c["args"]) for c in calls]
        elif calls:
            written = "\n".join(format_tool_call(c["name"], c["args"]) for c in calls)
            text = turn["content"]
            # as the model wrote it: a call right after the text's own trailing blank line
            turn["content"] = text + ("\n" if text and not text[-1].isspace() else "") + written
        if turn["role"] == "tool" and not abilities.tool_role:
            turn = {"role": "user", "content": f"<tool_response>\n{turn['content']}\n</tool_response>"}
        if rendered and rendered[-1]["role"] == turn["role"] == "user":
            rendered[-1]["content"] += "\n\n" + turn["content"]
        else:
            rendered.append(turn)
    extra: dict[str, Any] = {}
    if tools and abilities.tool_definitions:
        extra["tools"] = tools
    elif tools:
        instruction = tools_instruction(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + instruction}
        else:
            rendered.insert(0, {"role": "system", "content": instruction})
    return rendered, extra


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Token ids of the conversation through the tokenizer's chat template, ready to answer.

    Quiet about prompts longer than the tokenizer's `model_max_length`: the engine measures
    them against the context it uses and raises `ContextLengthError`, which says more.
    """
    rendered, extra = prepare_turns(tokenizer, turns, tools)
    return tokenizer.encode(_apply(tokenizer, rendered, **extra), add_special_tokens=False, verbose=False)
