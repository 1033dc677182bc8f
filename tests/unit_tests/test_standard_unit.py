"""LangChain's standard unit tests for chat models (no weights are loaded by these)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_confspec import ConfSpecChatModel


class TestConfSpecChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ConfSpecChatModel]:
        return ConfSpecChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"draft_model": "confspec-tests/draft", "target_model": "confspec-tests/target"}

    @property
    def supports_model_override(self) -> bool:
        return False  # the model pair is fixed when the weights load
