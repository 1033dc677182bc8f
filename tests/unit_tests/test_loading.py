"""Loading models as a newcomer meets it: hub ids without a network, quiet local loads, long prompts.

No test here touches the network: the suite runs with sockets disabled (pytest-socket), which
is what a machine without a network looks like to the hub's client, and the hub's cache is a
temporary folder.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants
from langchain_core.messages import HumanMessage

from langchain_confspec import (
    ConfSpecChatModel,
    ContextLengthError,
    ModelLoadError,
    load_model,
)
from langchain_confspec.demo import DEMO_TARGET
from langchain_confspec.models.loading import (
    hub_unreachable,
    load_tokenizer,
    resolve_model_source,
)
from langchain_confspec.models.prompting import render_prompt

pytestmark = pytest.mark.filterwarnings("ignore:A test tried to use socket")


@pytest.fixture
def hub_out_of_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network (sockets are disabled), an empty hub cache (returned), and any retry wait fails the test."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def no_waiting(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s: a retry loop ran")

    monkeypatch.setattr(time, "sleep", no_waiting)
    return tmp_path / "hub-cache"


def _cache_as_hub_id(folder: Path, cache: Path, repo_id: str) -> None:
    """Lay `folder` out in the hub's cache the way a download of `repo_id` would."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_an_unknown_hub_id_fails_at_once_when_the_hub_is_out_of_reach(hub_out_of_reach: Path) -> None:
    assert hub_unreachable() is not None
    chat = ConfSpecChatModel(draft_model="nope/nope", target_model=DEMO_TARGET)
    with pytest.raises(ModelLoadError) as caught:
        chat.invoke("What is 2 + 3?")
    message = str(caught.value)
    assert "'nope/nope'" in message and "draft" in message
    assert "not a local folder, not in the Hugging Face cache" in message and "cannot be reached" in message


def test_offline_mode_fails_at_once_too(monkeypatch: pytest.MonkeyPatch, hub_out_of_reach: Path) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="'nope/nope'.*offline mode"):
        load_model("nope/nope", role="target")


def test_a_cached_hub_id_loads_from_the_cache_when_the_hub_is_out_of_reach(
    tiny_pair_paths: tuple[Path, Path], hub_out_of_reach: Path
) -> None:
    draft_folder, _ = tiny_pair_paths
    _cache_as_hub_id(draft_folder, hub_out_of_reach, "someone/tiny-draft")
    assert resolve_model_source("someone/tiny-draft", role="draft").local_files_only
    loaded = load_model("someone/tiny-draft", role="draft")
    assert loaded.name == "someone/tiny-draft"
    assert loaded.vocab_size == len(load_tokenizer(str(draft_folder), role="draft"))


def test_local_loads_draw_no_progress_bars_and_leave_the_setting_alone(capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a user's process (the suite's conftest turns them off)
    try:
        load_model(DEMO_TARGET, role="target")
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.disable_progress_bar()


@pytest.fixture
def transformers_warnings() -> Iterator[list[str]]:
    """Messages transformers logs while the test runs (its logger does not reach pytest's capture)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_a_prompt_too_long_for_the_context_gets_only_the_clear_error(transformers_warnings: list[str]) -> None:
    tokenizer = load_tokenizer(DEMO_TARGET, role="target")  # a fresh one: transformers warns once per tokenizer
    long_text = "How many apples are left? " * 800
    assert len(render_prompt(tokenizer, [{"role": "user", "content": long_text}])) > tokenizer.model_max_length
    chat = ConfSpecChatModel(draft_model="confspec-demo-draft", target_model=DEMO_TARGET)
    assert chat.get_num_tokens(long_text) > tokenizer.model_max_length
    with pytest.raises(ContextLengthError):
        chat.invoke([HumanMessage(long_text)])
    assert not [m for m in transformers_warnings if "indexing errors" in m]
