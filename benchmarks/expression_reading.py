"""Where the demo pair goes wrong on bare expressions: reading them, or computing.

    python benchmarks/expression_reading.py [--pair DIR] [--per-kind 60] [--seed 20000]

For expressions of two and three operations, each model writes every step after the right
steps before it (greedy, as `scripts/train_demo_pair.py` collects the draft's attempts). A step
`a op b = c.` has the right operands when its `a op b` is the reference step's: the model
found the operation due and copied its numbers from the question or an earlier result. The
table counts, per step, the right operands and the right steps; the gap between them is
arithmetic, the rest is reading.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tool_verdicts import training_module
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from langchain_confspec.demo import DEMO_PAIR_DIR
from langchain_confspec.demo.problems import make_expression


def operands(step: str) -> str:
    return step.split(" = ")[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, default=DEMO_PAIR_DIR, help="a folder with draft/ and target/")
    parser.add_argument("--per-kind", type=int, default=60, help="expressions of each length")
    parser.add_argument("--seed", type=int, default=20000, help="the tuning seed, apart from training and the held-out set")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    training = training_module()
    maker = training.ExampleMaker(AutoTokenizer.from_pretrained(args.pair / "target"))
    rng = random.Random(args.seed)
    problems = [make_expression(rng, n) for n in (2, 3) for _ in range(args.per_kind)]
    cases = [(problem, k) for problem in problems for k in range(len(problem.steps) - 1)]  # not `Answer: N`
    contexts = [maker.before(problem, k) for problem, k in cases]
    print(f"{args.pair}: {args.per_kind} expressions of 2 and of 3 operations (seed {args.seed})")
    print("| model | operations | step | operands right | step right |\n|---|---|---|---|---|")
    for role in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(args.pair / role)
        written = training.continuations(model, maker.tokenizer, contexts, max_new_tokens=24)
        counts: dict[tuple[int, int], list[int]] = {}
        for (problem, k), text in zip(cases, written):
            step = training.first_step(text)
            row = counts.setdefault((len(problem.steps) - 1, k + 1), [0, 0, 0])
            row[0] += 1
            row[1] += operands(step) == operands(problem.steps[k])
            row[2] += step == problem.steps[k]
        for (n_operations, step_number), (n, read, right) in sorted(counts.items()):
            print(f"| {role} | {n_operations} | {step_number} | {read} of {n} | {right} of {n} |", flush=True)


if __name__ == "__main__":
    main()
