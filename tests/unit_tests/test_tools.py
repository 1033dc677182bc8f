"""Tool calling and structured output through `ConfSpecChatModel`, on the tiny random pair.

Random weights never choose to call a tool, so free-form ("auto") answers are tested with
a scripted engine; forced calls and structured output run the real engine under a JSON
constraint, which must give well-formed results whatever the weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.chat_model.messages import to_chat_turns
from langchain_confspec.chat_model.tool_calls import (
    ToolCallHoldback,
    parse_tool_calls,
    schema_mismatch,
)
from langchain_confspec.config import SpecConfig
from langchain_confspec.engine.outputs import RunResult
from langchain_confspec.errors import ConfigurationError, UnsupportedSchemaError
from langchain_confspec.models.prompting import (
    format_tool_call,
    render_prompt,
    template_abilities,
)
from langchain_confspec.models.tiny import TOOLS_CHAT_TEMPLATE, build_tokenizer
from langchain_confspec.records import (
    Decision,
    ModelCounters,
    StepEnd,
    StepRecord,
    Writer,
    summarize,
)


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


@tool
def shout(text: str) -> str:
    """Say it louder."""
    return text.upper()


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture
def model(tiny_model_params: dict[str, str]) -> ConfSpecChatModel:
    return ConfSpecChatModel(**tiny_model_params, max_tokens=120)


# -- parsing --------------------------------------------------------------------------------


def test_parse_splits_text_and_calls_with_fresh_ids() -> None:
    text = 'First.\n\n<tool_call>\n{"name": "shout", "arguments": {"text": "hi"}}\n</tool_call>\n<tool_call>{"name": "magic_function", "arguments": "{\\"input\\": 3}"}</tool_call>'
    answer = parse_tool_calls(text)
    assert answer.content == "First.\n\n\n"
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("shout", {"text": "hi"}), ("magic_function", {"input": 3})]
    ids = [c["id"] for c in answer.tool_calls]
    assert all(ids) and len(set(ids)) == 2
    assert parse_tool_calls("no calls here").content == "no calls here"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ('{"name": "shout", "arguments": {"text": "hi"', "not valid JSON"),
        ('{"arguments": {}}', '"name"'),
        ('{"name": "shout", "arguments": [1]}', "must be a JSON object"),
        ('{"name": "shout", "arguments": "{oops"}', "string that is not JSON"),
    ],
)
def test_malformed_calls_become_invalid_calls_with_the_reason(raw: str, error: str) -> None:
    answer = parse_tool_calls(f"<tool_call>{raw}</tool_call>")
    assert not answer.tool_calls
    (invalid,) = answer.invalid_tool_calls
    assert error in (invalid["error"] or "") and invalid["args"] == f"<tool_call>{raw}</tool_call>" and invalid["id"]


def test_an_unclosed_call_at_the_end_is_still_read() -> None:
    answer = parse_tool_calls('ok <tool_call>{"name": "shout", "arguments": {"text": "x"}}')
    assert answer.tool_calls[0]["name"] == "shout" and answer.content == "ok "


def test_holdback_never_releases_any_part_of_a_call() -> None:
    holdback = ToolCallHoldback()
    pieces = ["Let me ", "check.<tool", "_call>{\"na", "me\": 1}</tool_call>"]
    released = "".join(holdback.feed(p) for p in pieces)
    assert released == "Let me check."
    assert holdback.released == len(released)


# -- rendering --------------------------------------------------------------------------------

NATIVE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls', []) %}CALL {{ c['function']['name'] }} {{ c['function']['arguments'] | tojson }}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

HISTORY = [
    SystemMessage("Be brief."),
    HumanMessage("What is magic 3?"),
    AIMessage("", tool_calls=[{"name": "magic_function", "args": {"input": 3}, "id": "c1"}]),
    ToolMessage("5", tool_call_id="c1"),
    ToolMessage([{"type": "text", "text": "partial"}, {"type": "json", "json": {"k": 1}}], tool_call_id="c2", status="error"),
]


def test_history_with_calls_renders_as_text_for_a_plain_template() -> None:
    tokenizer = build_tokenizer()
    tools = [convert_to_openai_tool(magic_function)]
    text = tokenizer.decode(render_prompt(tokenizer, to_chat_turns(HISTORY), tools))
    assert "Be brief.\n\nYou may call tools" in text and '"name": "magic_function"' in text
    assert '<tool_call>\n{"name": "magic_function", "arguments": {"input": 3}}\n</tool_call>' in text
    assert "Error: partial" in text and '"json": {"k": 1}' in text
    assert text.endswith("<|im_start|>assistant\n")  # the last message is a tool result, not a human turn


def test_history_with_calls_uses_a_template_that_knows_tools() -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = NATIVE_TEMPLATE
    abilities = template_abilities(tokenizer)
    assert abilities.tool_definitions and abilities.tool_calls and abilities.tool_role
    text = tokenizer.decode(render_prompt(tokenizer, to_chat_turns(HISTORY), [convert_to_openai_tool(shout)]))
    assert "TOOLS [" in text and "You may call tools" not in text
    assert 'CALL magic_function {"input": 3}' in text and "<tool_call>" not in text


def test_the_demo_template_renders_plain_chats_unchanged_and_tools_compactly() -> None:
    plain_tokenizer, tools_tokenizer = build_tokenizer(), build_tokenizer()
    tools_tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    assert render_prompt(tools_tokenizer, chat) == render_prompt(plain_tokenizer, chat)

    written = "Two and two.\n\n" + format_tool_call("magic_function", {"input": 3})
    answer = parse_tool_calls(written)
    history = to_chat_turns([HumanMessage("What is magic 3?"), AIMessage(answer.content, tool_calls=answer.tool_calls),
                             ToolMessage("5", tool_call_id=answer.tool_calls[0]["id"])])
    text = tools_tokenizer.decode(render_prompt(tools_tokenizer, history, [convert_to_openai_tool(magic_function)]))
    assert text.startswith("<|im_start|>system\nTools: magic_function(input)<|im_end|>")
    assert "<|im_start|>assistant\n" + written + "<|im_end|>" in text  # the call exactly as the model wrote it
    assert "<|im_start|>tool\n5<|im_end|>" in text and "<tool_response>" not in text


# -- forced calls and structured output on the real engine --------------------------------------


@pytest.mark.parametrize("choice", ["magic_function", "any", "required", True, {"type": "function", "function": {"name": "shout"}}])
def test_forced_choices_always_give_a_well_formed_call(model: ConfSpecChatModel, choice: Any) -> None:
    message = model.bind_tools([magic_function, shout], tool_choice=choice).invoke("Use a tool.")
    assert message.content == "" and not message.invalid_tool_calls
    (call,) = message.tool_calls
    expected = {"magic_function": {"input"}, "shout": {"text"}}
    assert set(call["args"]) == expected[call["name"]] and call["id"]
    if isinstance(choice, str) and choice in expected:
        assert call["name"] == choice
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert [s["span"] for s in message.response_metadata["confspec"]["steps"]] == ["tool_call"]


def test_streaming_a_forced_call_gives_no_text_and_merges_into_the_call(model: ConfSpecChatModel) -> None:
    chunks = list(model.bind_tools([magic_function], tool_choice="any").stream("Use a tool."))
    assert all("<tool_call>" not in c.content for c in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert isinstance(merged, AIMessageChunk)
    assert [c["name"] for c in merged.tool_calls] == ["magic_function"] and merged.tool_call_chunks[0]["id"]


async def test_async_forced_call(model: ConfSpecChatModel) -> None:
    message = await model.bind_tools([shout], tool_choice="shout").ainvoke("Use a tool.")
    assert message.tool_calls[0]["name"] == "shout"


def test_bad_tool_choices_are_named(model: ConfSpecChatModel) -> None:
    with pytest.raises(ConfigurationError, match="unknown tool 'nope'"):
        model.bind_tools([shout], tool_choice="nope")
    with pytest.raises(ConfigurationError, match="names no tool"):
        model.bind_tools([shout], tool_choice={"type": "function"})
    with pytest.raises(ConfigurationError, match="at least one tool"):
        model.bind_tools([], tool_choice="any")


def test_tool_choice_none_hides_the_tools(model: ConfSpecChatModel) -> None:
    plain = model.get_num_tokens_from_messages([HumanMessage("hi")])
    assert model.get_num_tokens_from_messages([HumanMessage("hi")], tools=[shout]) > plain
    message = model.bind_tools([shout], tool_choice="none").invoke("hi")
    assert message.usage_metadata is not None and message.usage_metadata["input_tokens"] == plain


def test_structured_output_methods(model: ConfSpecChatModel) -> None:
    person = model.with_structured_output(Person).invoke("Who?")
    assert isinstance(person, Person)
    as_dict = model.with_structured_output(Person.model_json_schema()).invoke("Who?")
    assert set(as_dict) == {"name", "age"} and isinstance(as_dict["age"], int)
    called = model.with_structured_output(Person, method="function_calling").invoke("Who?")
    assert isinstance(called, Person)
    raw = model.with_structured_output(Person, include_raw=True).invoke("Who?")
    assert isinstance(raw["raw"], AIMessage) and isinstance(raw["parsed"], Person) and raw["parsing_error"] is None


def test_structured_output_reasons_first_then_writes_the_object(model: ConfSpecChatModel) -> None:
    raw = model.with_structured_output(Person, include_raw=True).invoke("Who?")["raw"]
    steps = raw.response_metadata["confspec"]["steps"]
    assert len(steps) >= 2 and steps[-1]["span"] == "json"
    assert {s["span"] for s in steps[:-1]} == {"text"}
    reasoning = "".join(s["text"] for s in steps[:-1])
    assert raw.additional_kwargs.get("reasoning_content", "") == reasoning  # the steps, apart from the content
    assert raw.content == steps[-1]["text"] and Person.model_validate_json(raw.content)


def test_structured_output_can_be_constrained_from_the_first_token(model: ConfSpecChatModel) -> None:
    raw = model.with_structured_output(Person, include_raw=True, reason_first=False).invoke("Who?")["raw"]
    assert [s["span"] for s in raw.response_metadata["confspec"]["steps"]] == ["json"]
    assert "reasoning_content" not in raw.additional_kwargs


def test_streamed_reasoning_merges_into_the_same_message(model: ConfSpecChatModel) -> None:
    bound = model.bind(json_schema=Person.model_json_schema())
    chunks = list(bound.stream("Who?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    invoked = bound.invoke("Who?")
    assert merged.content == invoked.content and Person.model_validate_json(str(merged.content))
    assert merged.additional_kwargs.get("reasoning_content", "") == invoked.additional_kwargs.get("reasoning_content", "")


def test_json_mode_reports_unparsable_output_with_include_raw(model: ConfSpecChatModel) -> None:
    result = model.with_structured_output(None, method="json_mode", include_raw=True).invoke("Who?")
    assert result["parsed"] is None and result["parsing_error"] is not None  # random weights write no JSON


def test_strict_structured_output_refuses_patterns(model: ConfSpecChatModel) -> None:
    schema = {"title": "Code", "type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]$"}}}
    assert set(model.with_structured_output(schema).invoke("hi")) == {"code"}
    with pytest.raises(UnsupportedSchemaError, match="pattern"):
        model.with_structured_output(schema, strict=True).invoke("hi")


# -- free-form answers with calls, through a scripted engine ------------------------------------


class _ScriptedEngine:
    """Answers every call with the given steps, as the real engine would report them."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def run(self, turns: list[dict[str, Any]], config: SpecConfig, **request: Any) -> Iterator[StepRecord | RunResult]:
        records = []
        for index, text in enumerate(self.steps):
            record = StepRecord(index=index, text=text, n_tokens=len(text), writer=Writer.TARGET, decision=Decision.UNVERIFIED, end=StepEnd.DELIMITER)
            records.append(record)
            yield record
        summary = summarize(records, mode="target_only", finish_reason="stop", draft=ModelCounters(), target=ModelCounters(), wall_time=0.0, lock_wait=0.0)
        yield RunResult("".join(self.steps), records, summary)


