"""What a rewrite costs when it starts from the rejected step, against writing it from scratch.

    python benchmarks/rewrites.py [--problems 100] [--seed 10000] [--target-check verdict] [--smoke]

Runs `confspec` (the bundled pair with its settings, greedy; `--target-check` replaces the
pair's way of checking escalated steps) on held-out problems twice, with
`rewrite_from_rejected` on and off, and reports: rewrites, how many are identical to the step
they replace, how many share a leading token with it, the rejected steps' tokens kept by the
seeded rewrites, the target's forward passes and the wall time both ways, and whether every
answer is the same. `--smoke` runs two problems (a test runs it).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecEngine, load_model
from langchain_confspec.config import TargetCheck, build_config
from langchain_confspec.demo import DEMO_DRAFT, DEMO_SETTINGS, DEMO_TARGET
from langchain_confspec.demo.problems import make_problems


def run(engine: ConfSpecEngine, questions: list[str], seeded: bool, target_check: str) -> dict[str, Any]:
    config = build_config(**{**DEMO_SETTINGS, "target_check": target_check}, rewrite_from_rejected=seeded)
    started = time.perf_counter()
    results = [engine.generate([{"role": "user", "content": q}], config) for q in questions]
    rewrites = [r for result in results for r in result.records if r.regenerated]
    return {
        "seconds": time.perf_counter() - started,
        "answers": [result.text for result in results],
        "rewrites": len(rewrites),
        "identical": sum(r.text == r.rejected_text for r in rewrites),
        "sharing_a_prefix": sum(r.rewrite_reused_tokens > 0 for r in rewrites),
        "rejected_tokens": sum(r.rejected_tokens for r in rewrites),
        "reused_tokens": sum(r.rewrite_reused_tokens for r in rewrites),
        "rewrite_tokens": sum(r.n_tokens for r in rewrites),
        "target_passes": sum(result.summary.target.forward_passes for result in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10000, help="problem seed (10000: the held-out set)")
    parser.add_argument("--target-check", choices=[c.value for c in TargetCheck], default=DEMO_SETTINGS["target_check"])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    engine = ConfSpecEngine(load_model(DEMO_DRAFT, role="draft"), load_model(DEMO_TARGET, role="target"))
    questions = [p.question for p in make_problems(2 if args.smoke else args.problems, args.seed)]
    run(engine, questions[:1], True, args.target_check)  # warm-up
    plain, seeded = run(engine, questions, False, args.target_check), run(engine, questions, True, args.target_check)
    print(f"{len(questions)} problems, confspec with the pair's settings (target_check={args.target_check}), greedy")
    print(f"rewrites: {plain['rewrites']}; identical to the rejected step: {plain['identical']}; "
          f"sharing at least its first token: {seeded['sharing_a_prefix']}")  # fmt: skip
    print(f"rejected steps' tokens kept by the rewrites: {seeded['reused_tokens']} of {seeded['rejected_tokens']} "
          f"(rewrites wrote {seeded['rewrite_tokens']} tokens)")  # fmt: skip
    print("| rewrites | target passes | wall s |")
    print("|---|---|---|")
    for name, row in (("from scratch", plain), ("from the rejected step", seeded)):
        print(f"| {name} | {row['target_passes']} | {row['seconds']:.1f} |")
    print(f"same answers: {plain['answers'] == seeded['answers']}")
    if plain["answers"] != seeded["answers"]:
        raise SystemExit("seeded rewrites changed an answer")


if __name__ == "__main__":
    main()
