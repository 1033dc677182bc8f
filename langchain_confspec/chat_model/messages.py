"""LangChain messages to chat-template turns (`{"role": ..., "content": ...}`).

Assistant turns carry their `tool_calls` and tool turns their `tool_call_id`; how those are
written for a given template is `prompting`'s business.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_confspec.errors import InvalidMessagesError

_ROLES: tuple[tuple[type[BaseMessage], str], ...] = (
    (SystemMessage, "system"),
    (HumanMessage, "user"),
    (AIMessage, "assistant"),
    (ToolMessage, "tool"),
)


def to_chat_turns(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Turn messages into chat-template turns, merging consecutive turns of one role.

    Many chat templates require roles to alternate, so two human messages in a row become
    one user turn with the texts separated by a blank line. Tool results stay one turn each
    (each answers its own call).
    """
    if not messages:
        raise InvalidMessagesError("The message list is empty: give at least one message to answer.")
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        turn = _turn_of(message, position)
        previous = turns[-1] if turns else None
        if previous is not None and previous["role"] == turn["role"] != "tool":
            previous["content"] = "\n\n".join(t for t in (previous["content"], turn["content"]) if t)
            if turn.get("tool_calls"):
                previous["tool_calls"] = [*previous.get("tool_calls", []), *turn["tool_calls"]]
        else:
            turns.append(turn)
    if turns[-1]["role"] == "user" and not turns[-1]["content"].strip():
        raise InvalidMessagesError(
            "The last human message is empty: there is no question to answer. Models given nothing "
            "to answer write until max_tokens."
        )
    return turns


def _turn_of(message: BaseMessage, position: int) -> dict[str, Any]:
    role = _role_of(message, position)
    if isinstance(message, ToolMessage):
        content = _text_of(message, position, other_blocks_as_json=True)
        if message.status == "error" and not content.lower().startswith("error"):
            content = f"Error: {content}"
        return {"role": role, "content": content, "tool_call_id": message.tool_call_id}
    turn: dict[str, Any] = {"role": role, "content": _text_of(message, position)}
    if isinstance(message, AIMessage) and message.tool_calls:
        turn["tool_calls"] = [
            {"id": call.get("id") or f"call_{position}_{n}", "name": call["name"], "args": call["args"]}
            for n, call in enumerate(message.tool_calls)
        ]
    return turn


def _role_of(message: BaseMessage, position: int) -> str:
    if isinstance(message, ChatMessage):
        return message.role
    for message_type, role in _ROLES:
        if isinstance(message, message_type):
            return role
    raise InvalidMessagesError(
        f"Message {position} has the unsupported type {type(message).__name__}; use system, human, "
        "AI, tool or chat messages."
    )


def _text_of(message: BaseMessage, position: int, *, other_blocks_as_json: bool = False) -> str:
    """The message's text; a tool result's non-text blocks are written as JSON."""
    if isinstance(message.content, str):
        return message.content
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("tool_call", "tool_use"):
            continue  # standard and Anthropic-style blocks repeat `tool_calls`, which the turn carries
        elif other_blocks_as_json:
            parts.append(json.dumps(block, default=str))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidMessagesError(
                f"Message {position} has a {kind!r} content block; these models read text only."
            )
    return "".join(parts)
