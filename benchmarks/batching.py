"""Concurrent calls on one engine: throughput and latency, batched, against one by one.

    python benchmarks/batching.py --out DIR                     # CPU: the bundled pair
    python benchmarks/batching.py --gpu --out DIR               # H100: 0.5B/7B (fixed acceptance) and the bundled pair
    python benchmarks/batching.py --smoke --out DIR             # seconds, on the tiny local pair
    python benchmarks/batching.py --gpu --smoke --out DIR       # the --gpu code too, on tiny CPU models

For each number of concurrent requests (1, 4, 16, 64 by default), the same requests are run
one by one and then all at once (one thread each, released together), on one engine with
`max_batch` at least that many. Reported: answers/s and tokens/s both ways, the speedup, and
p50/p95 latency of the concurrent requests next to a lone request's. Results go to
results.json and results.md in --out, rewritten after each row: a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import torch
from result_files import save_results
from transformers.utils import logging as hf_logging

from langchain_confspec.config import build_config
from langchain_confspec.demo import DEMO_SETTINGS
from langchain_confspec.demo.problems import make_problems
from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.engine.outputs import RunResult
from langchain_confspec.models.loading import load_model


def concurrently(engine: ConfSpecEngine, questions: list[str], config: Any) -> tuple[float, list[float], list[RunResult]]:
    """Every question at once, one thread each: wall seconds, each request's latency, results."""
    start = threading.Barrier(len(questions) + 1)
    latencies: list[float] = [0.0] * len(questions)
    results: list[Any] = [None] * len(questions)

    def ask(i: int) -> None:
        start.wait()
        began = time.perf_counter()
        results[i] = engine.generate([{"role": "user", "content": questions[i]}], config)
        latencies[i] = time.perf_counter() - began

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, latencies, results


def one_by_one(engine: ConfSpecEngine, questions: list[str], config: Any) -> tuple[float, list[float], list[RunResult]]:
    """The same questions one after another, in one worker thread: on the CPU, torch's
    OpenMP threads make a call from a fresh thread dearer than from the main one, and the
    concurrent calls pay that too."""
    latencies: list[float] = []
    results: list[RunResult] = []

    def ask_all() -> None:
        for question in questions:
            started = time.perf_counter()
            results.append(engine.generate([{"role": "user", "content": question}], config))
            latencies.append(time.perf_counter() - started)

    worker = threading.Thread(target=ask_all)
    began = time.perf_counter()
    worker.start()
    worker.join()
    return time.perf_counter() - began, latencies, results


def tokens(results: list[RunResult]) -> int:
    return sum(sum(r.n_tokens for r in result.records) for result in results)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    name: str, engine: ConfSpecEngine, questions: list[str], config: Any, levels: list[int],
    record: Callable[[dict[str, Any]], None],
) -> None:  # fmt: skip
    engine.generate([{"role": "user", "content": questions[0]}], config)  # warm-up (caches, graphs)
    lone = statistics.median(one_by_one(engine, questions[:3], config)[1])
    for level in levels:
        asked = [questions[i % len(questions)] for i in range(level)]
        seq_wall, _, seq_results = one_by_one(engine, asked, config)
        wall, latencies, results = concurrently(engine, asked, config)
        row = {
            "workload": name,
            "concurrent": level,
            "sequential_answers_per_s": level / seq_wall,
            "batched_answers_per_s": level / wall,
            "sequential_tokens_per_s": tokens(seq_results) / seq_wall,
            "batched_tokens_per_s": tokens(results) / wall,
            "speedup": seq_wall / wall,
            "lone_latency_s": lone,
            "p50_latency_s": percentile(latencies, 0.5),
            "p95_latency_s": percentile(latencies, 0.95),
            "mean_batch_size": statistics.mean(r.summary.mean_batch_size for r in results),
            "same_answers": [r.text for r in results] == [r.text for r in seq_results],
            "same_share": sum(a.text == b.text for a, b in zip(results, seq_results)) / len(results),
        }
        record(row)
        print(
            f"{name}, {level} at once: {row['speedup']:.2f}x the throughput of one by one, p95 "
            f"{row['p95_latency_s'] / lone:.2f}x a lone request, batches of {row['mean_batch_size']:.1f}",
            flush=True,
        )


