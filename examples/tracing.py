"""Watching the per-step audit events: a callback handler, and `astream_events`.

Every decided step reaches callbacks as a `confspec_step` custom event and every answer's
totals as `confspec_summary`, tied to the model's run inside whatever chain calls it.

    python examples/tracing.py
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_confspec import STEP_EVENT, SUMMARY_EVENT, ConfSpecChatModel

QUESTION = "Ann has 15 cups. Ann buys 28 more. Ann gives away 9. How many cups does Ann have now?"


class PrintSteps(BaseCallbackHandler):
    """Prints each step as soon as it is decided, with the run that produced it."""

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == STEP_EVENT:
            confidence = data["draft_confidence"]
            print(
                f"  [run {str(run_id)[:8]}] step {data['index']}: {data['decision']:<18} "
                f"conf {'-' if confidence is None else f'{confidence:.2f}'}  {data['text'].strip()!r}"
            )
        elif name == SUMMARY_EVENT:
            print(f"  [run {str(run_id)[:8]}] summary: {data['n_steps']} steps, finish {data['finish_reason']}")


async def stream_events(chain: Any) -> None:
    async for event in chain.astream_events({"question": QUESTION}, version="v2"):
        if event["event"] == "on_custom_event":
            print(f"  {event['name']:<17} from {event['metadata'].get('ls_model_type', 'model')} run {event['run_id'][:8]}")
        elif event["event"] == "on_chat_model_stream" and event["data"]["chunk"].content:
            print(f"  text chunk: {event['data']['chunk'].content!r}")


def main() -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | ConfSpecChatModel.demo(max_tokens=128) | StrOutputParser()
    print("Callback handler:")
    answer = chain.invoke({"question": QUESTION}, config={"callbacks": [PrintSteps()], "tags": ["demo"]})
    print(f"Answer: {answer!r}\n\nastream_events (v2):")
    asyncio.run(stream_events(chain))


if __name__ == "__main__":
    main()
