"""LangChain's standard integration tests, run offline on the bundled demo pair."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_confspec import ConfSpecChatModel


class TestConfSpecChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ConfSpecChatModel]:
        return ConfSpecChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"draft_model": "confspec-demo-draft", "target_model": "confspec-demo-target", "max_tokens": 48}

    @property
    def supports_model_override(self) -> bool:
        return False  # the model pair is fixed when the weights load
