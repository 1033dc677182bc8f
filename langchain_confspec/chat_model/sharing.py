"""Loaded models and engines shared by every chat model that asks for the same ones.

A `ConfSpecChatModel` reads its settings on every call, so copies (`model_copy`), configured
variants (`configurable_fields` builds a new instance for each call) and subclasses behave as
pydantic and LangChain users expect. What must not happen per instance is loading weights or
capturing graphs again: models are kept here while anything uses them, keyed by what decides
the load (name or object, device map, dtype, tokenizer), and engines (with their static caches,
graphs and batch scheduler) by their two models, context limit, `max_batch` and KV budget. Both caches hold weak references, so
dropping every chat model that uses a model frees its weights.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from typing import Any

from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.models.cache_budget import KVBudget
from langchain_confspec.models.loading import (
    LoadedModel,
    load_model,
    load_tokenizer,
    wrap_model,
)
from langchain_confspec.models.remote import RemoteModel

_LOCK = threading.RLock()
_TOKENIZERS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_MODELS: weakref.WeakValueDictionary[tuple[Any, ...], LoadedModel | RemoteModel] = weakref.WeakValueDictionary()
_ENGINES: weakref.WeakValueDictionary[tuple[Any, ...], ConfSpecEngine] = weakref.WeakValueDictionary()


def tokenizer_by_name(name: str, *, role: str) -> Any:
    """`load_tokenizer`, once for every caller naming the same tokenizer."""
    with _LOCK:
        tokenizer = _TOKENIZERS.get(name)
        if tokenizer is None:
            tokenizer = _TOKENIZERS[name] = load_tokenizer(name, role=role)
        return tokenizer


def model_by_name(
    name: str, *, role: str, device_map: Any, torch_dtype: Any, tokenizer: Any | None
) -> LoadedModel:
    """`load_model`, once for every caller asking for the same model the same way."""
    key = ("name", name, json.dumps(device_map, sort_keys=True, default=str), str(torch_dtype), id(tokenizer))
    with _LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            loaded = load_model(name, role=role, device_map=device_map, torch_dtype=torch_dtype, tokenizer=tokenizer)
            _MODELS[key] = loaded
        return loaded


def model_object(model: Any, tokenizer: Any, *, role: str, name: str) -> LoadedModel:
    """`wrap_model`, once for every caller passing the same model and tokenizer objects."""
    key = ("object", id(model), id(tokenizer))
    with _LOCK:
        loaded = _MODELS.get(key)
        if loaded is None or loaded.model is not model or loaded.tokenizer is not tokenizer:
            loaded = wrap_model(model, tokenizer, role=role, name=name)
            _MODELS[key] = loaded
        return loaded


def served_model(url: str, tokenizer: Any, *, engine: str, api_key: str | None, timeout: float) -> RemoteModel:
    """A `RemoteModel` for the server at `url`, its tokenizer checked against the local one,
    once for every caller naming the same server, tokenizer and key."""
    key_digest = hashlib.sha256(api_key.encode()).hexdigest() if api_key is not None else None  # the key itself is kept nowhere
    key = ("served", url.rstrip("/"), engine, id(tokenizer), key_digest, timeout)
    with _LOCK:
        remote = _MODELS.get(key)
        if not isinstance(remote, RemoteModel):
            remote = RemoteModel(url, tokenizer, engine=engine, api_key=api_key, timeout=timeout)
            remote.check_tokenizer()
            _MODELS[key] = remote
        return remote


def engine_for(
    draft: LoadedModel, target: LoadedModel | RemoteModel, *, max_context: int | None, max_batch: int, kv_cache_memory: KVBudget | None = None
) -> ConfSpecEngine:
    """The engine over these two models with this context limit, batch size and KV budget, made once."""
    budget = (type(kv_cache_memory).__name__, kv_cache_memory)  # 1 byte is not 1.0 of the memory
    key = (id(draft), id(target), max_context, max_batch, budget)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine.draft is not draft or engine.target is not target:
            engine = ConfSpecEngine(
                draft, target, max_context=max_context, max_batch=max_batch, kv_cache_memory=kv_cache_memory
            )
            _ENGINES[key] = engine
        return engine
