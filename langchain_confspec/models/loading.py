"""Loading draft and target models, by Hugging Face id, local path, or ready objects.

The rest of the engine only sees `LoadedModel`: a model, its tokenizer, and the few facts
about them that generation needs (context length, end-of-sequence ids). Loading errors are
turned into `ModelLoadError` / `TokenizerMismatchError` here, once.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import get_session, try_to_load_from_cache
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from langchain_confspec.demo import DEMO_DRAFT, DEMO_PAIR_DIR, DEMO_TARGET
from langchain_confspec.errors import ModelLoadError, TokenizerMismatchError
from langchain_confspec.models.prompting import render_prompt

logger = logging.getLogger(__name__)

DEMO_MODELS = {DEMO_DRAFT: DEMO_PAIR_DIR / "draft", DEMO_TARGET: DEMO_PAIR_DIR / "target"}
HUB_PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM with its tokenizer, ready for the engine."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def directory(self) -> Path | None:
        """The local folder the model was loaded from, if any (where its side files live)."""
        path = Path(str(getattr(self.model.config, "_name_or_path", "") or ""))
        return path if str(path) and path.is_dir() else None

    @property
    def cache_argument(self) -> str:
        """The name the model's forward pass takes its KV cache by (`cache` from transformers
        5.24 on, `past_key_values` before)."""
        return _cache_argument(type(self.model))

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer can produce; embedding rows past them are padding."""
        return len(self.tokenizer)

    @property
    def context_length(self) -> int:
        """Longest sequence the model's position embeddings cover."""
        config = self.model.config.get_text_config()
        return int(getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    def render_prompt(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        return render_prompt(self.tokenizer, turns, tools)


@functools.cache
def _cache_argument(model_class: type) -> str:
    for cls in model_class.__mro__:  # the nearest forward that names its cache argument
        forward = cls.__dict__.get("forward")
        if forward is not None:
            parameters = inspect.signature(forward).parameters
            for name in ("cache", "past_key_values"):
                if name in parameters:
                    return name
    return "past_key_values"


@dataclass(frozen=True)
class ModelSource:
    """Where `from_pretrained` reads a model: `location` is a local folder or a hub id, and
    `local_files_only` says no download can happen (a folder, or a cached id while the hub is
    out of reach), so nothing waits on retries and no progress bars are drawn."""

    location: str
    local_files_only: bool


def load_tokenizer(name_or_path: str, *, role: str, source: ModelSource | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer by id or path, with an error that names the role and the path."""
    source = source or resolve_model_source(name_or_path, role=role)
    try:
        with _quiet_loading(source):
            return AutoTokenizer.from_pretrained(source.location, local_files_only=source.local_files_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the {role} tokenizer {name_or_path!r}: {exc}") from exc


def load_model(
    name_or_path: str,
    *,
    role: str,
    device_map: str | dict[str, Any] | None = None,
    torch_dtype: str | torch.dtype | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> LoadedModel:
    """Load `name_or_path` with `AutoModelForCausalLM`, like any Hugging Face model."""
    source = resolve_model_source(name_or_path, role=role)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name_or_path, role=role, source=source)
    kwargs: dict[str, Any] = {"local_files_only": source.local_files_only}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    logger.info("loading the %s model from %s", role, source.location)
    try:
        with _quiet_loading(source):
            model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the {role} model {name_or_path!r}: {exc}") from exc
    return wrap_model(model, tokenizer, role=role, name=name_or_path)


_PROGRESS_BARS_LOCK = threading.Lock()


@contextmanager
def _quiet_loading(source: ModelSource) -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights") while reading local files: they say
    nothing a library user asked for. A download keeps its bars, which show real waiting."""
    if not source.local_files_only:
        yield
        return
    with _PROGRESS_BARS_LOCK:
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()


def wrap_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, role: str, name: str | None = None
) -> LoadedModel:
    """Check that a model and tokenizer belong together and describe them for the engine."""
    n_embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embeddings:
        raise TokenizerMismatchError(
            f"The {role} tokenizer has {len(tokenizer)} tokens but the {role} model only embeds "
            f"{n_embeddings}: they do not belong together."
        )
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or str(getattr(model.config, "name_or_path", "") or type(model).__name__),
        eos_token_ids=_eos_token_ids(model, tokenizer),
    )


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def resolve_model_source(name_or_path: str, *, role: str) -> ModelSource:
    """The bundled demo models by name, local folders as given, hub ids checked against the hub.

    A missing local path fails here. A hub id that is not in the local cache while the hub
    cannot be reached fails here too, at once: left to `from_pretrained`, it spends a minute in
    retries. A cached id is then read from the cache without asking the hub.
    """
    if name_or_path in DEMO_MODELS:
        return ModelSource(str(DEMO_MODELS[name_or_path]), local_files_only=True)
    _check_local_path(name_or_path, role=role)
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return ModelSource(os.path.expanduser(name_or_path), local_files_only=True)
    unreachable = hub_unreachable()
    if unreachable is None:
        return ModelSource(name_or_path, local_files_only=False)
    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return ModelSource(name_or_path, local_files_only=True)
    raise ModelLoadError(
        f"The {role} model {name_or_path!r} is not a local folder, not in the Hugging Face cache "
        f"({hub_constants.HF_HUB_CACHE}), and the hub cannot be reached: {unreachable}. "
        "Download it while online, or pass the path of a local copy."
    )


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot answer now (offline mode, no network, refused), or None.

    One request through the hub's own HTTP session (so proxies and HF_ENDPOINT apply), no retries.
    """
    try:
        get_session().head(hub_constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as exc:  # noqa: BLE001 - whatever prevents an answer means the hub cannot serve a download
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_local_path(name_or_path: str, *, role: str) -> None:
    if not name_or_path or not name_or_path.strip():
        raise ModelLoadError(f"The {role} model name is empty.")
    expanded = os.path.expanduser(name_or_path)
    looks_local = expanded.startswith((os.sep, ".")) or name_or_path.startswith("~") or expanded.count("/") > 1
    if looks_local and not os.path.exists(expanded):
        raise ModelLoadError(f"The {role} model path {name_or_path!r} does not exist.")


def attention_layers(model: PreTrainedModel) -> tuple[set[str], int | None]:
    """The kinds of attention layers a model has (`full_attention`, `sliding_attention`, ...)
    and its sliding window, if any layer slides."""
    config = model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    if getattr(config, "layer_types", None):
        kinds = set(config.layer_types)
    elif window and getattr(config, "use_sliding_window", True):
        kinds = {"sliding_attention"}
    else:
        kinds = {"full_attention"}
    return kinds, (window if "sliding_attention" in kinds else None)


def rollback_problem(model: PreTrainedModel, context_length: int) -> str | None:
    """Why this model's KV cache could not roll back a rejected step within `context_length`
    tokens, or None. A sliding window that the context never fills holds every token."""
    kinds, window = attention_layers(model)
    others = sorted(kinds - {"full_attention", "sliding_attention"})
    if others:
        return f"it has {', '.join(others)} layers, whose state cannot be rolled back to an earlier position"
    if window is not None and context_length >= window:
        return (
            f"it uses sliding-window attention (a {window}-token window): once an answer fills the window, "
            f"its cache no longer holds what a rollback needs. Set max_context below {window} to use it"
        )
    return None


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """True when token ids mean the same text in both tokenizers, so steps can travel as ids."""
    return a is b or (a.get_vocab() == b.get_vocab() and a.all_special_ids == b.all_special_ids)
