"""The fast path measured: decode and pass costs, end-to-end speedups, exactness, warm-up.

    python benchmarks/gpu.py --out DIR                  # on a CUDA machine (an H100 or H200), bf16
    python benchmarks/gpu.py --sections decode,passes   # a subset: decode passes pair bundled warmup window
    python benchmarks/gpu.py --sections pair --skip-hf  # the engine's rows only (HF's compile for minutes)
    python benchmarks/gpu.py --smoke --out DIR          # the same code on tiny CPU models, in seconds

Random-weight models at Qwen2.5 shapes give honest timings, not honest acceptance, so the pair
section fixes the acceptance pattern explicitly (`ScriptedVerdicts`: real verification passes,
scripted decisions); the bundled trained pair gives real acceptance and accuracy. Every shape
uses the 151,936-token vocabulary of the 0.5B (the 7B's embedding has 128 padding rows more:
0.08% of its LM head), so that draft and target share one tokenizer.

Writes results.json and results.md to --out after each section, so a run cut short keeps what
it measured. `--smoke` replaces CUDA graphs by their eager rehearsal (the same passes, padded
to the same lengths) and skips nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from result_files import save_results
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    StaticCache,
)
from transformers.utils import logging as hf_logging

from langchain_confspec.config import FastPath, build_config
from langchain_confspec.demo import DEMO_SETTINGS
from langchain_confspec.demo.problems import extract_answer, make_problems
from langchain_confspec.engine import generation as generation_module
from langchain_confspec.engine.decoding import StopScanner, TokenChooser, write_step
from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.engine.verification import VerdictReader
from langchain_confspec.models.cuda_graphs import (
    CudaGraphCapture,
    EagerRehearsal,
    GraphCapture,
    synchronize,
)
from langchain_confspec.models.loading import LoadedModel, load_model, wrap_model
from langchain_confspec.models.session import ModelSession
from langchain_confspec.models.static_runner import PASS_BUCKETS, StaticRunner
from langchain_confspec.records import Verdict

NEVER = ["\x00never"]  # a delimiter no token writes: steps run to their budget

SHAPES = {
    "0.5B": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "1.5B": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
    "14B": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8},
    "tiny-a": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "tiny-b": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2},
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one run measures, and at what size."""

    device: torch.device
    dtype: torch.dtype
    capture: GraphCapture
    vocab: int
    pairs: tuple[tuple[str, str], ...]  # (draft, target): decode/passes measure every model in them
    context: int
    prompt_words: int
    decode_tokens: int
    repeats: int
    pass_lengths: tuple[int, ...]
    answer_tokens: int
    step_tokens: int
    patterns: tuple[float, ...]
    rewrite_share: float
    problems: int
    hf_compiled: bool
    windows: tuple[int, int] = (32_768, 2_048)  # the window section: a long and a short window
    live_tokens: int = 1_000
    hf_baselines: bool = True  # HF `generate` rows beside the engine's (decode and pair sections)

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        return dataclasses.replace(cls.sized_for(args), hf_baselines=not args.skip_hf)

    @classmethod
    def sized_for(cls, args: argparse.Namespace) -> Plan:
        if args.smoke:
            return cls(torch.device("cpu"), torch.float32, EagerRehearsal(), 2_000, (("tiny-a", "tiny-b"),), 1024,
                       40, 8, 2, (8, 64, 300), 48, 8, (0.5, 0.7, 0.9), args.rewrite_share, 2, False,
                       (4096, 512), 200)  # fmt: skip
        if not torch.cuda.is_available():
            sys.exit("benchmarks/gpu.py needs CUDA (or --smoke)")
        return cls(torch.device("cuda"), torch.bfloat16, CudaGraphCapture(compile_decode=not args.no_compile),
                   151_936, pair_up(args.sizes.split(",")), 2048, 300, 128, 5, (8, 16, 32, 64, 128, 256, 512), 400, 40,
                   (0.5, 0.7, 0.9), args.rewrite_share, args.problems, True)  # fmt: skip


def pair_up(sizes: list[str]) -> tuple[tuple[str, str], ...]:
    """Models are built in (draft, target) pairs, one engine each: the 0.5B/7B pair first (the
    pair section runs on it), the others two by two (an odd one out serves as both)."""
    rest = list(dict.fromkeys(sizes))
    pairs = []
    if "0.5B" in rest and "7B" in rest:
        rest.remove("0.5B"), rest.remove("7B")
        pairs.append(("0.5B", "7B"))
    pairs += [(rest[i], rest[min(i + 1, len(rest) - 1)]) for i in range(0, len(rest), 2)]
    return tuple(pairs)


