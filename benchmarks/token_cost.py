"""Per-token decode cost of the draft and the target, on the engine's own decode path.

    python benchmarks/token_cost.py [--draft ID --target ID] [--tokens 64] [--repeats 5]

Step-level speculation pays only when a draft token is much cheaper than a target token, so
this is the first number to know about a pair. It times `write_step` over a `ModelSession`
(one forward pass per token, the CPU path the engine uses), after a warm-up, and reports the
median milliseconds per token and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from langchain_confspec.config import build_config
from langchain_confspec.decoding import StopScanner, TokenChooser, write_step
from langchain_confspec.loading import LoadedModel, load_model
from langchain_confspec.session import ModelSession

PROMPT = [{"role": "user", "content": "Mia has 27 shells. Mia finds 38 more. How many shells does Mia have now?"}]


def ms_per_token(loaded: LoadedModel, tokens: int, repeats: int) -> float:
    chooser = TokenChooser(build_config())
    timings = []
    for repeat in range(repeats + 1):
        session = ModelSession(loaded, loaded.render_prompt(PROMPT))
        session.next_logits()  # prefill is not decode
        started = time.perf_counter()
        step = write_step(session, chooser, budget=tokens, delimiters=["\x00never"], stops=StopScanner([]))
        elapsed = time.perf_counter() - started
        if repeat and step.ids:  # the first round warms up
            timings.append(1000 * elapsed / len(step.ids))
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", default="confspec-demo-draft")
    parser.add_argument("--target", default="confspec-demo-target")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    costs = {}
    for role, name in (("draft", args.draft), ("target", args.target)):
        loaded = load_model(name, role=role)
        n_params = sum(p.numel() for p in loaded.model.parameters())
        costs[role] = ms_per_token(loaded, args.tokens, args.repeats)
        print(f"{role:6s} {name}: {n_params / 1e6:.2f}M parameters, {costs[role]:.2f} ms/token")
    print(f"target/draft cost per token: {costs['target'] / costs['draft']:.2f}x")


if __name__ == "__main__":
    main()
