"""How often the demo pair's calculator agent loop reaches the right answer.

    python benchmarks/agent_accuracy.py [--problems 100] [--mode confspec] [--seed 10000]

Runs `run_tool_loop` with the calculator on held-out problems (seed 10000 as `confspec eval`
by default), and prints the share of right final answers, the mean number of tool calls per
problem, and how many calls were invalid or named an unknown tool.
"""

from __future__ import annotations

import argparse
import time

from langchain_core.messages import AIMessage, ToolMessage
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.demo.agent import run_tool_loop
from langchain_confspec.demo.problems import extract_answer, make_problems
from langchain_confspec.demo.tools import calculator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--mode", default="confspec")
    parser.add_argument("--seed", type=int, default=10000, help="seed of the problems (training used seeds below 10000)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    model = ConfSpecChatModel.demo(max_tokens=160, mode=args.mode)

    right = calls = invalid = failed_calls = 0
    started = time.perf_counter()
    for problem in make_problems(args.problems, seed=args.seed):
        conversation = run_tool_loop(model, [calculator], problem.question)
        final = conversation[-1]
        right += isinstance(final, AIMessage) and extract_answer(str(final.content)) == str(problem.answer)
        replies = [m for m in conversation if isinstance(m, AIMessage)]
        calls += sum(len(m.tool_calls) for m in replies)
        invalid += sum(len(m.invalid_tool_calls) for m in replies)
        failed_calls += sum(isinstance(m, ToolMessage) and m.status == "error" for m in conversation)
    seconds = time.perf_counter() - started
    n = args.problems
    print(
        f"mode {args.mode}: {right}/{n} right ({right / n:.1%}), {calls / n:.2f} tool calls per problem, "
        f"{invalid} invalid calls, {failed_calls} calls of unknown tools, {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
