"""How far a shallow target gets from scratch in the time a one-hour training leaves it.

    python scripts/from_scratch_probe.py [--steps 3500] [--layers 4] [--evals 1000,2000,2800,3500] [--solving-only]
                                         [--bucket-width W]

The bundled target is 128 wide and was grown to 20 layers from a 4-layer one (`grow_depth`),
because a deep target trained from scratch learns too slowly on a CPU. Grown layers start as the
identity, so a from-scratch target reached in an hour can be no better than the shallow model
trained in that hour's share left after the draft and the second phase. This trains such a
model on the first-phase mix of `train_demo_pair.py` (a fresh tokenizer, 20,000 problems with
one verdict each, 3,000 each of refusals, JSON answers, calculator conversations and reworded
questions) under one cosine schedule, and at each of `--evals` counts right greedy answers on
200 tuning problems of seed 20000. `--solving-only` trains on solutions alone instead (of
40,000 problems and 8,000 reworded ones), like the solve phase of the one-hour recipe.
`--bucket-width W` draws each batch from examples whose lengths fall in one span of W tokens:
less padding, but less learned a step (docs/model-card.md). Nothing is saved.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import train_demo_pair as training  # this folder is on the path of a script run from it
from transformers.utils import logging as hf_logging

from langchain_confspec.demo.problems import make_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--evals", default="1000,2000,2800,3500", help="steps after which to count right answers")
    parser.add_argument("--solving-only", action="store_true", help="train on solutions alone")
    parser.add_argument("--bucket-width", type=int, default=0, help="batches of examples of one span of this many tokens (0: short and long)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    began = time.time()

    problems = make_problems(40000 if args.solving_only else 20000, seed=0)
    # the first 20,000 problems either way: both curves share one tokenizer and differ only in their data
    tokenizer = training.train_tokenizer(training.tokenizer_corpus(problems[:20000]), vocab_size=400)
    tokenizer.add_tokens(training.TOOL_WORDS)
    tokenizer.chat_template = training.TOOLS_CHAT_TEMPLATE
    maker = training.ExampleMaker(tokenizer)
    if args.solving_only:
        examples = training.solving_examples(maker, problems, argparse.Namespace(seed=0, reworded=8000))
    else:
        mix = argparse.Namespace(seed=0, n_verify=1, plausible_wrong=0.0, structured=3000, off_domain=3000,
                                 off_domain_tools=0, tool_use=3000, reworded=3000)
        examples = training.phase_one_examples(maker, problems, mix, random.Random(0))
    print(f"{len(examples)} examples in {time.time() - began:.0f}s", flush=True)

    model = training.build_model(tokenizer, seed=1, max_positions=training.CONTEXT, hidden_size=args.hidden,
                                 num_layers=args.layers, num_heads=4, ffn_multiple=3)
    tuning = make_problems(200, seed=training.TUNING_SEED)
    evals = {int(step) for step in args.evals.split(",")}
    evaluating = [0.0]  # seconds spent counting answers, left out of the training time
    started = time.time()

    def count_right(step: int) -> None:
        if step not in evals:
            return
        began_counting = time.time()
        minutes = (began_counting - started - evaluating[0]) / 60
        right = training.count_right(model, tokenizer, tuning)
        model.train()
        evaluating[0] += time.time() - began_counting
        print(f"step {step}: {right} of {len(tuning)} right, {minutes:.1f} min of training", flush=True)

    training.train(model, examples, steps=args.steps, batch_size=64, lr=args.lr, seed=0, device="cpu",
                   log_every=500, after_step=count_right, bucket_width=args.bucket_width)


if __name__ == "__main__":
    main()
