"""`ConfSpecChatModel`: the LangChain face of the engine.

This module holds no algorithm. It turns messages into chat turns, call options into a
`SpecConfig`, engine records into callback events and message chunks, and results into
`AIMessage`s with usage and audit metadata. Weights load on first use, once.
"""

from __future__ import annotations

import asyncio
import difflib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import (
    LangSmithParams,
    generate_from_stream,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolCallChunk,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
)

from langchain_confspec.cache_budget import validate_budget
from langchain_confspec.callbacks import (
    DRAFT_TOKEN_EVENT,
    STEP_EVENT,
    SUMMARY_EVENT,
    EventEmitter,
)
from langchain_confspec.config import (
    FastPath,
    Mode,
    SpecConfig,
    VerificationStyle,
    build_config,
    settings_error,
)
from langchain_confspec.decoding import StopHoldback
from langchain_confspec.demo import DEMO_DRAFT, DEMO_TARGET, pair_settings
from langchain_confspec.engine import (
    DEFAULT_MAX_BATCH,
    ConfSpecEngine,
    Constraint,
    RunResult,
    TextDelta,
)
from langchain_confspec.errors import ConfigurationError
from langchain_confspec.loading import LoadedModel
from langchain_confspec.messages import to_chat_turns
from langchain_confspec.prompting import render_prompt
from langchain_confspec.records import Span, StepRecord
from langchain_confspec.remote import RemoteModel
from langchain_confspec.sharing import (
    engine_for,
    model_by_name,
    model_object,
    served_model,
    tokenizer_by_name,
)
from langchain_confspec.static_runner import WarmupReport
from langchain_confspec.structured import (
    REASON_FIRST_KWARG,
    SCHEMA_KWARG,
    answer_shape,
    resolve_tool_choice,
    structured_output_runnable,
    tool_call_chunks,
)
from langchain_confspec.threading_bridge import iterate_in_thread
from langchain_confspec.tool_calls import ToolCallHoldback, parse_tool_calls

# Call option through which stream()/astream() hand `_stream` the run's event emitter.
_EMITTER_KWARG = "_confspec_emitter"
# Call option through which invoke() tells `_stream` whether anyone wants text before the end.
_TOKENS_KWARG = "_confspec_stream_text"


