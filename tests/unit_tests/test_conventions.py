"""LangChain conventions: settings read per call (copies, configured fields, subclasses) over
shared weights, unknown options refused, pickling and dumpd/loads, run metadata on events."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumps, loads
from langchain_core.runnables import ConfigurableField

from langchain_confspec import ConfigurationError, ConfSpecChatModel, Mode
from langchain_confspec.chat_model import sharing
from langchain_confspec.models.tiny import build_tiny_pair

QUESTION = "What is 12 * 12?"


@pytest.fixture
def pair(tmp_path: Path) -> dict[str, str]:
    draft, target = build_tiny_pair(tmp_path)  # a pair of its own, so load counts are this test's
    return {"draft_model": str(draft), "target_model": str(target)}


@pytest.fixture
def loads_counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []
    load = sharing.load_model

    def counting(name: str, **kwargs: Any) -> Any:
        loaded.append(name)
        return load(name, **kwargs)

    monkeypatch.setattr(sharing, "load_model", counting)
    return loaded


def summary(message: Any) -> dict[str, Any]:
    return message.response_metadata["confspec"]["summary"]


# -- settings per call, weights shared ----------------------------------------------------------


def test_a_copy_runs_with_its_own_settings_on_the_same_weights(pair: dict[str, str], loads_counted: list[str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=20)
    assert summary(model.invoke(QUESTION))["mode"] == "confspec"
    assert len(loads_counted) == 2
    copy = model.model_copy(update={"mode": Mode.TARGET_ONLY, "max_tokens": 5})
    message = copy.invoke(QUESTION)
    assert summary(message)["mode"] == "target_only" and message.usage_metadata["output_tokens"] <= 5  # type: ignore[index]
    assert summary(model.invoke(QUESTION))["mode"] == "confspec"  # the original is untouched
    assert copy._get_engine() is model._get_engine() and len(loads_counted) == 2


def test_configured_fields_and_subclasses_take_effect_without_reloading(pair: dict[str, str], loads_counted: list[str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=12)
    configurable = model.configurable_fields(mode=ConfigurableField(id="mode"), max_tokens=ConfigurableField(id="budget"))
    message = configurable.with_config(configurable={"mode": "draft_only", "budget": 4}).invoke(QUESTION)
    assert summary(message)["mode"] == "draft_only" and message.usage_metadata["output_tokens"] <= 4  # type: ignore[index]
    assert summary(configurable.invoke(QUESTION))["mode"] == "confspec"

    class TargetOnly(ConfSpecChatModel):
        mode: Mode = Mode.TARGET_ONLY

    assert summary(TargetOnly(**pair, max_tokens=6).invoke(QUESTION))["mode"] == "target_only"
    assert len(loads_counted) == 2  # every variant above ran on the weights loaded once


def test_a_new_context_limit_is_a_new_engine_over_the_same_weights(pair: dict[str, str], loads_counted: list[str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=8, fast_path="static")
    model.invoke(QUESTION)
    narrow = model.model_copy(update={"max_context": 128})
    narrow.invoke(QUESTION)
    assert narrow._get_engine() is not model._get_engine()
    assert narrow._get_engine().context["target"] == 128 and narrow._get_engine().target is model._get_engine().target
    assert len(loads_counted) == 2


# -- unknown options --------------------------------------------------------------------------------


def test_a_misspelled_call_option_is_refused_with_the_nearest_name(pair: dict[str, str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=8)
    with pytest.raises(ConfigurationError, match=r"Unknown call option 'max_token'\. Did you mean 'max_tokens'\?"):
        model.invoke(QUESTION, max_token=5)
    with pytest.raises(ConfigurationError, match=r"'temprature'.*'temperature'"):
        list(model.stream(QUESTION, temprature=0.5))
    with pytest.raises(ConfigurationError, match=r"Unknown call option 'bogus'\.$"):
        model.bind(bogus=1)
    with pytest.raises(ConfigurationError, match=r"'max_context' is a setting of the model.*model_copy"):
        model.invoke(QUESTION, max_context=64)
    assert model.bind(mode="target_only", max_tokens=4).invoke(QUESTION).usage_metadata["output_tokens"] <= 4  # type: ignore[index]


async def test_unknown_options_are_refused_on_async_calls_too(pair: dict[str, str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=8)
    with pytest.raises(ConfigurationError, match="'top_k'"):
        await model.ainvoke(QUESTION, top_k=5)


# -- pickling and serialisation ----------------------------------------------------------------------


def test_a_model_from_paths_pickles_before_and_after_its_first_call(pair: dict[str, str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=10, mode="target_only")
    fresh = pickle.loads(pickle.dumps(model))
    answer = model.invoke(QUESTION).content
    data = pickle.dumps(model)  # after loading: the weights do not travel
    assert len(data) < 20_000
    revived = pickle.loads(data)
    assert revived.mode is Mode.TARGET_ONLY and revived.invoke(QUESTION).content == answer == fresh.invoke(QUESTION).content


def test_a_model_holding_preloaded_objects_says_why_it_cannot_be_pickled(pair: dict[str, str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=8)
    engine = model._get_engine()
    held = ConfSpecChatModel(draft=engine.draft.model, draft_tokenizer=engine.draft.tokenizer, target_model=pair["target_model"])
    with pytest.raises(TypeError, match=r"holds preloaded objects \(draft, draft_tokenizer\).*draft_model= and target_model="):
        pickle.dumps(held)
    assert '"type": "not_implemented"' in dumps(held)


def test_dumps_and_loads_round_trip_the_settings(pair: dict[str, str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=10, mode="target_only", accept_threshold=0.7)
    revived = loads(dumps(model), allowed_objects=[ConfSpecChatModel], valid_namespaces=["langchain_confspec"])
    assert isinstance(revived, ConfSpecChatModel)
    assert (revived.mode, revived.accept_threshold, revived.max_tokens) == (Mode.TARGET_ONLY, 0.7, 10)
    assert revived.invoke(QUESTION).content == model.invoke(QUESTION).content


# -- run metadata on events ----------------------------------------------------------------------------


class MetadataLog(BaseCallbackHandler):
    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if name == "confspec_step":
            self.metadata.append(metadata or {})


async def test_step_events_carry_the_same_run_metadata_on_every_path(pair: dict[str, str]) -> None:
    model = ConfSpecChatModel(**pair, max_tokens=10)
    logs = [MetadataLog() for _ in range(4)]
    model.invoke(QUESTION, config={"callbacks": [logs[0]], "metadata": {"user": "u1"}})
    list(model.stream(QUESTION, config={"callbacks": [logs[1]], "metadata": {"user": "u1"}}))
    [c async for c in model.astream(QUESTION, config={"callbacks": [logs[2]], "metadata": {"user": "u1"}})]
    await model.ainvoke(QUESTION, config={"callbacks": [logs[3]], "metadata": {"user": "u1"}})
    keys = [{k for k in log.metadata[0] if k.startswith("ls_") or k == "user"} for log in logs]
    assert keys[0] >= {"ls_provider", "ls_model_name", "ls_model_type", "ls_max_tokens", "user"}
    assert all(k == keys[0] for k in keys), keys
    assert all(log.metadata[0]["ls_provider"] == "confspec" for log in logs)