def random_pair_rows(smoke: bool, levels: list[int], record: Callable[[dict[str, Any]], None]) -> None:
    """The GPU benchmark's random-weight pair (0.5B/7B; its tiny CPU pair with `smoke`) on
    `graphs`: `target_only`, and `confspec` with the draft keeping 70% of its steps."""
    from gpu import Plan, build_engines, scripted  # its models and fixed acceptance

    args = argparse.Namespace(smoke=smoke, sizes="0.5B,7B", rewrite_share=1 / 3, no_compile=False, problems=0, skip_hf=True)
    plan = Plan.for_args(args)
    engines, _ = build_engines(plan, max_batch=max(levels))
    pair = "/".join(plan.pairs[0])
    prompt = " ".join(f"w{i}" for i in range(100, 400))
    settings = {"max_tokens": plan.answer_tokens, "max_step_tokens": plan.step_tokens, "fast_path": "graphs"}
    measure(f"{pair} target_only", engines[pair], [prompt], build_config(**settings, mode="target_only"), levels, record)
    with scripted(0.7, plan.rewrite_share):
        measure(f"{pair} confspec, draft keeps 70%", engines[pair], [prompt], build_config(**settings), levels, record)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Concurrent calls ({results['device']}, {results['date']})",
        "",
        "| workload | concurrent | one by one answers/s | batched answers/s | speedup | tokens/s batched | p50 / p95 latency vs lone | mean batch | same as alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['workload']} | {r['concurrent']} | {r['sequential_answers_per_s']:.2f} | {r['batched_answers_per_s']:.2f} "
            f"| {r['speedup']:.2f}x | {r['batched_tokens_per_s']:.0f} | {r['p50_latency_s'] / r['lone_latency_s']:.2f}x / "
            f"{r['p95_latency_s'] / r['lone_latency_s']:.2f}x | {r['mean_batch_size']:.1f} | {r['same_share']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("batching-results"))
    parser.add_argument("--levels", default="1,4,16,64", help="numbers of concurrent requests")
    parser.add_argument("--fast-path", default="static", help="static on the CPU; --gpu uses graphs")
    parser.add_argument("--gpu", action="store_true", help="0.5B/7B random weights (fixed acceptance) and the bundled pair, on CUDA")
    parser.add_argument("--smoke", action="store_true", help="the tiny local pair, small levels")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    levels = [1, 4] if args.smoke else [int(n) for n in args.levels.split(",")]
    questions = [p.question for p in make_problems(max(levels), 10_000)]
    on_cuda = args.gpu and not args.smoke
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if on_cuda else "cpu", "date": time.strftime("%Y-%m-%d"), "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def record(row: dict[str, Any]) -> None:
        results["rows"].append(row)
        save_results(args.out, results, markdown(results))

    if args.gpu:
        random_pair_rows(args.smoke, levels, record)
    device_map, path = ("cuda", "graphs") if on_cuda else (None, args.fast_path)
    if args.smoke:
        from langchain_confspec.models.tiny import build_tiny_pair

        draft_path, target_path = build_tiny_pair(args.out / "tiny-pair")
        draft, target = load_model(str(draft_path), role="draft"), load_model(str(target_path), role="target")
        name, settings = "tiny pair", {"max_tokens": 24, "max_step_tokens": 8}
    else:
        draft = load_model("confspec-demo-draft", role="draft", device_map=device_map)
        target = load_model("confspec-demo-target", role="target", device_map=device_map)
        name, settings = "bundled pair, confspec", {**DEMO_SETTINGS, "max_tokens": 160}
    engine = ConfSpecEngine(draft, target, max_batch=max(levels))
    measure(name, engine, questions, build_config(**settings, fast_path=path), levels, record)
    print(f"results in {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
