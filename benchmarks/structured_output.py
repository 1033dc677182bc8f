"""Structured output on the demo pair: is the object's value right as often as the plain answer?

    python benchmarks/structured_output.py [--problems 20] [--mode confspec] [--seed 10000]

On held-out problems (seed 10000, as `confspec eval`) it counts right answers five ways: the
plain answer (`Answer: N`), `with_structured_output(Answer)` with the reasoning steps first
(the default: the target writes the object), the same with the object speculated like a step
(`target_writes_objects=False`), constrained from the first token (`reason_first=False`), and
LangChain's `create_agent` with the calculator and `response_format=ToolStrategy(Answer)`,
whose forced tool-call prompt is the longest this pair meets (its prompt tokens are printed).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.demo.problems import Problem, extract_answer, make_problems
from langchain_confspec.demo.tools import calculator


class Answer(BaseModel):
    """The answer to an arithmetic problem."""

    value: int = Field(description="the final number")


def plain(model: ConfSpecChatModel) -> Callable[[Problem], str | None]:
    return lambda problem: extract_answer(str(model.invoke(problem.question).content))


def structured(model: ConfSpecChatModel, reason_first: bool) -> Callable[[Problem], str | None]:
    runnable = model.with_structured_output(Answer, reason_first=reason_first)
    return lambda problem: str(runnable.invoke(problem.question).value)  # type: ignore[union-attr]


def agent_with_tool_strategy(model: ConfSpecChatModel, prompt_tokens: list[int]) -> Callable[[Problem], str | None]:
    from langchain.agents import create_agent  # the `langchain` package, a test extra
    from langchain.agents.structured_output import ToolStrategy

    graph = create_agent(model, tools=[calculator], response_format=ToolStrategy(Answer))

    def ask(problem: Problem) -> str | None:
        state = graph.invoke({"messages": [HumanMessage(problem.question)]}, {"recursion_limit": 20})
        prompt_tokens.extend(m.usage_metadata["input_tokens"] for m in state["messages"] if getattr(m, "usage_metadata", None))
        response = state.get("structured_response")
        return None if response is None else str(response.value)

    return ask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--mode", default="confspec")
    parser.add_argument("--seed", type=int, default=10000)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    model = ConfSpecChatModel.demo(max_tokens=160, mode=args.mode)
    problems = make_problems(args.problems, seed=args.seed)
    prompt_tokens: list[int] = []
    ways = {
        "plain answer": plain(model),
        "with_structured_output (steps first)": structured(model, reason_first=True),
        "the same, target_writes_objects=False": structured(
            ConfSpecChatModel.demo(max_tokens=160, mode=args.mode, target_writes_objects=False), reason_first=True
        ),
        "with_structured_output (reason_first=False)": structured(model, reason_first=False),
        "create_agent + ToolStrategy": agent_with_tool_strategy(model, prompt_tokens),
    }
    print(f"mode {args.mode}, {args.problems} held-out problems (seed {args.seed})")
    print("| answer | right | wall s |\n|---|---|---|")
    for name, ask in ways.items():
        started = time.perf_counter()
        right = 0
        for problem in problems:
            try:
                right += ask(problem) == str(problem.answer)
            except Exception as error:  # noqa: BLE001 - a failed agent run counts as wrong, and says why
                print(f"  {name}: {problem.question!r} failed: {type(error).__name__}: {error}"[:300])
        print(f"| {name} | {right} of {args.problems} | {time.perf_counter() - started:.1f} |", flush=True)
    if prompt_tokens:
        print(f"create_agent prompts: up to {max(prompt_tokens)} tokens (context {model._get_engine().context['target']})")


if __name__ == "__main__":
    main()
