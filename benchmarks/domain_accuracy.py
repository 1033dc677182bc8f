"""The demo pair's accuracy on each part of its domain, and what it says outside it.

    python benchmarks/domain_accuracy.py [--per-kind 40] [--seed 20000] [--pair DIR] [--show-misses]

Stories of one to four operations, bare expressions of one to three and problems worded as a
newcomer types them, `--per-kind` of each
(seed 20000: the tuning seed, apart from training and the held-out set), answered by
`target_only` and `draft_only` (the bundled pair, or the one `--pair` names, such as a training
run's output); then a few messages outside the domain through the chat model with the demo's
settings (for a `--pair` too: it is a candidate for the bundled pair), alone and with a tool
the pair never learned bound: how each answer ends and how many tokens it took; last, a few
questions as a newcomer types them, in unusual wordings (no spaces, words for operators, a verb
no story uses) and outside the domain's ranges (a negative result, numbers above 199), with the
right answer beside what `target_only` and the chat model answer.
`--show-misses` prints the target's steps on every problem it gets wrong.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from langchain_core.tools import tool
from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel, ConfSpecEngine, load_model
from langchain_confspec.config import build_config
from langchain_confspec.demo import DEMO_DRAFT, DEMO_SETTINGS, DEMO_TARGET
from langchain_confspec.demo.problems import (
    STEP_SEPARATOR,
    extract_answer,
    make_expression,
    make_reworded,
    make_story,
)

NEAR_DOMAIN = [  # (question, what is unusual about it, right answer)
    ("what is 2+2", "lower case, no spaces", 4),
    ("3+5*3", "no spaces", 18),
    ("What is 6 times 7?", "an operator in words", 42),
    ("12 - 15 = ?", "a negative result", -3),
    ("250 + 375 = ?", "numbers above 199", 625),
    ("7 * 8 * 9 = ?", "a result above 199", 504),
    ("Sam has 5 apples. Sam eats 2. How many apples does Sam have?", "a verb no story uses", 3),
]
OFF_DOMAIN = ["hello", "Bonjour, comment ça va ?", "What is the capital of Peru?", "?", "Write me a haiku about rain", "zxqv"]


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20000)
    parser.add_argument("--pair", type=Path, help="a folder with draft/ and target/ (default: the bundled pair)")
    parser.add_argument("--show-misses", action="store_true", help="print the target's steps on every problem it gets wrong")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    draft, target = (str(args.pair / "draft"), str(args.pair / "target")) if args.pair else (DEMO_DRAFT, DEMO_TARGET)
    engine = ConfSpecEngine(load_model(draft, role="draft"), load_model(target, role="target"))
    rng = random.Random(args.seed)
    kinds = {f"story, {n} operation(s)": [make_story(rng, n) for _ in range(args.per_kind)] for n in (1, 2, 3, 4)}
    kinds |= {f"expression, {n} operation(s)": [make_expression(rng, n) for _ in range(args.per_kind)] for n in (1, 2, 3)}
    kinds["newcomer wordings (`make_reworded`)"] = [make_reworded(rng) for _ in range(args.per_kind)]
    rows, misses = [], []
    for kind, problems in kinds.items():
        right = dict.fromkeys(("target_only", "draft_only"), 0)
        for problem in problems:
            for mode in right:
                text = engine.generate(problem.turns(), build_config(mode=mode, max_tokens=128)).text
                is_right = extract_answer(text) == str(problem.answer)
                right[mode] += is_right
                if mode == "target_only" and not is_right:
                    misses.append(f"- {problem.question} ({problem.answer}): {one_line(text, limit=None)}")
        rows.append(f"| {kind} | {right['target_only']} of {len(problems)} | {right['draft_only']} of {len(problems)} |")
    print("| problems | target_only | draft_only |\n|---|---|---|", *rows, sep="\n")
    if args.show_misses:
        print("\nThe target's misses:", *misses, sep="\n")
    model = ConfSpecChatModel(draft_model=draft, target_model=target, max_tokens=512, **DEMO_SETTINGS)
    for title, chat in (("alone", model), ("with `multiply` bound", model.bind_tools([multiply]))):
        print(f"\n| message ({title}) | answer | finish | tokens |\n|---|---|---|---|")
        for message in OFF_DOMAIN:
            answer = chat.invoke(message)
            tokens = answer.usage_metadata["output_tokens"] if answer.usage_metadata else "-"
            shown = " ".join(str(answer.content).split()) or f"(calls: {[c['name'] for c in answer.tool_calls]})"
            print(f"| {message} | {shown} | {answer.response_metadata['finish_reason']} | {tokens} |")
    print("\n| question | unusual | right | target_only | chat model (the demo's settings) |\n|---|---|---|---|---|")
    for question, unusual, right in NEAR_DOMAIN:
        alone = engine.generate([{"role": "user", "content": question}], build_config(mode="target_only", max_tokens=128)).text
        answered = str(model.invoke(question).content)
        print(f"| {question} | {unusual} | {right} | {one_line(alone)} | {one_line(answered)} |")


def one_line(text: str, limit: int | None = 80) -> str:
    """An answer's steps on one line, cut at `limit` characters (None: whole)."""
    joined = " / ".join(step.strip() for step in text.split(STEP_SEPARATOR) if step.strip())
    return joined if limit is None or len(joined) <= limit else joined[: limit - 3] + "..."


if __name__ == "__main__":
    main()