# -- models -------------------------------------------------------------------------------------


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `vocab` tokens (w0, w1, ...) with the verdict words, so that
    vocabulary-sized work is real and verification prompts can be read."""
    words = {f"w{i}": i for i in range(vocab - 2)}
    for i, word in enumerate(("Yes", "No", "yes", "no", "YES", "NO", "Answer:", "Score:")):
        words.pop(f"w{i}")
        words[word] = i
    words["<unk>"], words["<eos>"] = vocab - 2, vocab - 1
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tokenizer


def shape_config(name: str, plan: Plan) -> Qwen2Config:
    return Qwen2Config(**SHAPES[name], vocab_size=plan.vocab, max_position_embeddings=8192, eos_token_id=plan.vocab - 1)


def fits(names: tuple[str, ...], plan: Plan) -> bool:
    """Whether these models' weights fit in 90% of the device's free memory."""
    if plan.device.type != "cuda":
        return True
    with torch.device("meta"):
        params = sum(sum(p.numel() for p in Qwen2ForCausalLM(shape_config(n, plan)).parameters()) for n in set(names))
    return params * torch.finfo(plan.dtype).bits // 8 < 0.9 * torch.cuda.mem_get_info(plan.device)[0]


def random_model(name: str, plan: Plan, tokenizer: PreTrainedTokenizerFast) -> LoadedModel:
    config = shape_config(name, plan)
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = Qwen2ForCausalLM(config).to(plan.dtype).eval()
    return wrap_model(model, tokenizer, role=name, name=name)


def weight_bytes(loaded: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for p in loaded.model.parameters())


def prompt_turns(words: int, offset: int = 100) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(f"w{i}" for i in range(offset, offset + words))}]


def copy_bandwidth(plan: Plan) -> float:
    """Bytes/s of a device-to-device copy of random bytes, read plus written: the decode floor's
    rate, measured on the device at hand (an H100 and an H200 differ by 1.4x) rather than assumed."""
    size = 2**31 if plan.device.type == "cuda" else 2**25
    seconds = copy_seconds(plan, size)
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()  # the buffers' memory back: later sections size caches from what is free
    return 2 * size / seconds


def copy_seconds(plan: Plan, size: int) -> float:
    source = torch.randint(0, 256, (size,), dtype=torch.uint8, device=plan.device)
    target = torch.empty_like(source)
    return median_seconds(plan, lambda: target.copy_(source), plan.repeats)


def median_seconds(plan: Plan, work: Callable[[], object], repeats: int) -> float:
    work()  # warm
    times = []
    for _ in range(repeats):
        synchronize(plan.device)
        started = time.perf_counter()
        work()
        synchronize(plan.device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- 1. decode cost per token ------------------------------------------------------------------------


def engine_ms_per_token(
    plan: Plan, engine: ConfSpecEngine, role: str, path: FastPath, tokens: int, prompt: list[int] | None = None
) -> float:
    """`write_step` over a session on `path`: the engine's own decode loop, token by token."""
    loaded = getattr(engine, role)
    chooser = TokenChooser(build_config())
    times = []
    ids = prompt if prompt is not None else loaded.render_prompt(prompt_turns(plan.prompt_words))
    for repeat in range(plan.repeats + 1):
        kv, _, _ = engine.fast_paths.backend(role, path)
        session = ModelSession(loaded, ids, kv=kv, context_length=engine.context[role])
        session.next_logits()  # the prompt is read before the clock starts
        synchronize(plan.device)
        started = time.perf_counter()
        step = write_step(session, chooser, budget=tokens, delimiters=NEVER, stops=StopScanner([]))
        synchronize(plan.device)
        if repeat:  # the first round warms up; each round's time per token it really wrote
            times.append((time.perf_counter() - started) / max(1, len(step.ids)))
    return 1000 * statistics.median(times)


def bare_step_ms(plan: Plan, runner: StaticRunner, tokens: int) -> float:
    """The captured decode step replayed back to back, no host logic: the floor of the loop."""
    return 1000 * median_seconds(plan, lambda: runner.replay_decode(tokens), plan.repeats) / tokens


def hf_cache_len(plan: Plan, ids: torch.Tensor) -> int:
    """One static-cache length for every HF run, so its compiled forward is compiled once per model."""
    return ids.shape[1] + max(plan.answer_tokens, 64) + 8


