"""What an eager pass over a model's static cache costs, by rows, tokens and attended slots.

    python benchmarks/pass_cost.py [--model confspec-demo-target] [--context 150] [--repeats 15]

A batched pass pays only if one pass over several rows costs much less than a pass per row.
For a decode step and a 30-token pass (a verification suffix, a proposal check), over one row
and over four, this times the pass attending to exactly the rows' live context (what an eager
pass does) and to the 1,024-slot bucket that a replayed CUDA graph reads. Prints the least of
three rounds of medians, the cases timed in turn within each round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from langchain_confspec.models.batching import PassJob
from langchain_confspec.models.cuda_graphs import CudaGraphCapture
from langchain_confspec.models.loading import load_model
from langchain_confspec.models.static_runner import ATTEND_BASE, StaticRunner

ROWS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="confspec-demo-target")
    parser.add_argument("--context", type=int, default=150, help="live tokens in each row before the pass")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    loaded = load_model(args.model, role="target")
    runner = StaticRunner(loaded, 2048, CudaGraphCapture(), rows=8)
    for row in range(ROWS):  # every row holds the same live context
        runner.forward_rows([PassJob("", row, [3 + t % 50 for t in range(args.context)], 0, 1)])
    cases = {
        f"{tokens}-token pass, {rows} row{'s' if rows > 1 else ''}": [(row, tokens) for row in range(rows)]
        for tokens in (1, 30) for rows in (1, ROWS)
    }
    attends = ("live context", f"{ATTEND_BASE} slots")
    best: dict[tuple[str, str], float] = {}
    for _ in range(3):
        for case, jobs in cases.items():
            tokens = jobs[0][1]
            for label, attend in zip(attends, (args.context + tokens, ATTEND_BASE), strict=True):
                timings = []
                for _ in range(args.repeats):
                    passes = [PassJob("", row, [5] * tokens, args.context, 1) for row, tokens in jobs]
                    started = time.perf_counter()
                    with torch.inference_mode():
                        runner._eager(passes, attend)
                    timings.append(1000 * (time.perf_counter() - started))
                median = statistics.median(timings)
                best[(case, label)] = min(best.get((case, label), median), median)
    print(f"{loaded.name}, {args.context} live tokens a row, ms per pass:")
    print("| pass | " + " | ".join(f"attending to the {label}" for label in attends) + " |")
    print("|---|" + "---|" * len(attends))
    for case in cases:
        print(f"| {case} | " + " | ".join(f"{best[(case, label)]:.1f}" for label in attends) + " |")


if __name__ == "__main__":
    main()
