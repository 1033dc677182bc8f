"""A tool-calling agent loop on the bundled demo pair, offline.

The demo pair learned to call a calculator in the Hermes `<tool_call>` format. The loop
below is the plain LangChain one: invoke the model with the tools bound, run every tool
call it makes, send the results back as `ToolMessage`s, repeat until it answers.

    python examples/agent.py [--question "..."]
"""

from __future__ import annotations

import argparse

from langchain_core.messages import AIMessage
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel, StepRecord
from langchain_confspec.demo.agent import run_tool_loop
from langchain_confspec.demo.tools import calculator
from langchain_confspec.display import format_step_table

QUESTION = "Ben has 47 cards. Ben buys 36 more. Then Ben has three times as many. Ben sells 58. How many cards does Ben have now?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    model = ConfSpecChatModel.demo(max_tokens=160)
    for message in run_tool_loop(model, [calculator], args.question):
        if isinstance(message, AIMessage):
            calls = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
            print(f"AI: {message.content.strip()!r}" + (f" -> {calls}" if calls else ""))
            records = [StepRecord.model_validate(s) for s in message.response_metadata["confspec"]["steps"]]
            print(format_step_table(records) + "\n")
        else:
            print(f"{message.type}: {message.content!r}\n")


if __name__ == "__main__":
    main()
