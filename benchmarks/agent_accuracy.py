"""How often the demo pair's calculator agent reaches the right answer, per mode.

    python benchmarks/agent_accuracy.py [--problems 20] [--modes confspec,target_only]
                                        [--agent loop|create_agent] [--seed 10000]
                                        [--speculate-calls]

Runs the calculator agent on held-out stories (seed 10000, as `confspec eval`; training used
seeds below 10000): `loop` is the package's `run_tool_loop`, `create_agent` is LangChain's
agent (`langchain.agents.create_agent`) over the same model and tool. Prints, per mode, the
share of right final answers, tool calls per problem, invalid calls, calls of unknown tools
and the wall time. `--speculate-calls` has the draft write the calls and the gate judge them,
like any step (`target_writes_tool_calls=False`), instead of the target writing them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.demo.agent import run_tool_loop
from langchain_confspec.demo.problems import extract_answer, make_stories
from langchain_confspec.demo.tools import calculator

Agent = Callable[[str], list[BaseMessage]]


def make_agent(kind: str, model: ConfSpecChatModel) -> Agent:
    if kind == "loop":
        return lambda question: run_tool_loop(model, [calculator], question)
    from langchain.agents import create_agent  # the `langchain` package, a test extra

    graph = create_agent(model, tools=[calculator])
    return lambda question: graph.invoke({"messages": [HumanMessage(question)]}, {"recursion_limit": 20})["messages"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--modes", default="confspec,target_only", help="comma-separated modes")
    parser.add_argument("--agent", choices=["loop", "create_agent"], default="loop")
    parser.add_argument("--seed", type=int, default=10000, help="seed of the stories (training used seeds below 10000)")
    parser.add_argument("--speculate-calls", action="store_true", help="target_writes_tool_calls=False")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    problems = make_stories(args.problems, seed=args.seed)
    print(f"{args.agent}, {args.problems} held-out stories (seed {args.seed})")
    print("| mode | right | tool calls per problem | invalid calls | unknown tools | wall s |\n|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        agent = make_agent(args.agent, ConfSpecChatModel.demo(max_tokens=160, mode=mode, target_writes_tool_calls=not args.speculate_calls))
        right = calls = invalid = failed_calls = 0
        started = time.perf_counter()
        for problem in problems:
            conversation = agent(problem.question)
            final = conversation[-1]
            right += isinstance(final, AIMessage) and extract_answer(str(final.content)) == str(problem.answer)
            replies = [m for m in conversation if isinstance(m, AIMessage)]
            calls += sum(len(m.tool_calls) for m in replies)
            invalid += sum(len(m.invalid_tool_calls) for m in replies)
            failed_calls += sum(isinstance(m, ToolMessage) and m.status == "error" for m in conversation)
        n = args.problems
        print(
            f"| {mode} | {right} of {n} ({right / n:.0%}) | {calls / n:.2f} | {invalid} | {failed_calls} "
            f"| {time.perf_counter() - started:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
