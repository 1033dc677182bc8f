"""The draft and the target a chat model's settings name, loaded through `sharing`.

Each role is a name to load (`draft_model`, `target_model`), an object already in memory
(`draft`, `target`, with its tokenizer), or for the target a server (`target_url`).
"""

from __future__ import annotations

from typing import Any

from langchain_confspec.chat_model.fields import ChatModelFields
from langchain_confspec.chat_model.sharing import (
    model_by_name,
    model_object,
    served_model,
    tokenizer_by_name,
)
from langchain_confspec.errors import ConfigurationError
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.remote import RemoteModel


def model_name(settings: ChatModelFields, role: str) -> str:
    """`role`'s model id or path, or for an object in memory the name it carries."""
    name = getattr(settings, f"{role}_model")
    if name:
        return name
    model = getattr(settings, role)
    return str(getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__)


def load_role(settings: ChatModelFields, role: str) -> LoadedModel | RemoteModel:
    """`role`'s model, loaded once for every chat model that names the same one."""
    if role == "target" and settings.target_url is not None:
        key = settings.target_api_key.get_secret_value() if settings.target_api_key is not None else None
        tokenizer = settings.target_tokenizer or named_tokenizer(settings, "target")
        return served_model(
            settings.target_url, tokenizer, engine=settings.target_engine, api_key=key, timeout=settings.target_timeout
        )
    preloaded = getattr(settings, role)
    tokenizer = getattr(settings, f"{role}_tokenizer") or named_tokenizer(settings, role)
    if preloaded is None:
        return model_by_name(
            getattr(settings, f"{role}_model"),
            role=role,
            device_map=settings.device_map,
            torch_dtype=settings.torch_dtype,
            tokenizer=tokenizer,
        )
    return model_object(preloaded, tokenizer, role=role, name=model_name(settings, role))


def named_tokenizer(settings: ChatModelFields, role: str) -> Any:
    """`role`'s tokenizer loaded by its model's name."""
    name = getattr(settings, f"{role}_model")
    if name is None:
        raise ConfigurationError(f"A preloaded {role} needs {role}_tokenizer= (or {role}_model= to load it from).")
    return tokenizer_by_name(name, role=role)