class ConfSpecChatModel(BaseChatModel):
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

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), use_attribute_docstrings=True)

    draft_model: str | None = None
    """Hugging Face id or local path of the draft (small) model."""
    target_model: str | None = None
    """Hugging Face id or local path of the target (large) model; with `target_url`, of its
    tokenizer only."""
    target_url: str | None = None
    """Base URL of a server that serves the target (`target_engine`), e.g.
    `http://127.0.0.1:8080`: no target weights load here, prompts go to it as token ids
    (docs/remote-target.md)."""
    target_engine: Literal["auto", "llama.cpp", "vllm", "sglang"] = "auto"
    """What serves `target_url`: llama.cpp's `llama-server`, vLLM's OpenAI-compatible server,
    SGLang's native API, or `auto` (asked of the server at start-up)."""
    target_api_key: SecretStr | None = None
    """API key the target's server asks for (sent as a bearer token; never shown or logged)."""
    target_timeout: float = Field(default=60.0, gt=0)
    """Seconds a request to the target's server may take, per try (the client retries twice)."""
    draft: Any = Field(default=None, exclude=True, repr=False)
    """An already-loaded draft model, used instead of loading `draft_model`."""
    draft_tokenizer: Any = Field(default=None, exclude=True, repr=False)
    """Tokenizer of a preloaded `draft` (loaded from `draft_model` when omitted)."""
    target: Any = Field(default=None, exclude=True, repr=False)
    """An already-loaded target model, used instead of loading `target_model`."""
    target_tokenizer: Any = Field(default=None, exclude=True, repr=False)
    """Tokenizer of a preloaded `target` (loaded from `target_model` when omitted)."""
    device_map: str | dict[str, Any] | None = None
    """Passed to `from_pretrained`, e.g. "auto" to place models on GPUs."""
    torch_dtype: Any = None
    """Passed to `from_pretrained` as the weights' dtype, e.g. "bfloat16"."""

    mode: Mode = Mode.CONFSPEC
    """`confspec`, `target_only`, `draft_only` or `always_verify` (the target judges every step)."""
    step_delimiters: list[str] = Field(default_factory=lambda: ["\n\n"])
    """Text that ends a reasoning step."""
    max_step_tokens: int = 128
    """Longest step, in tokens."""
    max_tokens: int = 512
    """Longest answer, in tokens."""
    stop: list[str] | None = None
    """Stop strings, matched on the text (also across token boundaries)."""
    verification: VerificationStyle = VerificationStyle.BINARY
    """Ask for a Yes/No verdict (`binary`) or a 0-9 `score`."""
    verification_prompt: str | None = None
    """Replaces the default verification suffix appended after a step."""
    score_pass_mark: int = 7
    """With `verification="score"`, the lowest passing score."""
    accept_threshold: float = 0.8
    """Draft confidence at which its own accept verdict stands (above 1: never)."""
    reject_threshold: float = 0.9
    """Draft confidence at which its own reject verdict stands (above 1: never)."""
    target_accept_threshold: float = 0.5
    """Target acceptance probability needed to keep an escalated step."""
    verdict_mass_floor: float = 0.5
    """Least probability a model must put on the verdict tokens for its verdict to count: below
    it the draft's verdict is uncertain (the step escalates) and the target's a rejection."""
    token_speculation: bool = False
    """Let the draft propose tokens inside the target's own steps (same output, fewer target passes)."""
    speculation_depth: int | None = None
    """With token speculation: `None` lets the draft's entropy decide how far each proposal goes
    (one host read per proposed token); a number (1-64) proposes that many tokens every round,
    made and checked on the device with one host read per round. Same output either way."""
    rewrite_from_rejected: bool = True
    """When the target rewrites a rejected step (greedy decoding), check the rejected step as its
    first proposal: the rewrite keeps the prefix the target would write itself, so an identical
    rewrite costs one target pass (none after the target's own verdict) instead of one per token.
    Same output either way."""
    temperature: float = 0.0
    """0 decodes greedily."""
    top_p: float = 1.0
    """Nucleus sampling mass, when `temperature` > 0."""
    seed: int | None = None
    """Seed for sampling; a fixed seed makes sampled answers repeatable."""
    fast_path: FastPath = FastPath.AUTO
    """How forward passes run: `off` (a dynamic KV cache per call), `static` (each model's
    preallocated cache, rolled back by position), `graphs` (static plus CUDA graphs; CUDA
    only) or `auto` (`graphs` on CUDA, the faster of the others on the CPU)."""
    max_context: int | None = Field(default=None, ge=2)
    """Context window the engine uses for each model, in tokens (default: the model's own).
    It sizes the static KV caches, so lower it to what your calls need on long-context models."""
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1)
    """Calls answered at once: each holds a row of every static cache, and their forward passes
    run together in batches (on `static` and `graphs`). More wait for a free slot. The KV
    budget may allow fewer rows (see `kv_cache_memory`)."""
    kv_cache_memory: int | float | None = None
    """Memory for both models' static KV caches: bytes (an int) or a fraction of the device's
    free memory after the weights (a float in (0, 1]); default half of it on CUDA, a quarter of
    the available memory on the CPU. Rows and each row's context come out of it: rows are given
    up before a row drops below 4,096 tokens, then the row shrinks (a call whose prompt and
    `max_tokens` do not fit goes to `off` under `auto`; a prompt longer than a row is refused at
    once, naming the budget, on `static`/`graphs`); where
    not one row of 256 tokens fits, `auto` uses `off`. The warm-up report and an INFO log line
    say what was chosen."""
    streaming: bool = False
    """Whether `invoke` streams tokens to callbacks by default."""
    metadata_steps: Literal["full", "numbers", "none"] = "full"
    """Step records in `response_metadata`: all of them, only ids and numbers (no texts,
    for tracing back ends that should stay small), or none (the summary only)."""

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
            "draft_model": self._model_name("draft"),
            "target_model": self._model_name("target"),
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
            ls_model_name=kwargs.get("model") or self._model_name("target"),
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
        """As LangChain's `batch`, with the shared static caches ready first, so that on the
        CPU the calls batch their forward passes instead of taking turns."""
        if self._batches_on_auto(inputs, kwargs):
            self._get_engine().prepare_batching()
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
        if self._batches_on_auto(inputs, kwargs):
            await asyncio.to_thread(self._get_engine().prepare_batching)
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
        return _with_tool_call_errors(generate_from_stream(iter(chunks)))

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
        return _with_tool_call_errors(generate_from_stream(iter(chunks)))

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
        chunker = _Chunker(self, request)
        for item in request.run(self._get_engine(), stream_text=stream_text):
            if emitter and (event := _event(item)):
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
        chunker = _Chunker(self, request)
        async for item in iterate_in_thread(lambda: request.run(self._get_engine(), stream_text=stream_text)):
            if emitter and (event := _event(item)):
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

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Request:
        """Validate the call before any model work: the turns, this call's settings, its tools."""
        _check_options(kwargs)
        tools, constraint = answer_shape(
            kwargs.pop("tools", None),
            kwargs.pop("tool_choice", None),
            kwargs.pop(SCHEMA_KWARG, None),
            strict=bool(kwargs.pop("strict", None)),
            reason_first=bool(kwargs.pop(REASON_FIRST_KWARG, True)),
        )
        return _Request(to_chat_turns(messages), self._call_config(stop, kwargs), tools, constraint)

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
            "model_name": self._model_name("target"),
            "finish_reason": result.summary.finish_reason,
            "confspec": {
                "draft_model": self._model_name("draft"),
                "target_model": self._model_name("target"),
                "summary": result.summary.model_dump(mode="json"),
                **self._steps_metadata(result),
            },
        }

    def _steps_metadata(self, result: RunResult) -> dict[str, Any]:
        if self.metadata_steps == "none":
            return {}
        texts = {"text", "rejected_text"} if self.metadata_steps == "numbers" else set()
        return {"steps": [record.model_dump(mode="json", exclude=texts) for record in result.records]}

    def _model_name(self, role: str) -> str:
        name = getattr(self, f"{role}_model")
        if name:
            return name
        model = getattr(self, role)
        return str(getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__)

    def _get_engine(self) -> ConfSpecEngine:
        """The engine over this model's pair: weights load the first time anything asks for
        them and are shared by every model (copies included) asking for the same ones."""
        self._engine = engine_for(
            self._load("draft"),
            self._load("target"),
            max_context=self.max_context,
            max_batch=self.max_batch,
            kv_cache_memory=self.kv_cache_memory,
        )
        return self._engine  # kept by this model, so its weights live as long as it does

    def _load(self, role: str) -> LoadedModel | RemoteModel:
        if role == "target" and self.target_url is not None:
            key = self.target_api_key.get_secret_value() if self.target_api_key is not None else None
            tokenizer = self.target_tokenizer or self._named_tokenizer("target")
            return served_model(self.target_url, tokenizer, engine=self.target_engine, api_key=key, timeout=self.target_timeout)
        preloaded = getattr(self, role)
        tokenizer = getattr(self, f"{role}_tokenizer") or self._named_tokenizer(role)
        if preloaded is None:
            return model_by_name(
                getattr(self, f"{role}_model"),
                role=role,
                device_map=self.device_map,
                torch_dtype=self.torch_dtype,
                tokenizer=tokenizer,
            )
        return model_object(preloaded, tokenizer, role=role, name=self._model_name(role))

    def _named_tokenizer(self, role: str) -> Any:
        name = getattr(self, f"{role}_model")
        if name is None:
            raise ConfigurationError(f"A preloaded {role} needs {role}_tokenizer= (or {role}_model= to load it from).")
        return tokenizer_by_name(name, role=role)

    def _target_tokenizer(self) -> Any:
        """The target's tokenizer, without loading any weights."""
        if self.target_tokenizer is None and self.target_model is None:
            raise ConfigurationError("A preloaded target needs target_tokenizer= to count tokens.")
        self._tokenizer = self.target_tokenizer or self._named_tokenizer("target")
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


