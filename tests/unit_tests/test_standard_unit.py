"""LangChain's standard unit tests for chat models (no weights are loaded by these)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests
from syrupy.assertion import SnapshotAssertion

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

    @pytest.mark.xfail(
        strict=True,
        reason="The base test loads with allowed_objects='all', which admits only the classes in "
        "langchain_core.load.mapping. The serialized form matches the snapshot; loading it with "
        "allowed_objects=[ConfSpecChatModel] is tested in test_conventions.py.",
    )
    def test_serdes(self, model: BaseChatModel, snapshot: SnapshotAssertion) -> None:
        super().test_serdes(model, snapshot)
