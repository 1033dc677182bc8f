"""Shared fixtures: a tiny draft/target pair built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecEngine, load_model
from langchain_confspec.tiny import build_tiny_pair

hf_logging.disable_progress_bar()


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
