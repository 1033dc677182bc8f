"""A minimal tool loop: ask, run the calls the model makes, send the results back, repeat."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool


def run_tool_loop(
    model: BaseChatModel, tools: Sequence[BaseTool], question: str, *, max_turns: int = 8
) -> list[BaseMessage]:
    """The conversation from `question` to the model's first reply without tool calls (or
    `max_turns` replies). Calls of unknown tools get an error result, as an agent would."""
    by_name = {tool.name: tool for tool in tools}
    agent = model.bind_tools(list(tools))
    messages: list[BaseMessage] = [HumanMessage(question)]
    for _ in range(max_turns):
        reply = agent.invoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            break
        for call in reply.tool_calls:
            tool = by_name.get(call["name"])
            if tool is None:
                messages.append(ToolMessage(f"Unknown tool {call['name']!r}.", tool_call_id=call["id"] or "", status="error"))
            else:
                messages.append(tool.invoke(call))
    return messages
