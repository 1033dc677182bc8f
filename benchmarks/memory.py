"""Resident memory over many sequential calls on one shared model (a leak would show as growth).

    python benchmarks/memory.py [--calls 1000] [--every 100]

Calls `ConfSpecChatModel.demo()` with a different question each time (greedy, confspec mode)
and prints the process's resident set size (Linux `/proc/self/status`, VmRSS) after the
warm-up and after every `--every` calls, then the growth from the first reading to the last.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.demo.problems import make_problems


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    model = ConfSpecChatModel.demo(max_tokens=96)
    problems = make_problems(args.calls, seed=50_000)
    for problem in problems[:20]:  # warm-up: allocator pools, lazy imports
        model.invoke(problem.question)
    gc.collect()
    readings = [(0, resident_mib())]
    started = time.perf_counter()
    for n, problem in enumerate(problems, start=1):
        model.invoke(problem.question)
        if n % args.every == 0:
            gc.collect()
            readings.append((n, resident_mib()))
    seconds = time.perf_counter() - started
    for n, mib in readings:
        print(f"after {n:5d} calls: {mib:7.1f} MiB")
    growth = readings[-1][1] - readings[0][1]
    print(f"{args.calls} calls in {seconds:.0f} s; resident memory {readings[0][1]:.1f} -> {readings[-1][1]:.1f} MiB ({growth:+.1f} MiB)")


if __name__ == "__main__":
    main()
