"""How well each model of a pair judges steps and calls inside calculator conversations.

    python benchmarks/tool_verdicts.py [--pair DIR] [--stories 60] [--seed 30000]

The calculator agent goes wrong where a draft's wrong call or answer is kept: on its own
verdict, or on the target's. For held-out stories solved through the calculator, this asks
both models the engine's verification question about every turn's step and call (or answer),
each shown right and plausibly wrong (`scripts/train_demo_pair.py`'s `wrong_call`: another
sentence's operation, another operator, a wrong number), and about what the draft itself writes
there after the right turns before. Prints, per model, how many right ones it calls right and
how many wrong ones wrong (greedy: `Yes` against `No`).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from langchain_confspec.demo import DEMO_PAIR_DIR
from langchain_confspec.demo.problems import make_story

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_pair.py"


def training_module():  # type: ignore[no-untyped-def]
    """The training script, whose example builders are what the models were taught with."""
    spec = importlib.util.spec_from_file_location("train_demo_pair", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def tally(model, maker, examples) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """(right ones called right, right ones, wrong ones called wrong, wrong ones)."""
    counts = [0, 0, 0, 0]
    for example in examples:
        logits = model(torch.tensor([example.ids[:-1]])).logits[0, -1]
        says_yes = bool(logits[maker.yes] > logits[maker.no])
        if example.ids[-1] == maker.yes:
            counts[0] += says_yes
            counts[1] += 1
        else:
            counts[2] += not says_yes
            counts[3] += 1
    return counts[0], counts[1], counts[2], counts[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, default=DEMO_PAIR_DIR, help="a folder with draft/ and target/")
    parser.add_argument("--stories", type=int, default=60)
    parser.add_argument("--seed", type=int, default=30000, help="training used seeds below 10000")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    training = training_module()
    maker = training.ExampleMaker(AutoTokenizer.from_pretrained(args.pair / "target"))
    story_rng, rng = random.Random(args.seed), random.Random(args.seed + 1)
    stories = [make_story(story_rng) for _ in range(args.stories)]
    checks = [example for story in stories for example in maker.tool_checks(story, rng)]
    models = {role: AutoModelForCausalLM.from_pretrained(args.pair / role).eval() for role in ("draft", "target")}
    own, attempts, wrong = training.draft_tool_judging(models["draft"], maker, stories)
    print(f"{args.pair}: {args.stories} stories (seed {args.seed}); the draft wrote {attempts} steps and calls, {wrong} wrong")
    print("| judge | right turns called right | plausibly wrong called wrong | draft's right attempts called right | draft's wrong attempts called wrong |")
    print("|---|---|---|---|---|")
    for role, model in models.items():
        a = tally(model, maker, checks)
        b = tally(model, maker, own)
        print(f"| {role} | {a[0]} of {a[1]} | {a[2]} of {a[3]} | {b[0]} of {b[1]} | {b[2]} of {b[3]} |")


if __name__ == "__main__":
    main()
