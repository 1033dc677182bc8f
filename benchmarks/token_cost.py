"""Per-token decode cost of the draft and the target, on the engine's own decode path.

    python benchmarks/token_cost.py [--draft ID --target ID] [--tokens 64] [--repeats 5]
                                    [--fast-paths off,static] [--window-check]

Step-level speculation pays only when a draft token is much cheaper than a target token, so
this is the first number to know about a pair. It times `write_step` over a `ModelSession`
(one forward pass per token) on each fast path named, after a warm-up, and reports the
median milliseconds per token and the target/draft ratio. The paths are timed in turn within each
round, so that the rows compare one moment of a CPU whose speed drifts. The comparison of `off` and
`static` on the CPU is what `fast_path="auto"` picks there by (docs/performance.md).

`--window-check` adds the target on `static` with about 1,000 live tokens in a 32,768-token
window against the same call in a 1,024-token window: attention follows the live context, so
the two should cost the same (goal: within 15%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from langchain_confspec.config import FastPath, build_config
from langchain_confspec.engine.decoding import StopScanner, TokenChooser, write_step
from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.models.loading import load_model
from langchain_confspec.models.session import ModelSession

PROMPT = [{"role": "user", "content": "Mia has 27 shells. Mia finds 38 more. How many shells does Mia have now?"}]


WINDOW_CHECK = (32_768, 1_024)
LIVE_TOKENS = 950


def one_round(engine: ConfSpecEngine, role: str, path: FastPath, tokens: int, prompt: list[int] | None = None) -> float | None:
    """Milliseconds per token of one step of up to `tokens` tokens after a prefill (None: no token)."""
    loaded = getattr(engine, role)
    kv, _, _ = engine.fast_paths.backend(role, path)
    ids = prompt if prompt is not None else loaded.render_prompt(PROMPT)
    session = ModelSession(loaded, ids, kv=kv, context_length=engine.context[role])
    session.next_logits()  # prefill is not decode
    started = time.perf_counter()
    step = write_step(session, TokenChooser(build_config()), budget=tokens, delimiters=["\x00never"], stops=StopScanner([]))
    elapsed = time.perf_counter() - started
    return 1000 * elapsed / len(step.ids) if step.ids else None


def ms_per_token(
    engine: ConfSpecEngine, role: str, paths: list[FastPath], tokens: int, repeats: int, prompt: list[int] | None = None
) -> dict[FastPath, float]:
    """Median ms/token on each path, the paths timed in turn within each round (this CPU's
    speed drifts over seconds: rounds of one path after the other would compare two moments)."""
    timings: dict[FastPath, list[float]] = {path: [] for path in paths}
    for repeat in range(repeats + 1):
        for path in paths:
            cost = one_round(engine, role, engine.fast_paths.resolve(path, role).path, tokens, prompt)
            if repeat and cost is not None:  # the first round warms up
                timings[path].append(cost)
    return {path: statistics.median(costs) for path, costs in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", default="confspec-demo-draft")
    parser.add_argument("--target", default="confspec-demo-target")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fast-paths", default="off,static", help="comma-separated: off, static, graphs")
    parser.add_argument("--window-check", action="store_true", help="also time a long window against a short one")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    engine = ConfSpecEngine(load_model(args.draft, role="draft"), load_model(args.target, role="target"))
    paths = [FastPath(p) for p in args.fast_paths.split(",")]
    costs: dict[str, dict[FastPath, float]] = {}
    for role in ("draft", "target"):
        loaded = getattr(engine, role)
        n_params = sum(p.numel() for p in loaded.model.parameters())
        costs[role] = ms_per_token(engine, role, paths, args.tokens, args.repeats)
        figures = ", ".join(f"{p.value} {ms:.2f}" for p, ms in costs[role].items())
        print(f"{role:6s} {loaded.name}: {n_params / 1e6:.2f}M parameters, ms/token: {figures}")
    for p in paths:
        print(f"target/draft cost per token on {p.value}: {costs['target'][p] / costs['draft'][p]:.2f}x")
    if args.window_check:
        window_check(args.target, args.tokens, args.repeats)


def window_check(target: str, tokens: int, repeats: int) -> None:
    """The target on `static` with the same ~1,000 live tokens in a long and a short window."""
    costs = {}
    for window in WINDOW_CHECK:
        loaded = load_model(target, role="target")
        loaded.model.config.max_position_embeddings = window  # RoPE needs no table: any window works for timing
        engine = ConfSpecEngine(loaded, loaded, max_context=window, max_batch=1)
        ids = loaded.render_prompt(PROMPT)
        prompt = (ids * (LIVE_TOKENS // len(ids) + 1))[: LIVE_TOKENS - tokens]
        costs[window] = ms_per_token(engine, "target", [FastPath.STATIC], tokens, repeats, prompt)[FastPath.STATIC]
        runner = engine.fast_paths.runner("target")
        assert runner is not None
        print(f"target static, window {window:,} ({runner.cache.max_len:,} slots a row), {LIVE_TOKENS} live tokens: {costs[window]:.2f} ms/token")
    long, short = WINDOW_CHECK
    ratio = costs[long] / costs[short]
    print(f"window {long:,} / window {short:,}: {ratio:.2f}x (goal <= 1.15: {'met' if ratio <= 1.15 else 'not met'})")

if __name__ == "__main__":
    main()
