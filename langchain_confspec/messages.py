"""LangChain messages to chat-template turns (`{"role": ..., "content": ...}`)."""

from __future__ import annotations

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
    one user turn with the texts separated by a blank line.
    """
    if not messages:
        raise InvalidMessagesError("The message list is empty: give at least one message to answer.")
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        role = _role_of(message, position)
        content = _text_of(message, position)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    return turns


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


def _text_of(message: BaseMessage, position: int) -> str:
    if isinstance(message.content, str):
        return message.content
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidMessagesError(
                f"Message {position} has a {kind!r} content block; these models read text only."
            )
    return "".join(parts)