def hf_ms_per_token(plan: Plan, loaded: LoadedModel, *, static: bool, new: int) -> float:
    """HF `generate` per token: (time for `new` tokens - time for 1) / (new - 1). With a static
    cache it compiles the forward itself on CUDA (auto-compile); one cache serves every run,
    reset in between, so nothing is re-recorded inside a timed run."""
    ids = torch.tensor([loaded.render_prompt(prompt_turns(plan.prompt_words))], device=plan.device)
    reused = StaticCache(config=loaded.model.config, max_cache_len=hf_cache_len(plan, ids)) if static else None

    def generate(n: int) -> None:
        cache = reused
        with torch.inference_mode():
            if cache is not None:
                cache.reset()
            loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0, **{loaded.cache_argument: cache})  # fmt: skip

    one = median_seconds(plan, lambda: generate(1), 2)
    many = median_seconds(plan, lambda: generate(new), 2)
    return 1000 * (many - one) / (new - 1)


def decode_section(plan: Plan, engines: dict[str, ConfSpecEngine], bandwidth: float) -> list[dict[str, Any]]:
    rows = []
    for name, (engine, role) in model_roles(engines).items():
        loaded: LoadedModel = getattr(engine, role)
        runner = engine.fast_paths.runner(role)
        assert runner is not None
        row = {
            "model": name,
            "context": runner.max_len,
            "rows": runner.rows,
            "weights_gib": weight_bytes(loaded) / 2**30,
            "floor_ms": 1000 * weight_bytes(loaded) / bandwidth,
            "bare_graph_step_ms": bare_step_ms(plan, runner, plan.decode_tokens),
            "engine_graphs_ms": engine_ms_per_token(plan, engine, role, FastPath.GRAPHS, plan.decode_tokens),
            "engine_static_ms": engine_ms_per_token(plan, engine, role, FastPath.STATIC, max(8, plan.decode_tokens // 4)),
            "engine_off_ms": engine_ms_per_token(plan, engine, role, FastPath.OFF, max(8, plan.decode_tokens // 4)),
            "hf_eager_ms": hf_ms_per_token(plan, loaded, static=False, new=32) if plan.hf_baselines else None,
            "hf_static_ms": hf_ms_per_token(plan, loaded, static=True, new=64) if plan.hf_compiled and plan.hf_baselines else None,
        }
        row["host_overhead_pct"] = 100 * (row["engine_graphs_ms"] / row["bare_graph_step_ms"] - 1)
        rows.append(row)
        log(f"decode {name} ({row['context']} tokens x {row['rows']} rows): " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)))
    return rows


def window_section(plan: Plan) -> list[dict[str, Any]]:
    """The pair's target decoding with the same ~1,000 live tokens at the engine's defaults (its
    window, default KV budget), in a long window and in a short one (max_batch 1 each). Decode
    steps are captured uncompiled here (one compile per attend bucket and run would not fit
    the device's 10 minutes): the comparison is between windows, like with like."""
    name = plan.pairs[0][1]
    loaded = random_model(name, plan, word_tokenizer(plan.vocab))
    loaded.model.config.max_position_embeddings = plan.windows[0]
    prompt = (loaded.render_prompt(prompt_turns(plan.prompt_words)) * 100)[: plan.live_tokens - plan.decode_tokens]
    rows = []
    for label, window in (("defaults", None), ("long window", plan.windows[0]), ("short window", plan.windows[1])):
        capture = CudaGraphCapture(compile_decode=False) if plan.device.type == "cuda" else plan.capture
        engine = ConfSpecEngine(loaded, loaded, max_context=window, graph_capture=capture, max_batch=1 if window else 8)
        engine.fast_paths.prepare("target", FastPath.GRAPHS)  # the target's runner only
        runner = engine.fast_paths.runner("target")
        assert runner is not None
        ms = engine_ms_per_token(plan, engine, "target", FastPath.GRAPHS, plan.decode_tokens, prompt)
        rows.append({"model": name, "run": label, "context": runner.max_len, "rows": runner.rows, "live_tokens": plan.live_tokens,
                     "engine_graphs_ms": ms, "cache_mib": runner.report.cache_mib})  # fmt: skip
        log(f"window {name} {label}: {runner.max_len} tokens x {runner.rows} rows, {plan.live_tokens} live: {ms:.2f} ms/token")
        del engine, runner
    return rows


# -- 2. multi-token passes -----------------------------------------------------------------------------


def pass_ms(plan: Plan, runner: StaticRunner, length: int, *, graphs: bool) -> float:
    tokens = list(range(100, 100 + length))
    return 1000 * median_seconds(plan, lambda: runner.forward(tokens, plan.prompt_words, 1, graphs=graphs), plan.repeats)


def passes_section(plan: Plan, engines: dict[str, ConfSpecEngine]) -> list[dict[str, Any]]:
    rows = []
    for name, (engine, role) in model_roles(engines).items():
        runner = engine.fast_paths.runner(role)
        assert runner is not None
        for length in plan.pass_lengths:
            graph = pass_ms(plan, runner, length, graphs=True) if length <= PASS_BUCKETS[-1] else None
            rows.append({"model": name, "tokens": length, "graph_ms": graph, "eager_ms": pass_ms(plan, runner, length, graphs=False)})
            log(f"pass {name} {length}: graph {graph}, eager {rows[-1]['eager_ms']:.2f} ms")
    return rows


# -- 3. the pair with a fixed acceptance pattern ----------------------------------------------------------


class ScriptedVerdicts:
    """Verdicts that follow a fixed pattern: of every step, the draft keeps `keep` on its own
    (confidence 1.0); it is unsure of the rest (0.5), which go to the target, who rewrites
    `rewrite_share` of them and keeps the others. Steps are spread evenly (step i is kept when
    floor((i + 1) keep) > floor(i keep)). The verification passes still run: only the reading
    of their distributions is scripted."""

    def __init__(self, keep: float, rewrite_share: float) -> None:
        self.keep, self.rewrite_share = keep, rewrite_share
        self._counts = threading.local()  # each answer runs in one thread: its own pattern

    @property
    def step(self) -> int:
        return getattr(self._counts, "step", 0)

    @property
    def unsure(self) -> int:
        return getattr(self._counts, "unsure", 0)

    def reader(self, tokenizer: Any, config: Any, *, role: str) -> VerdictReader:
        """Stands in for `VerdictReader` in confspec mode, where each answer makes its draft's
        reader (the pattern starts again), then its target's."""
        real = VerdictReader(tokenizer, config, role=role)
        is_draft = role == "draft"
        if is_draft:
            self._counts.step = self._counts.unsure = 0
        script = self

        class Scripted(VerdictReader):
            def __init__(self) -> None:
                self.suffix_ids = real.suffix_ids

            def read(self, logits: torch.Tensor) -> Verdict:
                return script.draft_verdict() if is_draft else script.target_verdict()

        return Scripted()

    def draft_verdict(self) -> Verdict:
        i = self.step
        self._counts.step = i + 1
        if math.floor((i + 1) * self.keep) > math.floor(i * self.keep):
            return Verdict(p_accept=1.0)
        return Verdict(p_accept=0.5)

    def target_verdict(self) -> Verdict:
        j = self.unsure
        self._counts.unsure = j + 1
        rewrite = math.floor((j + 1) * self.rewrite_share) > math.floor(j * self.rewrite_share)
        return Verdict(p_accept=0.0 if rewrite else 1.0)


@contextlib.contextmanager
def scripted(keep: float, rewrite_share: float) -> Iterator[ScriptedVerdicts]:
    script = ScriptedVerdicts(keep, rewrite_share)
    original = generation_module.VerdictReader
    generation_module.VerdictReader = script.reader  # type: ignore[assignment,misc]
    try:
        yield script
    finally:
        generation_module.VerdictReader = original  # type: ignore[misc]


def predicted_seconds(plan: Plan, keep: float, costs: dict[str, Any]) -> float:
    """What a confspec answer should cost from the measured unit costs, pass by pass as the
    engine runs them: draft tokens, its verdict pass, the target's catch-up + verdict pass on
    unsure steps, target tokens and the draft's catch-up on rewritten ones."""
    script = ScriptedVerdicts(keep, plan.rewrite_share)
    step, suffix = plan.step_tokens, costs["suffix_tokens"]
    total, target_pending, draft_pending = 0.0, 0, 0
    for _ in range(plan.answer_tokens // step):
        total += costs["pass"]["draft"](draft_pending) if draft_pending else 0.0  # the target's last step
        total += step * costs["token"]["draft"] + costs["pass"]["draft"](1 + suffix)  # its last token + the question
        draft_pending = 0
        if script.draft_verdict().p_accept == 1.0:
            target_pending += step  # read later, in the target's next pass
            continue
        total += costs["pass"]["target"](target_pending + step + suffix)
        target_pending = 0
        if script.target_verdict().p_accept == 0.0:  # rewritten: the draft reads the target's step next
            total += step * costs["token"]["target"]
            target_pending, draft_pending = 1, step
    return total / 1000


def pass_cost_curve(plan: Plan, rows: list[dict[str, Any]], model: str) -> Callable[[int], float]:
    """ms for a pass of n tokens: the captured bucket it pads to, else eager (interpolated)."""
    mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["tokens"])

    def cost(n: int) -> float:
        for row in mine:
            if row["tokens"] >= n:
                return row["graph_ms"] if row["graph_ms"] is not None and n <= PASS_BUCKETS[-1] else row["eager_ms"]
        return mine[-1]["eager_ms"] * n / mine[-1]["tokens"]

    return cost


def timed_answer(plan: Plan, engine: ConfSpecEngine, turns: list[dict[str, str]], **settings: Any) -> tuple[float, Any]:
    config = build_config(max_tokens=plan.answer_tokens, max_step_tokens=plan.step_tokens, **settings)
    engine.generate(turns, config)  # warm
    synchronize(plan.device)
    started = time.perf_counter()
    result = engine.generate(turns, config)
    synchronize(plan.device)
    return time.perf_counter() - started, result


def hf_answer_seconds(plan: Plan, engine: ConfSpecEngine, turns: list[dict[str, str]], *, static: bool = False, **kwargs: Any) -> float:
    """HF `generate` of the same number of tokens on the target (`kwargs`: e.g. an assistant)."""
    target = engine.target
    ids = torch.tensor([target.render_prompt(turns)], device=plan.device)

    reused = StaticCache(config=target.model.config, max_cache_len=hf_cache_len(plan, ids)) if static else None

    def generate() -> None:
        cache = reused
        with torch.inference_mode():
            if cache is not None:
                cache.reset()
            target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=plan.answer_tokens,
                                  min_new_tokens=plan.answer_tokens, do_sample=False, pad_token_id=0,
                                  **{target.cache_argument: cache}, **kwargs)  # fmt: skip

    return median_seconds(plan, generate, 1)


def pair_section(
    plan: Plan, engines: dict[str, ConfSpecEngine], decode: list[dict[str, Any]], passes: list[dict[str, Any]],
    publish: Callable[[dict[str, Any]], None],
) -> None:
    """The fast-path `target_only` answer, then each pattern, then the HF baselines, `publish`ed
    after each run: a run cut short keeps the speedups, the figures the goals judge."""
    draft_name, target_name = plan.pairs[0]
    engine = engines.get(f"{draft_name}/{target_name}")
    if engine is None or draft_name == target_name:
        raise SystemExit("the pair section needs a draft and a target: --sizes with 0.5B and 7B")
    turns = prompt_turns(plan.prompt_words, offset=500)
    graphs = {"fast_path": FastPath.GRAPHS}
    base, _ = timed_answer(plan, engine, turns, mode="target_only", **graphs)
    costs = {
        "suffix_tokens": len(VerdictReader(engine.draft.tokenizer, build_config()).suffix_ids),
        "token": {role: next(r["engine_graphs_ms"] for r in decode if r["model"] == name) for role, name in (("draft", draft_name), ("target", target_name))},
        "pass": {role: pass_cost_curve(plan, passes, name) for role, name in (("draft", draft_name), ("target", target_name))},
    }
    baselines = {"target_only (fast path)": base}
    patterns: list[dict[str, Any]] = []
    section = {"draft": draft_name, "target": target_name, "answer_tokens": plan.answer_tokens, "step_tokens": plan.step_tokens,
               "rewrite_share": plan.rewrite_share, "baselines_seconds": baselines, "patterns": patterns}  # fmt: skip
    publish(section)
    for keep in plan.patterns:
        with scripted(keep, plan.rewrite_share):
            seconds, result = timed_answer(plan, engine, turns, mode="confspec", **graphs)
        decisions = result.summary.steps_by_decision
        predicted = predicted_seconds(plan, keep, costs)
        patterns.append({
            "draft_keeps": keep,
            "steps": result.summary.n_steps,
            "kept_by_draft": decisions["accepted_by_draft"],
            "escalated": sum(r.escalated for r in result.records),
            "rewritten": sum(r.regenerated for r in result.records),
            "seconds": seconds,
            "predicted_seconds": predicted,
            "speedup": base / seconds,
            "predicted_speedup": base / predicted,
        })  # fmt: skip
        log(f"pair keep {keep:.0%}: {seconds:.3f} s (predicted {predicted:.3f}), {base / seconds:.2f}x vs target_only")
        publish(section)
    if not plan.hf_baselines:
        return
    hf_runs: dict[str, dict[str, Any]] = {
        "HF generate, eager": {},
        "HF generate, static cache" + (" (compiled)" if plan.hf_compiled else ""): {"static": True},
        "HF assisted generation": {"assistant_model": engine.draft.model},
    }
    for name, kwargs in hf_runs.items():
        baselines[name] = hf_answer_seconds(plan, engine, turns, **kwargs)
        log(f"pair {name}: {baselines[name]:.3f} s")
        publish(section)


# -- 4. the bundled pair with its real acceptance --------------------------------------------------------


BUNDLED_ROWS: dict[str, dict[str, Any]] = {
    "target_only": {"mode": "target_only"},
    "draft_only": {"mode": "draft_only"},
    "always_verify": {"mode": "always_verify"},
    "confspec": {"mode": "confspec"},
    "target_only+tokens": {"mode": "target_only", "token_speculation": True},
    "target_only+tokens, depth 4": {"mode": "target_only", "token_speculation": True, "speculation_depth": 4},
    "confspec+tokens": {"mode": "confspec", "token_speculation": True},
}
"""Each row's settings over the demo's; `depth 4`: fixed-depth rounds read back once each."""


def bundled_section(plan: Plan, publish: Callable[[dict[str, Any]], None]) -> None:
    """Every mode on `graphs` and `off`, `publish`ed after each mode (`target_only` first: the
    speedups' reference)."""
    device_map = None if plan.device.type == "cpu" else str(plan.device)
    draft = load_model("confspec-demo-draft", role="draft", device_map=device_map)
    target = load_model("confspec-demo-target", role="target", device_map=device_map)
    engine = ConfSpecEngine(draft, target, graph_capture=plan.capture)
    graphs = FastPath.GRAPHS
    reports = engine.warmup(graphs)
    problems = make_problems(plan.problems, 10_000)
    rows: list[dict[str, Any]] = []
    section = {"problems": len(problems), "rows": rows, "warmup": [r.model_dump() for r in reports]}
    for mode, row_settings in BUNDLED_ROWS.items():
        settings = {**DEMO_SETTINGS, **row_settings, "max_tokens": 160}
        row = {"mode": mode, "right": 0, "identical_to_off": 0, "seconds": {"graphs": 0.0, "off": 0.0}, "target_passes": 0}
        for problem in problems:
            answers = {}
            for path in (graphs, FastPath.OFF):
                result = engine.generate(problem.turns(), build_config(**settings, fast_path=path))
                row["seconds"][path.value] += result.summary.wall_time - result.summary.warmup_time
                answers[path] = result
            row["right"] += extract_answer(answers[graphs].text) == str(problem.answer)
            row["identical_to_off"] += answers[graphs].text == answers[FastPath.OFF].text
            row["target_passes"] += answers[graphs].summary.target.forward_passes
        reference = next((r for r in rows if r["mode"] == "target_only"), row)["seconds"]["graphs"]
        row["speedup_vs_target_only"] = reference / row["seconds"]["graphs"]
        row["graphs_vs_off"] = row["seconds"]["off"] / row["seconds"]["graphs"]
        rows.append(row)
        log(f"bundled {mode}: {row['right']}/{len(problems)} right, {row['identical_to_off']}/{len(problems)} identical to off")
        publish(section)


# -- 5. warm-up and memory ------------------------------------------------------------------------------


def warmup_section(engines: dict[str, ConfSpecEngine], reports: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, (engine, role) in model_roles(engines).items():
        report = reports[name]
        rows.append({**report, "weights_gib": weight_bytes(getattr(engine, role)) / 2**30})
    return rows


# -- running -------------------------------------------------------------------------------------------


def model_roles(engines: dict[str, ConfSpecEngine]) -> dict[str, tuple[ConfSpecEngine, str]]:
    """Each measured model by name, with the engine and role it serves in (first seen wins)."""
    roles: dict[str, tuple[ConfSpecEngine, str]] = {}
    for engine in engines.values():
        for role in ("draft", "target"):
            roles.setdefault(getattr(engine, role).name, (engine, role))
    return roles


def build_engines(plan: Plan, max_batch: int = 1) -> tuple[dict[str, ConfSpecEngine], dict[str, Any]]:
    tokenizer = word_tokenizer(plan.vocab)
    engines, reports, loaded = {}, {}, {}
    for draft, target in plan.pairs:
        if not fits(tuple(n for n in (draft, target) if n not in loaded), plan):
            log(f"skipped {draft}/{target}: not enough free device memory")
            continue
        for name in (draft, target):
            if name not in loaded:
                loaded[name] = random_model(name, plan, tokenizer)
        engine = ConfSpecEngine(
            loaded[draft], loaded[target], max_context=plan.context, graph_capture=plan.capture, max_batch=max_batch
        )
        for report in engine.warmup(FastPath.GRAPHS):
            reports.setdefault(report.model, report.model_dump())
            log(f"warm-up {report.model}: {report.seconds:.1f} s, cache {report.cache_mib:.0f} MiB, graphs {report.graph_mib:.0f} MiB")
        engines[f"{draft}/{target}"] = engine
    return engines, reports


def judge_goals(results: dict[str, Any]) -> list[dict[str, str]]:
    """Every goal this benchmark states, with the figure it measured and met / not met (or not
    measured, where its section or model did not run)."""
    decode = {r["model"]: r for r in results.get("decode", [])}
    passes = {(r["model"], r["tokens"]): r for r in results.get("passes", [])}
    window = {r["run"]: r for r in results.get("window", [])}
    pair = {r["draft_keeps"]: r for r in results.get("pair", {}).get("patterns", [])}
    goals: list[tuple[str, Callable[[], tuple[float, float, str]]]] = [
        ("0.5B decode <= 1.8 ms/token", lambda: (decode["0.5B"]["engine_graphs_ms"], 1.8, "ms")),
        ("7B decode <= 7.9 ms/token", lambda: (decode["7B"]["engine_graphs_ms"], 7.9, "ms")),
        ("7B engine within 8% of the bare step", lambda: (decode["7B"]["host_overhead_pct"], 8.0, "%")),
        ("7B 64-token pass <= 13 ms", lambda: (passes[("7B", 64)]["graph_ms"], 13.0, "ms")),
        ("confspec >= 2.24x target_only at 70% kept", lambda: (-pair[0.7]["speedup"], -2.24, "x")),
        ("long window with 1k live tokens within 10% of the short window",
         lambda: (100 * (window["long window"]["engine_graphs_ms"] / window["short window"]["engine_graphs_ms"] - 1), 10.0, "%")),
    ]  # fmt: skip
    judged = []
    for goal, measure in goals:
        try:
            value, limit, unit = measure()
        except (KeyError, TypeError):
            judged.append({"goal": goal, "figure": "-", "verdict": "not measured"})
            continue
        shown = f"{-value:.2f}x" if unit == "x" else f"{value:.2f}{unit}"
        judged.append({"goal": goal, "figure": shown, "verdict": "met" if value <= limit else "not met"})
    return judged


STARTED = time.perf_counter()


def log(message: str) -> None:
    """Each line with the seconds since start: what a device lease's next plan is sized from."""
    print(f"[{time.perf_counter() - STARTED:5.0f} s] {message}", flush=True)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Fast-path benchmark ({results['device']}, {results['dtype']}, {results['date']})", ""]
    if "decode" in results:
        lines += ["## Decode, ms/token", "", f"Floor: the weights read once at the measured copy rate, {results['copy_bandwidth_gbs']:.0f} GB/s.", "", "| model | context x rows | floor | bare graph step | engine graphs | host overhead | engine static | engine off | HF eager | HF static |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["decode"]:
            hf = {key: f"{r[key]:.2f}" if r[key] is not None else "-" for key in ("hf_eager_ms", "hf_static_ms")}
            lines.append(f"| {r['model']} | {r['context']} x {r['rows']} | {r['floor_ms']:.2f} | {r['bare_graph_step_ms']:.2f} | {r['engine_graphs_ms']:.2f} | {r['host_overhead_pct']:.1f}% | {r['engine_static_ms']:.2f} | {r['engine_off_ms']:.2f} | {hf['hf_eager_ms']} | {hf['hf_static_ms']} |")
        lines.append("")
    if "passes" in results:
        lines += ["## Multi-token passes, ms", "", "| model | tokens | captured graph | eager |", "|---|---|---|---|"]
        for r in results["passes"]:
            graph = f"{r['graph_ms']:.2f}" if r["graph_ms"] is not None else "-"
            lines.append(f"| {r['model']} | {r['tokens']} | {graph} | {r['eager_ms']:.2f} |")
        lines.append("")
    if "pair" in results:
        p = results["pair"]
        lines += [f"## {p['draft']} draft / {p['target']} target, fixed acceptance ({p['answer_tokens']} tokens, {p['step_tokens']}-token steps, target rewrites {p['rewrite_share']:.0%} of escalated steps)", "",
                  "| run | seconds | speedup vs fast-path target_only | predicted |", "|---|---|---|---|"]  # fmt: skip
        base = p["baselines_seconds"]["target_only (fast path)"]
        for name, seconds in p["baselines_seconds"].items():
            lines.append(f"| {name} | {seconds:.3f} | {base / seconds:.2f}x | - |")
        for r in p["patterns"]:
            lines.append(f"| confspec, draft keeps {r['draft_keeps']:.0%} ({r['kept_by_draft']} kept, {r['escalated']} escalated, {r['rewritten']} rewritten) | {r['seconds']:.3f} | {r['speedup']:.2f}x | {r['predicted_speedup']:.2f}x |")
        lines.append("")
    if "bundled" in results:
        b = results["bundled"]
        lines += [f"## The bundled pair, {b['problems']} problems, fp32, graphs vs off", "",
                  "| mode | right | identical to off | speedup vs target_only | graphs vs off | target passes |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in b["rows"]:
            lines.append(f"| {r['mode']} | {r['right']}/{b['problems']} | {r['identical_to_off']}/{b['problems']} | {r['speedup_vs_target_only']:.2f}x | {r['graphs_vs_off']:.2f}x | {r['target_passes']} |")
        lines.append("")
    if "warmup" in results:
        lines += ["## Warm-up and memory", "", "| model | weights GiB | context x rows | cache MiB | graphs MiB | allocate s | decode compile + capture s | passes capture s |", "|---|---|---|---|---|---|---|---|"]
        for r in results["warmup"]:
            lines.append(f"| {r['model']} | {r['weights_gib']:.2f} | {r['cache_tokens']} x {r['cache_rows']} | {r['cache_mib']:.0f} | {r['graph_mib']:.0f} | {r['allocate_seconds']:.2f} | {r['decode_capture_seconds']:.1f} | {r['passes_capture_seconds']:.1f} |")
        lines.append("")
    if "window" in results:
        lines += ["## Decode with ~1k live tokens: defaults, long and short window", "", "| model | run | context x rows | ms/token | cache MiB |", "|---|---|---|---|---|"]
        for r in results["window"]:
            lines.append(f"| {r['model']} | {r['run']} | {r['context']} x {r['rows']} | {r['engine_graphs_ms']:.2f} | {r['cache_mib']:.0f} |")
        lines.append("")
    if "goals" in results:
        lines += ["## Goals", "", "| goal | figure | verdict |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {g['figure']} | {g['verdict']} |" for g in results["goals"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, graphs rehearsed eagerly")
    parser.add_argument("--sections", default="decode,passes,pair,bundled,warmup,window")
    parser.add_argument("--sizes", default="0.5B,1.5B,7B,14B", help="shapes measured besides the 0.5B/7B pair")
    parser.add_argument("--problems", type=int, default=50, help="bundled-pair problems")
    parser.add_argument("--rewrite-share", type=float, default=1 / 3, help="share of escalated steps the target rewrites")
    parser.add_argument("--no-compile", action="store_true", help="capture the decode step uncompiled")
    parser.add_argument("--skip-hf", action="store_true", help="no HF generate rows (they take minutes on the GPU: compiling)")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    plan = Plan.for_args(args)
    sections = set(args.sections.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "cpu"
    results: dict[str, Any] = {"device": device, "dtype": str(plan.dtype).removeprefix("torch."), "date": time.strftime("%Y-%m-%d"),
                               "torch": torch.__version__, "smoke": args.smoke}  # fmt: skip

    def save() -> None:
        save_results(args.out, results, markdown(results))

    def publish(section: str) -> Callable[[dict[str, Any]], None]:
        def save_section(partial: dict[str, Any]) -> None:
            results[section] = partial
            save()

        return save_section

    if sections & {"decode", "passes", "pair", "warmup"}:
        engines, reports = build_engines(plan)
        if "warmup" in sections:
            results["warmup"] = warmup_section(engines, reports)
            save()
        if sections & {"decode", "pair"}:
            results["copy_bandwidth_gbs"] = copy_bandwidth(plan) / 1e9
            results["decode"] = decode_section(plan, engines, results["copy_bandwidth_gbs"] * 1e9)
            save()
        if sections & {"passes", "pair"}:
            results["passes"] = passes_section(plan, engines)
            save()
        if "pair" in sections:
            pair_section(plan, engines, results["decode"], results["passes"], publish("pair"))
        del engines
    if "bundled" in sections:
        bundled_section(plan, publish("bundled"))
    if "window" in sections:
        results["window"] = window_section(plan)
        save()
    results["goals"] = judge_goals(results)
    save()
    for goal in results["goals"]:
        log(f"goal {goal['goal']}: {goal['figure']} -> {goal['verdict']}")
    log(f"results in {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
