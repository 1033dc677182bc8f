"""LangChain's standard integration tests, run offline on the bundled demo pair."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_confspec import ConfSpecChatModel

# The demo pair knows arithmetic word problems and one tool, its calculator
# (docs/model-card.md). Forced tool choices still give well-formed calls of any tool (the JSON
# constraint writes them), and the number in `magic_function(3)` reaches the call, but the pair
# cannot copy a name out of an English request. Asked about the weather with a weather tool
# bound, it answers with its refusal, as it was trained to (`train_demo_pair.py
# --off-domain-tools`), not with a call.
NO_WORLD_QUESTIONS = "the demo pair answers only arithmetic: a weather question gets its one-line refusal, tool bound or not"
NO_COPIED_NAMES = "the demo pair cannot copy a name from the request into a tool argument (nor spell non-ASCII text)"
# The base class runs these two for both message formats; an override must say so again.
BOTH_OUTPUT_VERSIONS = pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)


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

    @pytest.mark.xfail(reason=NO_COPIED_NAMES, strict=True)
    def test_unicode_tool_call_integration(self, model: BaseChatModel, *args: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, *args, **kwargs)

    @BOTH_OUTPUT_VERSIONS
    @pytest.mark.xfail(reason=NO_WORLD_QUESTIONS, strict=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