def _event(item: StepRecord | TextDelta | RunResult) -> tuple[str, dict[str, Any]] | None:
    """The custom event announcing a step record, provisional draft text, or the run's summary."""
    if isinstance(item, RunResult):
        return SUMMARY_EVENT, item.summary.model_dump(mode="json")
    if isinstance(item, TextDelta):
        return (DRAFT_TOKEN_EVENT, {"step": item.step, "text": item.text}) if item.provisional else None
    return STEP_EVENT, item.model_dump(mode="json")


@dataclass(frozen=True)
class _Request:
    """One call, validated: what to answer, with which settings, tools and constraint."""

    turns: list[dict[str, Any]]
    config: SpecConfig
    tools: list[dict[str, Any]] | None
    constraint: Constraint | None

    def run(self, engine: ConfSpecEngine, *, stream_text: bool) -> Iterator[StepRecord | TextDelta | RunResult]:
        return engine.run(self.turns, self.config, tools=self.tools, constraint=self.constraint, stream_text=stream_text)


class _Chunker:
    """Turns engine output into message chunks that merge into the final message.

    With tools bound, text from the first `<tool_call>` on is held back and the calls come
    as `tool_call_chunks` on the last chunk, so no half-written call is streamed as text.
    Reasoning steps before a constrained object go out as `reasoning_content`, so that the
    content is the object alone.
    """

    def __init__(self, model: ConfSpecChatModel, request: _Request) -> None:
        self.model = model
        self.reasoning_first = request.constraint is not None and request.constraint.after_reasoning
        self.holdback = StopHoldback(request.config.stop)
        self.tool_holdback = ToolCallHoldback() if request.tools else None
        self.tools = request.tools
        self._streamed: dict[int, int] = {}  # step index -> characters of it already streamed

    def chunk(self, item: StepRecord | TextDelta | RunResult) -> ChatGenerationChunk | None:
        if isinstance(item, RunResult):
            return self._last_chunk(item)
        if isinstance(item, TextDelta):
            if item.provisional:  # a draft step awaiting its verdict: announced by an event only
                return None
            self._streamed[item.step] = self._streamed.get(item.step, 0) + len(item.text)
            return self._reasoning_chunk(item.text) if self._is_reasoning(item.span) else self._text_chunk(item.text)
        rest = item.text[self._streamed.pop(item.index, 0) :]  # what was not streamed yet
        return self._reasoning_chunk(rest) if self._is_reasoning(item.span) else self._text_chunk(rest)

    def _is_reasoning(self, span: Span) -> bool:
        return self.reasoning_first and span is Span.TEXT

    @staticmethod
    def _reasoning_chunk(text: str) -> ChatGenerationChunk | None:
        if not text:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": text}))

    def _text_chunk(self, text: str) -> ChatGenerationChunk | None:
        text = self.holdback.feed(text)
        if self.tool_holdback is not None:
            text = self.tool_holdback.feed(text)
        return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None

    def _last_chunk(self, result: RunResult) -> ChatGenerationChunk:
        # Usage, names and float-valued summaries go on the last chunk only: merging chunks
        # sums usage, concatenates strings and refuses two different floats.
        metadata = self.model._response_metadata(result)
        content = result.text
        if self.reasoning_first:
            content = "".join(r.text for r in result.records if r.span is not Span.TEXT)
        rest = self.holdback.finish(content)
        call_chunks: list[ToolCallChunk] = []
        if self.tool_holdback is not None:
            answer = parse_tool_calls(result.text, self.tools)
            rest = answer.content[self.tool_holdback.released :]
            call_chunks = tool_call_chunks(answer)
            if answer.tool_calls:
                metadata["finish_reason"] = "tool_calls"
            if answer.invalid_tool_calls:
                metadata["confspec"]["invalid_tool_call_errors"] = {c["id"]: c["error"] for c in answer.invalid_tool_calls}
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=rest,
                chunk_position="last",
                response_metadata=metadata,
                usage_metadata=_usage(result),
                tool_call_chunks=call_chunks,
            )
        )


def _with_tool_call_errors(result: ChatResult) -> ChatResult:
    """Put back the reasons why tool calls were invalid (merging chunks drops them)."""
    message = result.generations[0].message
    errors = message.response_metadata.get("confspec", {}).get("invalid_tool_call_errors")
    if errors and isinstance(message, AIMessage):
        for call in message.invalid_tool_calls:
            call["error"] = errors.get(call["id"] or "", call["error"])
    return result


def _usage(result: RunResult) -> UsageMetadata:
    output_tokens = sum(r.n_tokens for r in result.records)
    return UsageMetadata(
        input_tokens=result.input_tokens,
        output_tokens=output_tokens,
        total_tokens=result.input_tokens + output_tokens,
        output_token_details=result.output_tokens_by_writer,  # type: ignore[typeddict-item]
    )


ChatConfSpec = ConfSpecChatModel
