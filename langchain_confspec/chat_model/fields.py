"""The settings of `ConfSpecChatModel`, declared as its pydantic fields.

Kept apart from the call handling in `model.py`: one place lists every setting, its type,
bounds and default, with the docstring users read.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from pydantic import ConfigDict, Field, SecretStr

from langchain_confspec.config import FastPath, Mode, TargetCheck, VerificationStyle
from langchain_confspec.engine.engine import DEFAULT_MAX_BATCH


class ChatModelFields(BaseChatModel):
    """Every setting of the chat model; `ConfSpecChatModel` adds the calls."""

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
    target_check: TargetCheck = TargetCheck.VERDICT
    """How the target checks an escalated step: its `verdict` (against `target_accept_threshold`),
    or `agreement`: the step stands only if the target would write it itself (greedy; one pass
    checks it as a token-level proposal and the target rewrites it from where it departs), so
    escalated steps read exactly as the target's own. Greedy only."""
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
    target_writes_tool_calls: bool = True
    """In `confspec` and `always_verify`, the target writes every tool call itself (constrained
    or, from a served target, free text) instead of judging the draft's: a call is an action
    taken on the model's word, and a verdict keeps plausible wrong calls (another sentence's
    number, another operator) that the target would not write. Greedy, the target checks the
    draft's call as a proposal first: the same call, one target pass when it agrees. False
    speculates calls like any step."""
    target_writes_objects: bool = True
    """In `confspec` and `always_verify`, the target writes a structured-output object itself
    (under the schema, after the steps) instead of judging the draft's: the object is what the
    caller keeps, so it holds the target's values. Greedy, it checks the draft's object as a
    proposal first, as for calls. False speculates the object like any step."""
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