def _scripted(model: ConfSpecChatModel, steps: list[str]) -> ConfSpecChatModel:
    object.__setattr__(model, "_get_engine", lambda: _ScriptedEngine(steps))  # this instance only
    return model


def test_auto_calls_in_free_text_are_parsed_and_never_streamed(model: ConfSpecChatModel) -> None:
    steps = ["I will look it up.\n\n", '<tool_call>\n{"name": "shout", "arguments": {"text": "hi"}}\n', "</tool_call>"]
    bound = _scripted(model, steps).bind_tools([shout])
    chunks = list(bound.stream("hi"))
    assert "".join(c.content for c in chunks) == "I will look it up.\n\n"
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls[0]["args"] == {"text": "hi"}
    message = bound.invoke("hi")
    assert message.content == "I will look it up.\n\n" and message.tool_calls[0]["name"] == "shout"


def test_auto_call_with_bad_json_is_an_invalid_call_with_its_error(model: ConfSpecChatModel) -> None:
    bound = _scripted(model, ['<tool_call>{"name": "shout", "arguments": {"text": </tool_call>']).bind_tools([shout])
    message = bound.invoke("hi")
    assert not message.tool_calls
    (invalid,) = message.invalid_tool_calls
    assert invalid["name"] == "shout" and "not valid JSON" in (invalid["error"] or "")
    assert json.dumps(message.response_metadata)  # metadata stays serialisable


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({"name": "calculator", "arguments": {"expression": "12 * 3"}}, r"'calculator' is not bound; the bound tools are \['shout'\]"),
        ({"name": "shout", "arguments": {"text": 3}}, r"arguments\.text is int 3, not string"),
        ({"name": "shout", "arguments": {}}, r"arguments lacks \['text'\]"),
        ({"name": "shout", "arguments": {"text": "hi", "volume": 11}}, r"unknown keys \['volume'\]"),
    ],
)
def test_a_call_the_agent_cannot_run_is_never_a_valid_tool_call(model: ConfSpecChatModel, call: dict[str, Any], error: str) -> None:
    text = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    message = _scripted(model, [text]).bind_tools([shout]).invoke("hi")
    assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
    assert message.invalid_tool_calls[0]["name"] == call["name"] and re.search(error, message.invalid_tool_calls[0]["error"] or "")


def test_schema_mismatch_reads_the_shapes_tools_use() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "unit": {"anyOf": [{"enum": ["cm", "in"]}, {"type": "null"}]},
        },
        "required": ["n"],
    }
    assert schema_mismatch({"n": 2, "tags": ["a"], "unit": None}, schema) is None
    assert schema_mismatch({"n": True}, schema) == "arguments.n is bool True, not integer"
    assert schema_mismatch({"n": 1.5}, schema) == "arguments.n is float 1.5, not integer"
    assert schema_mismatch({"n": 1, "tags": ["a", 2]}, schema) == "arguments.tags[1] is int 2, not string"
    assert schema_mismatch({"n": 1, "unit": "m"}, schema) is not None
    assert schema_mismatch({"n": 1, "x": 0}, {**schema, "additionalProperties": True}) is None
