"""Quickstart: a LangChain chain (prompt | model | parser) over a local draft/target pair.

Runs offline. Until the project ships its trained demo pair, it builds a tiny random-weight
pair locally, so the answer text is noise: what this shows is the mechanism (who wrote each
step, what was verified, what it cost), the events and the metadata.

    python examples/quickstart.py [--draft PATH_OR_ID --target PATH_OR_ID]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from transformers.utils import logging as hf_logging

from langchain_confspec import STEP_EVENT, SUMMARY_EVENT, ConfSpecChatModel, StepRecord
from langchain_confspec.display import format_step_table
from langchain_confspec.tiny import build_tiny_pair

QUESTION = "Tom has 3 apples and buys 4 more, then gives away 2. How many apples does he have?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", help="draft model id or path (default: a tiny local pair)")
    parser.add_argument("--target", help="target model id or path")
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    if args.draft and args.target:
        draft, target = args.draft, args.target
    else:
        paths = build_tiny_pair(Path(tempfile.gettempdir()) / "langchain-confspec-tiny-pair")
        draft, target = str(paths[0]), str(paths[1])

    model = ConfSpecChatModel(draft_model=draft, target_model=target, max_tokens=96, max_step_tokens=24)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Think step by step, one step per paragraph."), ("human", "{question}")]
    )
    chain = prompt | model | StrOutputParser()

    model.invoke("warm-up", max_tokens=4)  # loads the weights once, outside the timings
    steps = StepCollector()
    started = time.perf_counter()
    answer = chain.invoke({"question": args.question}, config={"callbacks": [steps]})
    confspec_time = time.perf_counter() - started

    reference = prompt | model.bind(mode="target_only") | StrOutputParser()
    started = time.perf_counter()
    reference.invoke({"question": args.question})
    target_time = time.perf_counter() - started

    summary = steps.summary
    rate = summary["draft_acceptance_rate"]
    print(f"Answer:\n{answer}\n")
    print(format_step_table(steps.records))
    print(
        f"\nsteps: {summary['n_steps']}, draft acceptance: {'-' if rate is None else f'{rate:.0%}'}, "
        f"escalation: {summary['escalation_rate']}, finish: {summary['finish_reason']}"
    )
    print(
        f"confspec {confspec_time * 1000:.0f} ms vs target_only {target_time * 1000:.0f} ms: "
        f"speedup {target_time / confspec_time:.2f}x"
    )


class StepCollector(BaseCallbackHandler):
    """Receives the model's per-step audit events as the chain runs."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.summary: dict[str, Any] = {}

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == STEP_EVENT:
            self.records.append(StepRecord.model_validate(data))
        elif name == SUMMARY_EVENT:
            self.summary = data


if __name__ == "__main__":
    main()
