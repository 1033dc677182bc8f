"""`batch()` against a loop of `invoke()` on the chat model's defaults (`fast_path="auto"`).

    python benchmarks/batch_call.py [--calls 4] [--repeats 5] [--mode confspec]

A user calling `batch` expects it to be no slower than calling `invoke` in a loop. On the CPU
`auto` answers a lone call on `off` and the calls that find others in flight on `static`,
where their forward passes are batched. Prints the median wall time of each way (alternating
runs after a warm-up), the speedup, the paths the calls took, and whether the answers agree.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.demo.problems import make_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", default="confspec")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    model = ConfSpecChatModel.demo(max_tokens=128, mode=args.mode)
    questions = [p.question for p in make_problems(args.calls, seed=10_000)]
    model.batch(questions)  # warm-up: weights, static caches, token tables
    loop_times, batch_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        looped = [model.invoke(q) for q in questions]
        loop_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        batched = model.batch(questions)
        batch_times.append(time.perf_counter() - started)
    loop, batch = statistics.median(loop_times), statistics.median(batch_times)
    paths = Counter(m.response_metadata["confspec"]["summary"]["target"]["fast_path"] for m in batched)
    same = [a.content for a in looped] == [b.content for b in batched]
    print(
        f"{args.calls} calls, {args.mode}: loop of invoke {loop * 1000:.0f} ms, batch {batch * 1000:.0f} ms "
        f"(median of {args.repeats}) -> batch is {loop / batch:.2f}x the loop; paths {dict(paths)}; same answers: {same}"
    )


if __name__ == "__main__":
    main()
