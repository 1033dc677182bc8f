"""Shared fixtures: a tiny draft/target pair built locally (no downloads)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecEngine, LoadedModel, load_model
from langchain_confspec.models.cuda_graphs import EagerRehearsal
from langchain_confspec.models.session import ModelSession
from langchain_confspec.models.tiny import build_tiny_pair

hf_logging.disable_progress_bar()

FAST_PATHS = ["off", "static", "graphs"]
"""Every fast path, on the CPU: `graphs` runs the graph path's padded, whole-cache passes
eagerly (`EagerRehearsal`), since the CPU has no CUDA graphs to capture."""

_REHEARSALS: weakref.WeakKeyDictionary[ConfSpecEngine, ConfSpecEngine] = weakref.WeakKeyDictionary()


def on_path(engine: ConfSpecEngine, fast_path: str) -> ConfSpecEngine:
    """The engine that runs `fast_path` here: `engine` itself, or for `graphs` a twin over the
    same loaded models whose graphs are rehearsed eagerly."""
    if fast_path != "graphs":
        return engine
    if engine not in _REHEARSALS:
        _REHEARSALS[engine] = ConfSpecEngine(
            engine.draft, engine.target, engine.depth_policy, max_context=engine.max_context, graph_capture=EagerRehearsal()
        )
    return _REHEARSALS[engine]


@pytest.fixture(scope="session")
def tiny_pair_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_pair(tmp_path_factory.mktemp("tiny-pair"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_pair_paths: tuple[Path, Path]) -> ConfSpecEngine:
    draft_path, target_path = tiny_pair_paths
    return ConfSpecEngine(load_model(str(draft_path), role="draft"), load_model(str(target_path), role="target"))


@pytest.fixture(scope="session")
def tiny_model_params(tiny_pair_paths: tuple[Path, Path]) -> dict[str, str]:
    draft_path, target_path = tiny_pair_paths
    return {"draft_model": str(draft_path), "target_model": str(target_path)}


@pytest.fixture(params=FAST_PATHS)
def fast_path(request: pytest.FixtureRequest) -> str:
    """Runs a test once on each fast path."""
    return str(request.param)


@pytest.fixture(scope="session")
def engine_on() -> Callable[[ConfSpecEngine, str], ConfSpecEngine]:
    """`engine_on(engine, fast_path)`: the engine that runs that path here (see `on_path`)."""
    return on_path


def greedy_tokens(model: LoadedModel, prompt: list[int], n: int) -> tuple[list[int], int]:
    """The `n` tokens `model` writes greedily after `prompt`, and the one it would write next."""
    session = ModelSession(model, prompt)
    written: list[int] = []
    for _ in range(n):
        written.append(int(session.next_logits().argmax()))
        session.append(written[-1:])
    return written, int(session.next_logits().argmax())


@pytest.fixture(scope="session")
def greedy_from() -> Callable[[LoadedModel, list[int], int], tuple[list[int], int]]:
    """`greedy_from(model, prompt, n)`: see `greedy_tokens`."""
    return greedy_tokens
