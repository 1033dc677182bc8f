"""`ConfSpecChatModel`: the LangChain face of the engine.

This module holds no algorithm. It turns messages into chat turns and call options into a
`SpecConfig`, runs the engine, and hands its output to `responses.py`, which makes callback
events, message chunks and `AIMessage`s with usage and audit metadata of it. The settings
are declared in `fields.py`. Weights load on first use, once.
"""

from __future__ import annotations

import asyncio
import difflib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import (
    LangSmithParams,
    generate_from_stream,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, PrivateAttr, ValidationError

from langchain_confspec.chat_model.callbacks import EventEmitter
from langchain_confspec.chat_model.fields import ChatModelFields
from langchain_confspec.chat_model.messages import to_chat_turns
from langchain_confspec.chat_model.pair import load_role, model_name, named_tokenizer
from langchain_confspec.chat_model.responses import (
    Chunker,
    Request,
    event_of,
    with_tool_call_errors,
)
from langchain_confspec.chat_model.sharing import (
    engine_for,
)
from langchain_confspec.chat_model.structured import (
    REASON_FIRST_KWARG,
    SCHEMA_KWARG,
    answer_shape,
    resolve_tool_choice,
    structured_output_runnable,
)
from langchain_confspec.chat_model.threading_bridge import iterate_in_thread
from langchain_confspec.config import FastPath, SpecConfig, build_config, settings_error
from langchain_confspec.demo import DEMO_DRAFT, DEMO_TARGET, pair_settings
from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.engine.outputs import RunResult
from langchain_confspec.errors import ConfigurationError
from langchain_confspec.models.cache_budget import validate_budget
from langchain_confspec.models.prompting import render_prompt
from langchain_confspec.models.static_runner import WarmupReport

# Call option through which stream()/astream() hand `_stream` the run's event emitter.
_EMITTER_KWARG = "_confspec_emitter"
# Call option through which invoke() tells `_stream` whether anyone wants text before the end.
_TOKENS_KWARG = "_confspec_stream_text"


class ConfSpecChatModel(ChatModelFields):
    """Chat model answering by step-level speculative reasoning over two local HF models.

    A small **draft** writes each reasoning step and judges it; its confident verdicts stand,
    uncertain ones go to the large **target**, and the target rewrites what is rejected.
    Every step leaves a `StepRecord` (who wrote it, who verified it, with what confidence).

    Setup:
        ```bash
        pip install langchain-confspec
        ```

    Instantiate:
        ```python
        from langchain_confspec import ConfSpecChatModel

        model = ConfSpecChatModel(
            draft_model="Qwen/Qwen2.5-0.5B-Instruct",
            target_model="Qwen/Qwen2.5-7B-Instruct",
            device_map="auto",
            torch_dtype="bfloat16",
            accept_threshold=0.8,
        )
        ```
        Weights load on the first call, not here. Already-loaded models can be passed as
        `draft=`, `draft_tokenizer=`, `target=`, `target_tokenizer=`.

    Invoke:
        ```python
        message = model.invoke("A train covers 60 miles in 2 hours. Its speed?")
        print(message.content)
        ```

    Stream (text token by token as soon as it is final; a draft step once its verdict keeps it):
        ```python
        for chunk in model.stream("..."):
            print(chunk.content, end="")
        ```

    Async:
        ```python
        message = await model.ainvoke("...")
        async for chunk in model.astream("..."):
            ...
        ```

    Tool calling (Hermes-style `<tool_call>` blocks; forced choices are constrained):
        ```python
        from langchain_core.tools import tool

        @tool
        def calculator(expression: str) -> str:
            "Evaluate an arithmetic expression."
            ...

        llm = model.bind_tools([calculator], tool_choice="calculator")
        message = llm.invoke("What is 23 * 8?")
        message.tool_calls
        # [{'name': 'calculator', 'args': {'expression': '23 * 8'}, 'id': 'call_...', 'type': 'tool_call'}]
        ```

    Structured output (constrained to the schema by default):
        ```python
        from pydantic import BaseModel

        class Answer(BaseModel):
            value: int
            unit: str

        model.with_structured_output(Answer).invoke("...")
        # Answer(value=30, unit='mph')
        ```

    GPU fast path (static KV caches and CUDA graphs, `fast_path="auto"` by default):
        ```python
        model = ConfSpecChatModel(..., device_map="cuda", max_context=4096)
        model.warmup()  # compile and capture now, not in the first call
        message.response_metadata["confspec"]["summary"]["target"]["fast_path"]  # "graphs"
        ```

    Token usage:
        ```python
        message.usage_metadata
        # {'input_tokens': 31, 'output_tokens': 48, 'total_tokens': 79,
        #  'output_token_details': {'draft': 40, 'target': 8}}
        ```

    Response metadata:
        ```python
        message.response_metadata["finish_reason"]          # "stop" or "length"
        message.response_metadata["confspec"]["summary"]     # acceptance, escalation, timing
        message.response_metadata["confspec"]["steps"]       # one record per step
        ```
        Each step is also sent to callbacks as a `confspec_step` custom event, and the
        summary as `confspec_summary`.
    """

    _engine: ConfSpecEngine | None = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {**pair_settings(kwargs.get("draft_model"), kwargs.get("target_model")), **kwargs}
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            raise settings_error(exc) from None
        if self.draft_model is None and self.draft is None:
            raise ConfigurationError("No draft model: set draft_model (an id or path) or pass draft=.")
        if self.target_url is not None and self.target_model is None and self.target_tokenizer is None:
            raise ConfigurationError("A served target (target_url) needs its tokenizer: set target_model (an id or path).")
        if self.target_model is None and self.target is None and self.target_url is None:
            raise ConfigurationError("No target model: set target_model (an id or path), pass target=, or set target_url.")
        validate_budget(self.kv_cache_memory)
        self._spec_config()  # an impossible setting fails here, naming itself

    @classmethod
    def demo(cls, **kwargs: Any) -> ConfSpecChatModel:
        """The bundled trained pair for arithmetic word problems (offline, CPU-friendly), with its tuned settings."""
        return cls(draft_model=DEMO_DRAFT, target_model=DEMO_TARGET, **kwargs)

    def warmup(self, fast_path: FastPath | str | None = None) -> list[WarmupReport]:
        """Load both models and get their fast path ready now (static caches allocated, graphs
        compiled and captured), so that no call pays for it. `fast_path` defaults to the
        model's own; returns one report per model, with what each part cost."""
        return self._get_engine().warmup(FastPath(fast_path or self.fast_path))

    # -- copies across processes ------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings, not the loaded weights: they load again, lazily, where the
        model is unpickled. A model holding preloaded objects has no names to load them from."""
        if held := self._preloaded():
            raise TypeError(
                f"This ConfSpecChatModel holds preloaded objects ({', '.join(held)}), which it cannot pickle: "
                "build it from draft_model= and target_model= (ids or paths) to send it to another process."
            )
        return {**super().__getstate__(), "__pydantic_private__": {"_engine": None, "_tokenizer": None}}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_confspec", "chat_model"]

    def to_json(self) -> Any:
        """`dumpd`/`dumps` as a constructor with the model's settings (names or paths of the
        models, not weights); not serializable when it holds preloaded objects."""
        return self.to_json_not_implemented() if self._preloaded() else super().to_json()

    def _preloaded(self) -> list[str]:
        return [name for name in ("draft", "target", "draft_tokenizer", "target_tokenizer") if getattr(self, name) is not None]

    # -- LangChain plumbing -----------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "confspec"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "draft_model": model_name(self, "draft"),
            "target_model": model_name(self, "target"),
            "device_map": self.device_map,
            "torch_dtype": str(self.torch_dtype) if self.torch_dtype is not None else None,
            "max_context": self.max_context,
            "max_batch": self.max_batch,
            "kv_cache_memory": self.kv_cache_memory,
            **self._spec_config().model_dump(mode="json"),
        }

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(_EMITTER_KWARG, None)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="confspec",
            ls_model_name=kwargs.get("model") or model_name(self, "target"),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # invoke() streams through _generate (which keeps the run manager, so step events
        # reach this run); only stream()/astream(), which bring an emitter, use _stream.
        if _EMITTER_KWARG not in kwargs:
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def get_token_ids(self, text: str) -> list[int]:
        return self._target_tokenizer().encode(text, add_special_tokens=False, verbose=False)  # lengths are ours to check

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[dict[str, Any] | type | Callable | BaseTool] | None = None
    ) -> int:
        """Prompt length in target tokens, chat template and tool definitions included."""
        formatted = [convert_to_openai_tool(tool) for tool in tools] if tools else None
        return len(render_prompt(self._target_tokenizer(), to_chat_turns(messages), formatted))

    # -- tools and structured output ------------------------------------------------------------

    def bind(self, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind call options; an option this model does not know is refused here, not at the call."""
        _check_options(kwargs, binding=True)
        return super().bind(**kwargs)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer `tools` to the model. `tool_choice`: "auto" (default), "none", "any" /
        "required" / True (some tool must be called), a tool's name or an OpenAI-style dict
        (that tool must be called). Forced calls are written under a JSON constraint, so
        they are always well-formed; `strict=True` refuses parameter schemas with keywords
        the constraint cannot enforce."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        choice = resolve_tool_choice(tool_choice, [tool["function"]["name"] for tool in formatted])
        if strict is not None:
            kwargs["strict"] = strict
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        reason_first: bool = True,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers parsed into `schema` (a pydantic class, TypedDict, JSON schema or tool dict).

        `json_schema` (default) writes the reasoning steps as for a plain answer, then the
        object under a constraint built from the schema, with the steps in context; the
        steps come back as the message's `reasoning_content` (see `include_raw`), the object
        as its content. `reason_first=False` constrains the answer from its first token.
        `function_calling` forces a call of a tool shaped like the schema; `json_mode` only
        asks for JSON and parses what comes (no constraint). With `include_raw`, returns
        `{"raw", "parsed", "parsing_error"}` instead of raising on a parsing error.
        """
        if kwargs:
            raise ValueError(f"Unexpected arguments: {sorted(kwargs)}")
        return structured_output_runnable(
            self, schema, method=method, include_raw=include_raw, strict=strict, reason_first=reason_first
        )

    # -- calls --------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """As LangChain's `batch`, with the shared static caches ready first and every call of
        the batch on them, so that on the CPU the calls batch their forward passes instead of
        taking turns."""
        if not self._batches_on_auto(inputs, kwargs):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)  # type: ignore[return-value]
        engine = self._get_engine()
        engine.prepare_batching()
        with engine.batch_of_calls():
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)  # type: ignore[return-value]

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """As `batch`, for asyncio (the preparation runs in a worker thread)."""
        if not self._batches_on_auto(inputs, kwargs):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)  # type: ignore[return-value]
        engine = self._get_engine()
        await asyncio.to_thread(engine.prepare_batching)
        with engine.batch_of_calls():
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)  # type: ignore[return-value]

    def _batches_on_auto(self, inputs: list[LanguageModelInput], kwargs: dict[str, Any]) -> bool:
        return len(inputs) > 1 and kwargs.get("fast_path", self.fast_path) == FastPath.AUTO  # a str enum

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config, emitter = self._with_emitter(config, stop, kwargs)
        yield from super().stream(input, config, stop=stop, **{_EMITTER_KWARG: emitter, **kwargs})

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, emitter = self._with_emitter(config, stop, kwargs)
        async for chunk in super().astream(input, config, stop=stop, **{_EMITTER_KWARG: emitter, **kwargs}):
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stream_tokens = run_manager is not None and super()._should_stream(
            async_api=False, run_manager=run_manager, **kwargs
        )
        chunks = []
        for chunk in self._stream(messages, stop, run_manager, **{_TOKENS_KWARG: stream_tokens, **kwargs}):
            if stream_tokens:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)  # type: ignore[union-attr]
            chunks.append(chunk)
        return with_tool_call_errors(generate_from_stream(iter(chunks)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stream_tokens = run_manager is not None and super()._should_stream(
            async_api=True, run_manager=run_manager, **kwargs
        )
        chunks = []
        async for chunk in self._astream(messages, stop, run_manager, **{_TOKENS_KWARG: stream_tokens, **kwargs}):
            if stream_tokens:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)  # type: ignore[union-attr]
            chunks.append(chunk)
        return with_tool_call_errors(generate_from_stream(iter(chunks)))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Text as it becomes final (token by token where it is final as it is written), then a
        last chunk with metadata; events for provisional draft text and each decided step."""
        emitter = kwargs.pop(_EMITTER_KWARG, None) or (EventEmitter.for_run(run_manager) if run_manager else None)
        stream_text = kwargs.pop(_TOKENS_KWARG, True)
        request = self._prepare(messages, stop, kwargs)
        chunker = Chunker(request, self._response_metadata)
        for item in request.run(self._get_engine(), stream_text=stream_text):
            if emitter and (event := event_of(item)):
                emitter.emit(*event)
            chunk = chunker.chunk(item)
            if chunk is not None:
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        emitter = kwargs.pop(_EMITTER_KWARG, None) or (EventEmitter.for_run(run_manager) if run_manager else None)
        stream_text = kwargs.pop(_TOKENS_KWARG, True)
        request = self._prepare(messages, stop, kwargs)
        chunker = Chunker(request, self._response_metadata)
        async for item in iterate_in_thread(lambda: request.run(self._get_engine(), stream_text=stream_text)):
            if emitter and (event := event_of(item)):
                await emitter.aemit(*event)
            chunk = chunker.chunk(item)
            if chunk is not None:
                yield chunk

    # -- helpers ------------------------------------------------------------------------------

    def _with_emitter(
        self, config: RunnableConfig | None, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RunnableConfig, EventEmitter]:
        """Fix the run id of the coming model run, and an emitter for that run's handlers, with
        the run metadata (the `ls_*` keys included) that `invoke` gives its events."""
        config = ensure_config(config)
        run_id = config.get("run_id") or uuid.uuid4()
        ls_params = getattr(self, "_get_ls_params_with_defaults", self._get_ls_params)  # as stream() gives the run
        run_metadata = {**(config.get("metadata") or {}), **ls_params(stop=stop, **kwargs)}
        emitter = EventEmitter.for_config(
            {**config, "metadata": run_metadata}, run_id, callbacks=self.callbacks, tags=self.tags, metadata=self.metadata
        )
        return {**config, "run_id": run_id}, emitter

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> Request:
        """Validate the call before any model work: the turns, this call's settings, its tools."""
        _check_options(kwargs)
        tools, constraint = answer_shape(
            kwargs.pop("tools", None),
            kwargs.pop("tool_choice", None),
            kwargs.pop(SCHEMA_KWARG, None),
            strict=bool(kwargs.pop("strict", None)),
            reason_first=bool(kwargs.pop(REASON_FIRST_KWARG, True)),
        )
        return Request(to_chat_turns(messages), self._call_config(stop, kwargs), tools, constraint)

    def _spec_config(self, **overrides: Any) -> SpecConfig:
        settings = {name: getattr(self, name) for name in SpecConfig.model_fields}
        settings.update(overrides)
        if settings.get("stop") is None:
            settings["stop"] = ()
        return build_config(**settings)

    def _call_config(self, stop: list[str] | None, kwargs: dict[str, Any]) -> SpecConfig:
        """This call's settings: the model's, overridden by call options that name a setting."""
        overrides = {k: v for k, v in kwargs.items() if k in SpecConfig.model_fields}
        if stop is not None:
            overrides["stop"] = stop
        return self._spec_config(**overrides)  # read from the fields on every call: copies behave

    def _response_metadata(self, result: RunResult) -> dict[str, Any]:
        return {
            "model_name": model_name(self, "target"),
            "finish_reason": result.summary.finish_reason,
            "confspec": {
                "draft_model": model_name(self, "draft"),
                "target_model": model_name(self, "target"),
                "summary": result.summary.model_dump(mode="json"),
                **self._steps_metadata(result),
            },
        }

    def _steps_metadata(self, result: RunResult) -> dict[str, Any]:
        if self.metadata_steps == "none":
            return {}
        texts = {"text", "rejected_text"} if self.metadata_steps == "numbers" else set()
        return {"steps": [record.model_dump(mode="json", exclude=texts) for record in result.records]}

    def _get_engine(self) -> ConfSpecEngine:
        """The engine over this model's pair: weights load the first time anything asks for
        them and are shared by every model (copies included) asking for the same ones."""
        self._engine = engine_for(
            load_role(self, "draft"),
            load_role(self, "target"),
            max_context=self.max_context,
            max_batch=self.max_batch,
            kv_cache_memory=self.kv_cache_memory,
        )
        return self._engine  # kept by this model, so its weights live as long as it does

    def _target_tokenizer(self) -> Any:
        """The target's tokenizer, without loading any weights."""
        if self.target_tokenizer is None and self.target_model is None:
            raise ConfigurationError("A preloaded target needs target_tokenizer= to count tokens.")
        self._tokenizer = self.target_tokenizer or named_tokenizer(self, "target")
        return self._tokenizer  # kept, so that counting tokens does not load it again


