"""LangChain's standard integration tests, run offline on the bundled demo pair."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_confspec import ConfSpecChatModel

# The demo pair knows arithmetic word problems only and was not trained on tool use
# (docs/model-card.md). Forced tool choices still give well-formed calls (the JSON constraint
# writes them), but the pair cannot read an argument's value out of an English request, and it
# never decides on its own to call a tool.
NO_TOOL_SKILL = "the demo pair has not learned tool use: it cannot pick argument values from the request"
NO_SPONTANEOUS_CALLS = "the demo pair has not learned tool use: without a forced tool_choice it never calls a tool"


class TestConfSpecChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ConfSpecChatModel]:
        return ConfSpecChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"draft_model": "confspec-demo-draft", "target_model": "confspec-demo-target", "max_tokens": 64}

    @property
    def supports_model_override(self) -> bool:
        return False  # the model pair is fixed when the weights load

    @pytest.mark.xfail(reason=NO_TOOL_SKILL, strict=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=NO_TOOL_SKILL, strict=True)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=NO_SPONTANEOUS_CALLS, strict=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=NO_SPONTANEOUS_CALLS, strict=True)
    def test_unicode_tool_call_integration(self, model: BaseChatModel, *args: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, *args, **kwargs)
