"""Step events for LangChain callbacks, tied to the chat model's own run.

`dispatch_custom_event` would credit events to the enclosing chain (or fail when the model
is called directly), so events are sent through a callback manager holding the model run's
handlers, with the model run's id. `stream()` and `astream()` do not hand `_stream` a run
manager; the chat model passes an `EventEmitter` built from the call's config instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.runnables import RunnableConfig

STEP_EVENT = "confspec_step"
SUMMARY_EVENT = "confspec_summary"
DRAFT_TOKEN_EVENT = "confspec_draft_token"
"""Draft text still awaiting its verdict, as it is written: `{"step", "text"}`; the step's
`confspec_step` event, with its decision, follows."""


@dataclass(frozen=True)
class EventEmitter:
    """Sends custom events to one run's handlers, from sync or async code."""

    handlers: list[BaseCallbackHandler]
    tags: list[str]
    metadata: dict[str, Any]
    run_id: UUID

    @classmethod
    def for_run(cls, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun) -> EventEmitter:
        return cls(run_manager.handlers, run_manager.tags, run_manager.metadata, run_manager.run_id)

    @classmethod
    def for_config(
        cls, config: RunnableConfig, run_id: UUID, *, callbacks: Any, tags: list[str] | None, metadata: dict | None
    ) -> EventEmitter:
        """The handlers the chat model's own run will get, for a run that has not started yet."""
        manager = CallbackManager.configure(
            config.get("callbacks"), callbacks, False, config.get("tags"), tags, config.get("metadata"), metadata
        )
        return cls(manager.handlers, manager.tags, manager.metadata, run_id)

    def emit(self, name: str, data: dict[str, Any]) -> None:
        manager = CallbackManager(self.handlers, tags=self.tags, metadata=self.metadata)
        manager.on_custom_event(name, data, run_id=self.run_id)

    async def aemit(self, name: str, data: dict[str, Any]) -> None:
        manager = AsyncCallbackManager(self.handlers, tags=self.tags, metadata=self.metadata)
        await manager.on_custom_event(name, data, run_id=self.run_id)
