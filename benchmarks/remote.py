"""What a served target costs against the same target in the process, on the demo pair.

    python benchmarks/remote.py [--problems 50] [--seed 20000]

Builds `llama-server` and converts the demo target to an fp32 GGUF (scripts/llama_server.py,
cached), serves it on loopback (one slot, one thread) and answers the same held-out problems
with the local target and with the served one, in `target_only` and `confspec` (the demo's
settings, greedy, `fast_path="off"`). Prints, per row: identical answers, and per step the
wall time, the target's requests (or forward passes), the server's own time and the prompt
tokens its prompt cache served. Rows of one run compare; the machine's load is
printed with them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from langchain_confspec import ConfSpecEngine, load_model
from langchain_confspec.config import build_config
from langchain_confspec.demo import DEMO_PAIR_DIR, DEMO_SETTINGS
from langchain_confspec.demo.problems import make_problems
from langchain_confspec.models.remote import RemoteModel

ROOT = Path(__file__).resolve().parents[1]


def llama_tools() -> Any:
    spec = importlib.util.spec_from_file_location("llama_server", ROOT / "scripts" / "llama_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(engine: ConfSpecEngine, problems: list[Any], mode: str) -> tuple[list[str], dict[str, float]]:
    texts, seconds, steps, passes, server_seconds, evaluated, cached = [], 0.0, 0, 0, 0.0, 0, 0
    for problem in problems:
        started = time.perf_counter()
        # By verdict, as llama-server must: it cannot score a proposed step for agreement.
        settings = {**DEMO_SETTINGS, "target_check": "verdict"}
        result = engine.generate(problem.turns(), build_config(**settings, mode=mode, max_tokens=96, fast_path="off"))
        seconds += time.perf_counter() - started
        texts.append(result.text)
        steps += result.summary.n_steps
        target = result.summary.target
        passes += target.forward_passes
        if target.server_work is not None:
            server_seconds += target.server_work.seconds
            evaluated += target.server_work.prompt_tokens
            cached += target.server_work.cached_prompt_tokens
    return texts, {
        "ms_per_step": 1000 * seconds / steps,
        "target_calls_per_step": passes / steps,
        "server_ms_per_step": 1000 * server_seconds / steps,
        "cached_per_step": cached / steps,
        "evaluated_per_step": evaluated / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20_000)
    args = parser.parse_args()
    tools = llama_tools()
    gguf, binary = tools.convert(DEMO_PAIR_DIR / "target"), tools.build()
    draft, target = load_model("confspec-demo-draft", role="draft"), load_model("confspec-demo-target", role="target")
    server = tools.Server(binary, gguf, slots=1)
    try:
        engines = {"local": ConfSpecEngine(draft, target), "served": ConfSpecEngine(draft, RemoteModel(server.url, target.tokenizer))}
        problems = make_problems(args.problems, args.seed)
        for engine in engines.values():  # warm both before timing
            engine.generate(problems[0].turns(), build_config(mode="target_only", max_tokens=8, fast_path="off"))
        print(f"load average before: {os.getloadavg()[0]:.2f}; {len(problems)} problems, seed {args.seed}", file=sys.stderr)
        print("| mode | target | identical to local | ms / step | target calls / step | server ms / step | prompt tokens / step: cached + evaluated |")
        print("|---|---|---|---|---|---|---|")
        for mode in ("target_only", "confspec"):
            reference: list[str] | None = None
            for where, engine in engines.items():
                texts, row = measure(engine, problems, mode)
                reference = reference or texts
                same = sum(a == b for a, b in zip(texts, reference))
                calls = f"{row['target_calls_per_step']:.2f} {'requests' if where == 'served' else 'passes'}"
                figures = "- | -"
                if where == "served":
                    figures = f"{row['server_ms_per_step']:.1f} | {row['cached_per_step']:.0f} + {row['evaluated_per_step']:.1f}"
                print(f"| {mode} | {where} | {same}/{len(problems)} | {row['ms_per_step']:.1f} | {calls} | {figures} |", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
