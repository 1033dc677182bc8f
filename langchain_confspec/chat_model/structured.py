"""Tool choice and structured output: which answers are forced into which shape.

`answer_shape` turns a call's `tools`, `tool_choice` and schema into the tools the prompt
shows and the JSON constraint (if any) the engine writes under. `structured_output_runnable`
builds `with_structured_output` from the model, a binding and an output parser.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, ToolCallChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import (
    convert_to_json_schema,
    convert_to_openai_tool,
)
from pydantic import BaseModel, ValidationError
from pydantic.v1 import BaseModel as BaseModelV1

from langchain_confspec.chat_model.tool_calls import ParsedAnswer
from langchain_confspec.engine.constrained import (
    Constraint,
    compile_schema,
    tool_call_plan,
)
from langchain_confspec.errors import ConfigurationError, UnsupportedSchemaError
from langchain_confspec.models.prompting import CLOSE_TAG, OPEN_TAG
from langchain_confspec.records import Span

logger = logging.getLogger(__name__)

# Call option carrying the JSON schema that `with_structured_output` constrains answers to.
SCHEMA_KWARG = "json_schema"
# Call option: write the reasoning steps before the constrained object (True by default).
REASON_FIRST_KWARG = "reason_first"
_FORCING = ("any", "required")


def resolve_tool_choice(tool_choice: str | bool | dict[str, Any] | None, names: list[str]) -> str:
    """`auto`, `none`, `any` or a tool's name, from LangChain's many spellings of a choice."""
    if tool_choice is None or tool_choice is False:
        return "auto"
    if tool_choice is True:
        return "any"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if not isinstance(name, str):
            raise ConfigurationError(f"tool_choice {tool_choice!r} names no tool.")
        tool_choice = name
    if tool_choice in ("auto", "none"):
        return tool_choice
    if tool_choice in _FORCING:
        if not names:
            raise ConfigurationError(f"tool_choice={tool_choice!r} needs at least one tool.")
        return "any"
    if tool_choice not in names:
        raise ConfigurationError(f"tool_choice names the unknown tool {tool_choice!r}; the tools are {names}.")
    return tool_choice


def answer_shape(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | bool | dict[str, Any] | None,
    schema: dict[str, Any] | None,
    *,
    strict: bool,
    reason_first: bool = True,
) -> tuple[list[dict[str, Any]] | None, Constraint | None]:
    """The tools to show and the constraint to write under, for one call (a `tool_choice`
    given straight to `invoke` is read as `bind_tools` reads it). A schema's object comes
    after the reasoning steps unless `reason_first` is false."""
    if schema is not None:
        return tools, Constraint(compile_schema(schema, strict=strict), Span.JSON, after_reasoning=reason_first)
    if not tools:
        return None, None
    tool_choice = resolve_tool_choice(tool_choice, [t["function"]["name"] for t in tools])
    if tool_choice == "none":
        return None, None
    callable_ = [t["function"] for t in tools if tool_choice in ("auto", "any") or t["function"]["name"] == tool_choice]
    parameters = {f["name"]: f.get("parameters") or {"type": "object", "properties": {}} for f in callable_}
    if tool_choice == "auto":  # free text; a call the model opens is written under the bound tools' schemas
        try:
            plan = tool_call_plan(parameters, open_tag="\n", close_tag="\n" + CLOSE_TAG, strict=strict)
        except UnsupportedSchemaError as unsupported:
            logger.info("Tool calls are written unconstrained and checked after (%s).", unsupported)
            return tools, None
        return tools, Constraint(plan, Span.TOOL_CALL, after_reasoning=True, opened_by=OPEN_TAG)
    plan = tool_call_plan(parameters, open_tag=OPEN_TAG + "\n", close_tag="\n" + CLOSE_TAG, strict=strict)
    return tools, Constraint(plan, Span.TOOL_CALL)


def tool_call_chunks(answer: ParsedAnswer) -> list[ToolCallChunk]:
    """Chunks that merge into the answer's calls (invalid ones keep their raw arguments)."""
    chunks = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index)
        for index, call in enumerate(answer.tool_calls)
    ]
    offset = len(chunks)
    chunks += [
        tool_call_chunk(name=call["name"], args=call["args"], id=call["id"], index=offset + index)
        for index, call in enumerate(answer.invalid_tool_calls)
    ]
    return chunks


def structured_output_runnable(
    model: BaseChatModel,
    schema: dict[str, Any] | type | None,
    *,
    method: Literal["json_schema", "function_calling", "json_mode"],
    include_raw: bool,
    strict: bool | None,
    reason_first: bool = True,
) -> Runnable[LanguageModelInput, Any]:
    is_pydantic = isinstance(schema, type) and issubclass(schema, BaseModel | BaseModelV1)
    if schema is None and method != "json_mode":
        raise ConfigurationError(f"with_structured_output(method={method!r}) needs a schema.")
    tracing = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]  # type: ignore[arg-type]
        bound = model.bind_tools([schema], tool_choice=name, strict=strict, ls_structured_output_format=tracing)  # type: ignore[list-item]
        parser: Runnable[Any, Any] = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            if is_pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    elif method == "json_schema":
        json_schema = convert_to_json_schema(schema)  # type: ignore[arg-type]
        bound = model.bind(
            **{SCHEMA_KWARG: json_schema, REASON_FIRST_KWARG: reason_first}, strict=strict, ls_structured_output_format=tracing
        )
        parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
    elif method == "json_mode":
        bound = model.bind(ls_structured_output_format=tracing)
        parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
    else:
        raise ConfigurationError(f"Unknown method {method!r}: use json_schema, function_calling or json_mode.")
    if not include_raw:
        return bound | parser

    def parse_keeping_raw(message: AIMessage) -> dict[str, Any]:
        try:
            return {"raw": message, "parsed": parser.invoke(message), "parsing_error": None}
        except (OutputParserException, ValidationError, ValueError) as error:
            return {"raw": message, "parsed": None, "parsing_error": error}

    return bound | RunnableLambda(parse_keeping_raw)