# Call options besides the engine's settings: LangChain's own, tools and structured output, ours.
_CALL_OPTIONS = {"stream", "tools", "tool_choice", "strict", SCHEMA_KWARG, REASON_FIRST_KWARG, _EMITTER_KWARG, _TOKENS_KWARG}
_BIND_OPTIONS = {"ls_structured_output_format"}  # bound by with_structured_output, read by LangChain


def _check_options(options: dict[str, Any], *, binding: bool = False) -> None:
    """Refuse call (or bind) options this model does not know, naming the likely intended one."""
    known = set(SpecConfig.model_fields) | _CALL_OPTIONS | (_BIND_OPTIONS if binding else set())
    for name in options:
        if name in known:
            continue
        if name in ConfSpecChatModel.model_fields:
            raise ConfigurationError(
                f"{name!r} is a setting of the model, not of a call: use model.model_copy(update={{{name!r}: ...}})."
            )
        nearest = difflib.get_close_matches(name, sorted(known - {_EMITTER_KWARG, _TOKENS_KWARG, SCHEMA_KWARG}), n=1)
        hint = f" Did you mean {nearest[0]!r}?" if nearest else ""
        raise ConfigurationError(f"Unknown call option {name!r}.{hint}")


ChatConfSpec = ConfSpecChatModel
