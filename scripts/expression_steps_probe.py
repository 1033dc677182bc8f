"""Which step format makes bare expressions easier to learn: the plain one, or steps that carry
the rest of the expression?

    python scripts/expression_steps_probe.py --format {plain,rest} [--steps 400] [--pair DIR]

The bundled target solves three-operation expressions worst of anything in its domain: it must
keep the expression's tree in mind across steps to find the operation due and the numbers to
copy. With `make_expression(..., with_rest=True)` each step also writes what is left to compute
(`14 + 2 = 16, so 6 * 16 - 35.`), so the next operation is read from the step before. This
trains a copy of the pair's target on solving expressions alone (one to three operations, the
longer ones more often) in one format for `--steps` batches, then counts right answers on 40
fresh expressions of each length (`--per-kind`), written greedily in the same format. Nothing is saved.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import train_demo_pair as training  # this folder is on the path of a script run from it
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from langchain_confspec.demo import DEMO_PAIR_DIR
from langchain_confspec.demo.problems import extract_answer, make_expression


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("plain", "rest"), required=True)
    parser.add_argument("--steps", type=int, default=400, help="training batches of 64")
    parser.add_argument("--pair", type=Path, default=DEMO_PAIR_DIR, help="a folder with target/")
    parser.add_argument("--per-kind", type=int, default=40, help="test expressions of each length")
    parser.add_argument("--lr-scale", type=float, default=0.3, help="of the target's learning rate in the training script")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    with_rest = args.format == "rest"
    tokenizer = AutoTokenizer.from_pretrained(args.pair / "target")
    model = AutoModelForCausalLM.from_pretrained(args.pair / "target")
    maker = training.ExampleMaker(tokenizer)
    rng = random.Random(5)
    problems = [make_expression(rng, rng.choice((1, 2, 2, 3, 3, 3)), with_rest=with_rest) for _ in range(6000)]
    started = time.time()
    lr = training.LEARNING_RATES["target"] * args.lr_scale
    training.train(model, [maker.solving(p) for p in problems], steps=args.steps, batch_size=64, lr=lr, seed=0, device="cpu")
    minutes = (time.time() - started) / 60
    tests = random.Random(99)
    print(f"format {args.format}, {args.steps} batches ({minutes:.1f} min)")
    print(f"| operations | right of {args.per_kind} |\n|---|---|")
    for n_operations in (1, 2, 3):
        asked = [make_expression(tests, n_operations, with_rest=with_rest) for _ in range(args.per_kind)]
        prompts = [maker.before(p, 0) for p in asked]
        written = training.continuations(model, tokenizer, prompts, max_new_tokens=40 * n_operations + 10)
        right = sum(extract_answer(text) == str(p.answer) for p, text in zip(asked, written))
        print(f"| {n_operations} | {right} |", flush=True)


if __name__ == "__main__":
    main()
