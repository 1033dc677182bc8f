"""Concurrent calls on one engine: throughput and latency, batched, against one by one.

    python benchmarks/batching.py --out DIR                     # CPU: the bundled pair
    python benchmarks/batching.py --gpu --out DIR               # H100: 0.5B/7B (fixed acceptance) and the bundled pair
    python benchmarks/batching.py --smoke --out DIR             # seconds, on the tiny local pair

For each number of concurrent requests (1, 4, 16, 64 by default), the same requests are run
one by one and then all at once (one thread each, released together), on one engine with
`max_batch` at least that many. Reported: answers/s and tokens/s both ways, the speedup, and
p50/p95 latency of the concurrent requests next to a lone request's. Results go to
results.json and results.md in --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

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


def measure(name: str, engine: ConfSpecEngine, questions: list[str], config: Any, levels: list[int]) -> list[dict[str, Any]]:
    engine.generate([{"role": "user", "content": questions[0]}], config)  # warm-up (caches, graphs)
    lone = statistics.median(one_by_one(engine, questions[:3], config)[1])
    rows = []
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
        rows.append(row)
        print(
            f"{name}, {level} at once: {row['speedup']:.2f}x the throughput of one by one, p95 "
            f"{row['p95_latency_s'] / lone:.2f}x a lone request, batches of {row['mean_batch_size']:.1f}",
            flush=True,
        )
    return rows


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
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "rows": []}
    if args.gpu:
        import torch
        from gpu import (  # the GPU benchmark's models and fixed acceptance
            Plan,
            build_engines,
            scripted,
        )

        results["device"] = torch.cuda.get_device_name()
        plan = Plan.for_args(argparse.Namespace(smoke=False, sizes="0.5B,7B", rewrite_share=1 / 3, no_compile=False, problems=0, skip_hf=True))
        engines, _ = build_engines(plan, max_batch=max(levels))
        engine = engines["0.5B/7B"]
        prompt = " ".join(f"w{i}" for i in range(100, 400))
        config = build_config(max_tokens=400, max_step_tokens=40, fast_path="graphs", mode="target_only")
        results["rows"] += measure("0.5B/7B target_only", engine, [prompt], config, levels)
        with scripted(0.7, plan.rewrite_share):
            results["rows"] += measure("0.5B/7B confspec, draft keeps 70%", engine, [prompt], build_config(
                max_tokens=400, max_step_tokens=40, fast_path="graphs"), levels)  # fmt: skip
        del engines, engine
        device_map, path = "cuda", "graphs"
    else:
        results["device"] = "cpu"
        device_map, path = None, args.fast_path
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
    results["rows"] += measure(name, engine, questions, build_config(**settings, fast_path=path), levels)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(f"results in {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
