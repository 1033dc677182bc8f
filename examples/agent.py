"""A tool-calling agent loop: the model, a calculator tool, and the plain LangChain loop.

Invoke the model with the tools bound, run every tool call it makes, send the results back
as `ToolMessage`s, repeat until it answers; print each reply with its per-step audit.

    python examples/agent.py [--question "..."] [--draft ID_OR_PATH --target ID_OR_PATH]

The bundled demo pair, the default, learned this calculator (docs/model-card.md): it writes a
step, calls the tool for the next operation, copies the result into the following step and
ends with `Answer: N`, all offline (right on 19 of 20 held-out stories: docs/benchmarks.md).
Any tool-calling pair works too (for example Qwen2.5 instruct models, whose chat template
knows tools).
"""

from __future__ import annotations

import argparse

from langchain_core.messages import AIMessage

from langchain_confspec import ConfSpecChatModel, StepRecord
from langchain_confspec.audit.display import format_step_table
from langchain_confspec.demo.agent import run_tool_loop
from langchain_confspec.demo.tools import calculator

QUESTION = "Max has 12 eggs. Then Max has three times as many. Max loses 2. How many eggs does Max have now?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--draft", default="confspec-demo-draft", help="draft model id or path")
    parser.add_argument("--target", default="confspec-demo-target", help="target model id or path")
    args = parser.parse_args()

    model = ConfSpecChatModel(draft_model=args.draft, target_model=args.target, max_tokens=160)
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
