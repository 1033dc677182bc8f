"""How far a shallow target gets from scratch in the time a one-hour training leaves it.

    python scripts/from_scratch_probe.py [--steps 3500] [--layers 4] [--evals 1000,2000,2800,3500]

The bundled target is 128 wide and was grown to 20 layers from a 4-layer one (`grow_depth`),
because a deep target trained from scratch learns too slowly on a CPU. Grown layers start as the
identity, so a from-scratch target reached in an hour can be no better than the shallow model
trained in that hour's share left after the draft and the second phase. This trains such a
model on the first-phase mix of `train_demo_pair.py` (a fresh tokenizer, 20,000 problems with
one verdict each, 3,000 each of refusals, JSON answers, calculator conversations and reworded
questions) under one cosine schedule, and at each of `--evals` counts right greedy answers on
200 tuning problems of seed 20000. Nothing is saved.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
import train_demo_pair as training  # this folder is on the path of a script run from it
from transformers.utils import logging as hf_logging

from langchain_confspec.demo.problems import extract_answer, make_problems
from langchain_confspec.models.prompting import render_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--evals", default="1000,2000,2800,3500", help="steps after which to count right answers")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    began = time.time()

    problems = make_problems(20000, seed=0)
    tokenizer = training.train_tokenizer(training.tokenizer_corpus(problems), vocab_size=400)
    tokenizer.add_tokens(training.TOOL_WORDS)
    tokenizer.chat_template = training.TOOLS_CHAT_TEMPLATE
    mix = argparse.Namespace(seed=0, n_verify=1, plausible_wrong=0.0, structured=3000, off_domain=3000,
                             off_domain_tools=0, tool_use=3000, reworded=3000)
    examples = training.phase_one_examples(training.ExampleMaker(tokenizer), problems, mix, random.Random(0))
    print(f"{len(examples)} examples in {time.time() - began:.0f}s", flush=True)

    model = training.build_model(tokenizer, seed=1, max_positions=training.CONTEXT, hidden_size=args.hidden,
                                 num_layers=args.layers, num_heads=4, ffn_multiple=3)
    tuning = make_problems(200, seed=20000)
    contexts = [render_prompt(tokenizer, problem.turns()) for problem in tuning]
    evals = {int(step) for step in args.evals.split(",")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    stream = training.batches(examples, 64, tokenizer.pad_token_id, random.Random(0))
    training_seconds, started = 0.0, time.time()
    model.train()
    for step in range(1, args.steps + 1):
        ids, labels = next(stream)
        loss = training.example_mean_loss(model(input_ids=ids).logits[:, :-1], labels[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step in evals:
            training_seconds += time.time() - started
            texts = training.continuations(model, tokenizer, contexts, max_new_tokens=110, batch_size=100)
            right = sum(extract_answer(text) == str(problem.answer) for text, problem in zip(texts, tuning))
            print(f"step {step}: {right} of {len(tuning)} right, loss {loss.item():.4f}, "
                  f"{training_seconds / 60:.1f} min of training", flush=True)
            model.train()
            started = time.time()


if __name__ == "__main__":
    main()
