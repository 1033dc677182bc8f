"""The `confspec` command: `run "question"`, `eval`, `fit-depth` and `report LOG`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_confspec.audit.display import (
    format_outcome,
    format_step_header,
    format_step_row,
    format_step_table,
)
from langchain_confspec.config import Mode, build_config
from langchain_confspec.demo import DEMO_DRAFT, DEMO_TARGET, pair_settings
from langchain_confspec.errors import ConfigurationError, ConfSpecError

# torch, transformers and the engine load inside the commands that need them: `confspec
# --help` and a mistyped option answer at once.
if TYPE_CHECKING:
    from langchain_confspec.audit.log import ConfSpecAuditHandler
    from langchain_confspec.engine.engine import ConfSpecEngine
    from langchain_confspec.engine.outputs import RunResult
    from langchain_confspec.models.remote import RemoteModel


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return int(args.handler(args))
    except (ConfSpecError, ValueError, OSError) as exc:
        print(f"confspec: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confspec", description="Step-level speculative reasoning, audited.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="answer one question and show how each step was produced")
    run.add_argument("question")
    _model_options(run)
    run.add_argument("--mode", default=Mode.CONFSPEC.value, choices=[m.value for m in Mode])
    run.add_argument("--no-compare", action="store_true", help="skip the target_only run used for the speedup")
    run.add_argument("-v", "--verbose", action="store_true", help="print each step as soon as it is decided")
    _audit_option(run)
    run.set_defaults(handler=_run)

    evaluate = commands.add_parser("eval", help="compare modes on a problem set")
    _model_options(evaluate)
    evaluate.add_argument("--data", type=Path, help='JSONL of {"question", "answer"} (GSM8K "#### N" works)')
    evaluate.add_argument("--problems", type=int, default=500, help="built-in problems when --data is absent")
    evaluate.add_argument("--seed", type=int, default=10_000, help="seed of the built-in problems")
    evaluate.add_argument(
        "--modes",
        default="target_only,draft_only,always_verify,confspec",
        help="comma-separated: target_only, draft_only, always_verify, confspec, each optionally with "
        "+tokens (token speculation), and hf_assisted (Hugging Face assisted generation)",
    )
    evaluate.add_argument("--sweep", help="SETTING=START:STOP[:COUNT], e.g. accept_threshold=0.5:0.99:5")
    evaluate.add_argument("--out", type=Path, default=Path("confspec-eval"), help="folder for JSON, Markdown, PNG")
    evaluate.add_argument("--no-progress", action="store_true")
    _audit_option(evaluate)
    evaluate.set_defaults(handler=_eval)

    fit = commands.add_parser("fit-depth", help="fit the token-speculation depth table of a model pair")
    _model_options(fit)
    fit.add_argument("--data", type=Path, help="JSONL questions to run (default: built-in problems)")
    fit.add_argument("--problems", type=int, default=200)
    fit.add_argument("--out", type=Path, help="where to save (default: confspec_depth.json beside the target)")
    fit.set_defaults(handler=_fit_depth)

    report = commands.add_parser("report", help="an HTML page from ConfSpecAuditHandler logs")
    report.add_argument("log", type=Path, help="a .jsonl audit log, or a folder of them")
    report.add_argument("-o", "--out", type=Path, default=Path("confspec-report.html"))
    report.add_argument("--title", default="ConfSpec audit report")
    report.set_defaults(handler=_report)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft", default=DEMO_DRAFT, help="draft model id or path (default: the bundled demo)")
    parser.add_argument("--target", default=DEMO_TARGET, help="target model id or path")
    parser.add_argument("--target-url", help="base URL of a server serving the target (no target weights load here)")
    parser.add_argument("--target-engine", default="auto", choices=["auto", "llama.cpp", "vllm", "sglang"], help="what serves --target-url (auto: ask it)")
    parser.add_argument("--target-tokenizer", help="with --target-url: the served target's tokenizer, id or path (default: --target)")
    parser.add_argument(
        "--target-api-key-env", metavar="NAME", help="with --target-url: the environment variable holding the server's API key"
    )
    parser.add_argument("--device-map", default=None, help='e.g. "auto" to use GPUs')
    parser.add_argument("--dtype", default=None, help='e.g. "bfloat16"')
    parser.add_argument("--max-context", type=int, default=None, help="context window to use, in tokens")
    parser.add_argument(
        "--kv-cache-memory",
        type=_budget,
        default=None,
        help="memory for the static KV caches: bytes (e.g. 4e9) or a fraction of the free device memory (e.g. 0.3)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. --set accept_threshold=0.9"
    )


def _audit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audit-log", type=Path, help="append every step record and summary to this JSONL file (read by `confspec report`)"
    )


def _audit_log(args: argparse.Namespace) -> ConfSpecAuditHandler | None:
    from langchain_confspec.audit.log import ConfSpecAuditHandler

    return ConfSpecAuditHandler(args.audit_log) if args.audit_log else None


def _engine(args: argparse.Namespace) -> ConfSpecEngine:
    from langchain_confspec.engine.engine import ConfSpecEngine
    from langchain_confspec.models.loading import load_model

    draft = load_model(args.draft, role="draft", device_map=args.device_map, torch_dtype=args.dtype)
    target = _served_target(args) if args.target_url else load_model(
        args.target, role="target", device_map=args.device_map, torch_dtype=args.dtype
    )
    return ConfSpecEngine(draft, target, max_context=args.max_context, kv_cache_memory=args.kv_cache_memory)


def _served_target(args: argparse.Namespace) -> RemoteModel:
    from langchain_confspec.models.loading import load_tokenizer
    from langchain_confspec.models.remote import RemoteModel

    """`--target-url`: the server, its tokenizer checked against the local one."""
    api_key = None
    if args.target_api_key_env:
        api_key = os.environ.get(args.target_api_key_env)
        if api_key is None:
            raise ConfigurationError(f"--target-api-key-env names {args.target_api_key_env}, which is not set.")
    tokenizer = load_tokenizer(args.target_tokenizer or args.target, role="target")
    remote = RemoteModel(args.target_url, tokenizer, engine=args.target_engine, api_key=api_key)
    remote.check_tokenizer()
    return remote


def _budget(text: str) -> int | float:
    """`--kv-cache-memory`: a fraction up to 1, else a number of bytes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    budget = value if 0.0 < value <= 1.0 else int(value)
    from langchain_confspec.models.cache_budget import validate_budget

    try:
        validate_budget(budget)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return budget


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pair's tuned settings, overridden by each `--set KEY=VALUE`."""
    settings = pair_settings(args.draft, args.target)
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set wants KEY=VALUE, got {pair!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def _run(args: argparse.Namespace) -> int:
    from langchain_confspec.engine.outputs import RunResult

    engine = _engine(args)
    settings = _settings(args)
    turns = [{"role": "user", "content": args.question}]
    config = build_config(**{**settings, "mode": args.mode})
    engine.generate(turns, build_config(**{**settings, "max_tokens": 2}))  # warm-up outside the timings
    if args.verbose:
        print(format_step_header(), flush=True)
    started = time.perf_counter()
    for item in engine.run(turns, config):
        if isinstance(item, RunResult):
            result = item
        elif args.verbose:
            print(format_step_row(item), flush=True)
    elapsed = time.perf_counter() - started
    if not args.verbose:
        print(result.text)
        print()
        print(format_step_table(result.records))
    else:
        print(f"\n{result.text}")
    print(f"\n{format_outcome(result.summary)}.\nfinish {result.summary.finish_reason}, {elapsed * 1000:.0f} ms")
    if (log := _audit_log(args)) is not None:
        log.write_run(args.question, result.records, result.summary, metadata={"mode": args.mode})
        log.close()
        print(f"audit log: {log.path} (an HTML report: confspec report {log.path})")
    if not args.no_compare and args.mode != Mode.TARGET_ONLY.value:
        started = time.perf_counter()
        engine.generate(turns, build_config(**{**settings, "mode": Mode.TARGET_ONLY}))
        reference = time.perf_counter() - started
        print(f"target_only: {reference * 1000:.0f} ms -> speedup {reference / elapsed:.2f}x")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from langchain_confspec.demo.problems import check_step
    from langchain_confspec.evaluation.harness import (
        RunPlan,
        builtin_items,
        evaluate,
        load_jsonl,
        parse_sweep,
    )

    items = load_jsonl(args.data) if args.data else builtin_items(args.problems, args.seed)
    plans = [RunPlan.parse(m) for m in args.modes.split(",") if m.strip()]
    if not plans:
        raise ValueError(f"--modes names no mode: {args.modes!r}")
    swept: tuple[str, list[float]] | None = None
    if args.sweep:
        swept = parse_sweep(args.sweep)
        if not any(p.mode is Mode.TARGET_ONLY for p in plans):
            plans.insert(0, RunPlan(Mode.TARGET_ONLY))
        plans += [RunPlan(Mode.CONFSPEC, {swept[0]: value}) for value in swept[1]]
    engine = _engine(args)
    settings = _settings(args)
    engine.generate([{"role": "user", "content": "warm up"}], build_config(**{**settings, "max_tokens": 2}))
    log = _audit_log(args)

    def log_result(question: str, label: str, result: RunResult) -> None:
        if log is not None:
            log.write_run(question, result.records, result.summary, metadata={"mode": label})

    report = evaluate(
        engine,
        items,
        plans,
        base=settings,
        check_step=None if args.data else check_step,
        progress=not args.no_progress,
        on_result=log_result,
    )
    if log is not None:
        log.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report.to_json(), indent=2))
    (args.out / "results.md").write_text(report.markdown() + "\n")
    written = [args.out / "results.json", args.out / "results.md"]
    try:
        from langchain_confspec.evaluation.plots import plot_reliability, plot_sweep

        written.append(plot_reliability(report.calibration, args.out / "reliability.png"))
        if any(label is not None for label in report.calibration.truth_labels):
            written.append(plot_reliability(report.calibration, args.out / "reliability-truth.png", against="truth"))
        if swept:
            reference = next((m for m in report.modes if m.mode == Mode.TARGET_ONLY.value), None)
            curve = [m for m in report.modes if swept[0] in m.settings]
            written.append(plot_sweep(curve, swept[0], reference, args.out / "sweep.png"))
    except ImportError:
        print("matplotlib is not installed: no PNG charts (pip install 'langchain-confspec[eval]')", file=sys.stderr)
    print(report.markdown())
    if report.interrupted:
        print(f"\ninterrupted: results cover the first {report.problems} problems", file=sys.stderr)
    if log is not None:
        written.append(log.path)
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _report(args: argparse.Namespace) -> int:
    from langchain_confspec.audit.log import read_audit_log
    from langchain_confspec.audit.report import render_report

    entries = list(read_audit_log(args.log))
    if not entries:
        raise ValueError(f"{args.log}: no audit entries in it: nothing to report")
    args.out.write_text(render_report(entries, title=args.title), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _fit_depth(args: argparse.Namespace) -> int:
    from langchain_confspec.engine.speculation import DEPTH_TABLE_FILE, DepthPolicy
    from langchain_confspec.evaluation.harness import builtin_items, load_jsonl

    items = load_jsonl(args.data) if args.data else builtin_items(args.problems, seed=30_000)
    engine = _engine(args)
    out = args.out or (engine.target.directory / DEPTH_TABLE_FILE if engine.target.directory else None)
    if out is None:
        raise ValueError("the target is not a local folder: name the table's path with --out")
    engine.depth_policy = DepthPolicy(acceptance=[1.0] * 8, max_depth=8, min_path_chance=0.0)  # explore: always draft deep
    engine.depth_samples = []
    config = build_config(**{**_settings(args), "mode": Mode.TARGET_ONLY, "token_speculation": True})
    for item in items:
        engine.generate([{"role": "user", "content": item.question}], config)
    policy = DepthPolicy.fit(engine.depth_samples)
    policy.save(out)
    kept = sum(k for _, k in engine.depth_samples)
    print(f"{len(engine.depth_samples)} proposed tokens judged, {kept} kept; acceptance by entropy bin: {policy.acceptance}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
