"""The package's layers, as `pyproject.toml`'s import-linter contracts state them.

A wrong import (the engine reaching up into the chat model, LangChain below the surface, a
cycle) fails here with import-linter's report, which names the import and its line.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_confspec
from langchain_confspec import ConfSpecChatModel, Mode

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(langchain_confspec.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the package found under `root`, with the repository's contracts."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        check=False, cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("engine/gate.py", "import langchain_core.messages", "No LangChain below the LangChain surface"),
        ("models/session.py", "import langchain_confspec.engine.decoding", "langchain_confspec.models is not allowed to import langchain_confspec.engine"),
        ("chat_model/messages.py", "import langchain_confspec.chat_model.model", "No cycles are allowed in langchain_confspec.chat_model"),
    ],
)
def test_a_wrong_import_breaks_the_build_naming_it(tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = tmp_path / "langchain_confspec"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("pair", "__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in " ".join(result.stdout.split()), result.stdout


def test_a_chat_model_pickled_before_the_package_had_layers_still_loads() -> None:
    """Pickled by version 0.1.0 when `ConfSpecChatModel` lived in `langchain_confspec/chat_model.py`."""
    model = pickle.loads((FIXTURES / "demo-chat-model-0.1.0.pickle").read_bytes())
    assert isinstance(model, ConfSpecChatModel)
    assert (model.draft_model, model.target_model, model.mode) == ("confspec-demo-draft", "confspec-demo-target", Mode.CONFSPEC)
    assert (model.accept_threshold, model.token_speculation, model.max_tokens) == (0.9, True, 48)
