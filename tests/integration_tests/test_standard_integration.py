"""LangChain's standard integration tests, run offline on the tiny locally built pair."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.tiny import build_tiny_pair



@cache
def _tiny_pair() -> tuple[Path, Path]:
    """Built once per test process (the standard suite reads params as a property)."""
    return build_tiny_pair(tempfile.mkdtemp(prefix="confspec-tiny-pair-"))


class TestConfSpecChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ConfSpecChatModel]:
        return ConfSpecChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        draft, target = _tiny_pair()
        return {"draft_model": str(draft), "target_model": str(target), "max_tokens": 24, "max_step_tokens": 8}

    @property
    def supports_model_override(self) -> bool:
        return False
