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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from langchain_confspec.demo import DEMO_DRAFT, DEMO_TARGET
from langchain_confspec.errors import ModelLoadError, TokenizerMismatchError
from langchain_confspec.prompting import render_prompt

logger = logging.getLogger(__name__)

DEMO_PAIR_DIR = Path(__file__).parent / "demo" / "pair"
DEMO_MODELS = {DEMO_DRAFT: DEMO_PAIR_DIR / "draft", DEMO_TARGET: DEMO_PAIR_DIR / "target"}


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


def load_tokenizer(name_or_path: str, *, role: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer by id or path, with an error that names the role and the path."""
    source = resolve_model_name(name_or_path, role=role)
    try:
        return AutoTokenizer.from_pretrained(source)
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
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name_or_path, role=role)
    source = resolve_model_name(name_or_path, role=role)
    kwargs: dict[str, Any] = {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    logger.info("loading the %s model from %s", role, source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the {role} model {name_or_path!r}: {exc}") from exc
    return wrap_model(model, tokenizer, role=role, name=name_or_path)


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


def resolve_model_name(name_or_path: str, *, role: str) -> str:
    """The bundled demo models by name, anything else as given; a missing local path fails here."""
    if name_or_path in DEMO_MODELS:
        return str(DEMO_MODELS[name_or_path])
    _check_local_path(name_or_path, role=role)
    return name_or_path


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
