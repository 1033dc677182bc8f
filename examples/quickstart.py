"""Quickstart: a LangChain chain (prompt | model | parser) on the bundled demo pair.

Runs offline on the CPU in seconds. The bundled draft and target were trained on small
arithmetic word problems (see docs/model-card.md); pass --draft/--target to use any local or
Hugging Face causal LM instead.

    python examples/quickstart.py [--question "..."] [--draft PATH_OR_ID --target PATH_OR_ID]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_confspec import (
    STEP_EVENT,
    SUMMARY_EVENT,
    ConfSpecChatModel,
    RunSummary,
    StepRecord,
)
from langchain_confspec.audit.display import format_outcome, format_step_table

QUESTION = "Mia has 27 shells. Mia finds 38 more. Then Mia has twice as many. Mia gives away 45. How many shells does Mia have now?"
WARM_UP = "Tom has 3 apples. Tom finds 4 more. Then Tom has twice as many. How many apples does Tom have now?"


class StepCollector(BaseCallbackHandler):
    """Receives the model's per-step audit events as the chain runs."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.summary: RunSummary | None = None

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == STEP_EVENT:
            self.records.append(StepRecord.model_validate(data))
        elif name == SUMMARY_EVENT:
            self.summary = RunSummary.model_validate(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--draft", default="confspec-demo-draft", help="draft model id or path")
    parser.add_argument("--target", default="confspec-demo-target", help="target model id or path")
    args = parser.parse_args()

    model = ConfSpecChatModel(draft_model=args.draft, target_model=args.target, max_tokens=128)
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = prompt | model | StrOutputParser()
    reference = prompt | model.bind(mode="target_only") | StrOutputParser()

    chain.invoke({"question": WARM_UP})  # loads the weights outside the timings
    steps = StepCollector()
    started = time.perf_counter()
    answer = chain.invoke({"question": args.question}, config={"callbacks": [steps]})
    confspec_time = time.perf_counter() - started
    started = time.perf_counter()
    target_answer = reference.invoke({"question": args.question})
    target_time = time.perf_counter() - started

    print(f"Question: {args.question}\n\nAnswer (confspec):\n{answer}\n")
    print(format_step_table(steps.records))
    assert steps.summary is not None, "the model sends its run summary as a callback event"
    print(f"\n{format_outcome(steps.summary)}.")
    print(f"target_only gives the same answer: {answer.strip() == target_answer.strip()}")
    print(
        f"confspec {confspec_time * 1000:.0f} ms vs target_only {target_time * 1000:.0f} ms on this machine: "
        f"speedup {target_time / confspec_time:.2f}x"
    )


if __name__ == "__main__":
    main()
