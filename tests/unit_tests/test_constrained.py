"""Constrained JSON writing: every answer parses and fits its schema, whatever the weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from langchain_confspec import ConfSpecEngine, load_model
from langchain_confspec.chat_model.tool_calls import parse_tool_calls
from langchain_confspec.config import build_config
from langchain_confspec.engine.constrained import (
    Constraint,
    TokenClasses,
    compile_schema,
    tool_call_plan,
)
from langchain_confspec.errors import UnsupportedSchemaError
from langchain_confspec.records import Decision, Span, Writer

EngineOn = Callable[[ConfSpecEngine, str], ConfSpecEngine]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height": {"type": "number"},
        "member": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "level": {"enum": ["low", "high", 3]},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "address": {"$ref": "#/$defs/Address"},
    },
    "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}}},
}


def _check_person(value: dict[str, Any]) -> None:
    assert list(value) == list(PERSON["properties"])
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool)
    assert isinstance(value["height"], int | float)
    assert isinstance(value["member"], bool)
    assert isinstance(value["tags"], list) and all(isinstance(t, str) for t in value["tags"])
    assert value["level"] in ("low", "high", 3)
    assert isinstance(value["nickname"], str)
    assert set(value["address"]) == {"city", "zip"} and isinstance(value["address"]["zip"], int)


@pytest.mark.parametrize("mode", ["target_only", "draft_only", "confspec", "always_verify"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_answers_parse_and_fit_the_schema(tiny_engine: ConfSpecEngine, mode: str, temperature: float) -> None:
    config = build_config(mode=mode, temperature=temperature, seed=3, max_tokens=400)
    constraint = Constraint(compile_schema(PERSON), Span.JSON)
    result = tiny_engine.generate([{"role": "user", "content": "Describe someone."}], config, constraint=constraint)
    assert result.summary.finish_reason == "stop"
    _check_person(json.loads(result.text))
    assert [r.span for r in result.records] == [Span.JSON]


def test_number_grammar_has_no_leading_zeros(tiny_engine: ConfSpecEngine) -> None:
    schema = {"type": "object", "properties": {f"n{i}": {"type": "number"} for i in range(6)}}
    for seed in range(4):
        config = build_config(mode="target_only", temperature=1.5, seed=seed, max_tokens=300)
        result = tiny_engine.generate([{"role": "user", "content": "hi"}], config, constraint=Constraint(compile_schema(schema), Span.JSON))
        for text in result.text.strip("{}").split(", "):
            number = text.split(": ")[1].lstrip("-")
            assert not (number.startswith("0") and len(number) > 1 and number[1] != "."), number
        json.loads(result.text)


def test_a_forced_tool_call_names_one_of_the_tools(tiny_engine: ConfSpecEngine) -> None:
    tools = {
        "add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        "shout": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    plan = tool_call_plan(tools, open_tag="<tool_call>\n", close_tag="\n</tool_call>")
    for seed in range(3):
        config = build_config(mode="confspec", temperature=1.0, seed=seed, max_tokens=200)
        result = tiny_engine.generate([{"role": "user", "content": "hi"}], config, constraint=Constraint(plan, Span.TOOL_CALL))
        answer = parse_tool_calls(result.text)
        assert not answer.invalid_tool_calls and len(answer.tool_calls) == 1
        call = answer.tool_calls[0]
        assert call["name"] in tools and set(call["args"]) == set(tools[call["name"]]["properties"])


ADD_TOOL = {"add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}
CONSTRAINED_SPANS = {
    "target_writes_tool_calls": Constraint(tool_call_plan(ADD_TOOL, open_tag="<tool_call>\n", close_tag="\n</tool_call>"), Span.TOOL_CALL),
    "target_writes_objects": Constraint(compile_schema(PERSON), Span.JSON),
}


@pytest.mark.parametrize("mode", ["confspec", "always_verify"])
@pytest.mark.parametrize("setting", sorted(CONSTRAINED_SPANS))
def test_the_target_writes_tool_calls_and_objects_itself(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, mode: str, setting: str
) -> None:
    """A call is an action and an object what the caller keeps: where steps are speculated,
    either is still the target's own (greedy: exactly what `target_only` writes), recorded as
    the target's and judged by nobody; with its setting off it is speculated like any step."""
    constraint = CONSTRAINED_SPANS[setting]
    engine = engine_on(tiny_engine, fast_path)

    def call(**settings: Any) -> Any:
        config = build_config(max_tokens=200, fast_path=fast_path, **settings)
        return engine.generate([{"role": "user", "content": "hi"}], config, constraint=constraint)

    written = call(mode=mode)
    assert written.text == call(mode="target_only").text
    assert [(r.writer, r.decision, r.span) for r in written.records] == [(Writer.TARGET, Decision.UNVERIFIED, constraint.span)]
    speculated = call(mode=mode, **{setting: False}).records[0]
    assert speculated.decision is not Decision.UNVERIFIED  # the draft proposed it and it was judged


def test_a_call_the_target_agrees_with_costs_it_one_pass(tiny_pair_paths: tuple[Path, Path], engine_on: EngineOn, fast_path: str) -> None:
    """Greedy, the target checks the draft's call as a proposal: with a draft that writes what
    the target writes (here the same weights), the whole call costs the target one pass, where
    writing it alone takes one per chosen token."""
    target_path = str(tiny_pair_paths[1])
    engine = engine_on(ConfSpecEngine(load_model(target_path, role="draft"), load_model(target_path, role="target")), fast_path)
    tools = {"shout": {"type": "object", "properties": {"text": {"type": "string"}}}}
    constraint = Constraint(tool_call_plan(tools, open_tag="<tool_call>\n", close_tag="\n</tool_call>"), Span.TOOL_CALL)
    turns = [{"role": "user", "content": "hi"}]
    alone = engine.generate(turns, build_config(mode="target_only", max_tokens=200, fast_path=fast_path), constraint=constraint)
    checked = engine.generate(turns, build_config(mode="confspec", max_tokens=200, fast_path=fast_path), constraint=constraint)
    assert checked.text == alone.text
    assert checked.summary.target.forward_passes == 1 < alone.summary.target.forward_passes


def test_out_of_budget_ends_with_length(tiny_engine: ConfSpecEngine) -> None:
    config = build_config(mode="target_only", max_tokens=5)
    result = tiny_engine.generate([{"role": "user", "content": "hi"}], config, constraint=Constraint(compile_schema(PERSON), Span.JSON))
    assert result.summary.finish_reason == "length"
    assert sum(r.n_tokens for r in result.records) <= 5


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "unions"),
        ({"type": ["string", "integer"]}, "choose between types"),
        ({"$ref": "#/$defs/Missing"}, "Unresolved reference"),
        ({"type": "array"}, "items"),
        ({"description": "no type"}, "missing type"),
    ],
)
def test_schemas_the_decoder_cannot_enforce_are_named(schema: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UnsupportedSchemaError, match=fragment):
        compile_schema(schema)


def test_strict_refuses_unenforced_keywords_that_lenient_ignores() -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}}
    compile_schema(schema)
    with pytest.raises(UnsupportedSchemaError, match="pattern"):
        compile_schema(schema, strict=True)


def test_recursive_schemas_are_refused() -> None:
    schema = {"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}}
    with pytest.raises(UnsupportedSchemaError, match="deeper"):
        compile_schema(schema)


def test_a_tokenizer_that_cannot_spell_json_is_refused() -> None:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["abc 123"] * 4, trainer=trainers.BpeTrainer(vocab_size=40, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(UnsupportedSchemaError, match="cannot spell JSON"):
        TokenClasses(tokenizer)
