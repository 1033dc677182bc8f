"""`confspec eval`: accuracy, speed and verification quality of several modes in one run.

Problems come from the built-in synthetic set or a JSONL file of `{"question", "answer"}`
(GSM8K's `#### 42` answers work). Every mode answers every problem in the same process, so
speedups are ratios measured side by side. A calibration pass asks the draft *and* the
target about every draft step, which gives the draft's confidence against a reference verdict
(the target's, or ground truth where the data set can check a step) for AUROC and the
reliability diagram.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from langchain_confspec.config import Mode, SpecConfig, build_config
from langchain_confspec.demo.problems import extract_answer, make_problems
from langchain_confspec.engine.engine import ConfSpecEngine
from langchain_confspec.engine.outputs import RunResult
from langchain_confspec.records import Writer

AnswerExtractor = Callable[[str], "str | None"]
StepChecker = Callable[[str], "bool | None"]


@dataclass(frozen=True)
class EvalItem:
    question: str
    answer: str


def load_jsonl(path: str | Path, extract: AnswerExtractor = extract_answer) -> list[EvalItem]:
    """Read `{"question", "answer"}` lines; a GSM8K-style answer yields the number after `####`.

    Refuses, naming the file and line, whatever would make the evaluation quietly wrong: a line
    that is not a JSON object, a missing or empty question, an answer `extract` cannot read
    (it could never match a model's answer), and a file with no problems at all.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            items.append(_parse_item(line, f"{path}:{number}", extract))
    if not items:
        raise ValueError(f"{path}: no problems in it (one JSON object per line, with 'question' and 'answer')")
    return items


def _parse_item(line: str, where: str, extract: AnswerExtractor) -> EvalItem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict) or "question" not in row or "answer" not in row:
        raise ValueError(f"{where}: each line needs a JSON object with 'question' and 'answer'")
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: the question must be non-empty text, got {question!r}")
    answer = expected_answer(str(row["answer"]), extract)
    if answer is None:
        raise ValueError(
            f"{where}: cannot read a final answer from {row['answer']!r}: answers are compared as numbers "
            "(write 14, or a solution ending in '#### 14'), or pass your own `extract`"
        )
    return EvalItem(question, answer)


def expected_answer(answer: str, extract: AnswerExtractor = extract_answer) -> str | None:
    """A data set's answer as `extract` reads a model's: from a solution (`... #### 42`) or
    written bare (`42`, `1,200`). None when it reads nothing, so no model answer could match."""
    return extract(answer) or extract(f"Answer: {answer.strip()}")


def builtin_items(count: int = 500, seed: int = 10_000) -> list[EvalItem]:
    """Held-out demo problems (the demo pair trains on seeds below 10,000)."""
    if count < 1:
        raise ValueError(f"the number of problems must be at least 1, got {count}")
    return [EvalItem(p.question, str(p.answer)) for p in make_problems(count, seed)]


@dataclass
class ModeReport:
    """One mode's totals over the evaluation set."""

    mode: str
    settings: dict[str, Any]
    n: int = 0
    correct: int = 0
    wall_time: float = 0.0
    tokens: dict[str, int] = field(default_factory=lambda: {w.value: 0 for w in Writer})
    forward_passes: dict[str, int] = field(default_factory=lambda: {w.value: 0 for w in Writer})
    steps: int = 0
    escalated: int = 0
    rejected: int = 0
    accepted_by_draft: int = 0
    proposed: int = 0
    spec_accepted: int = 0
    spec_tokens: int = 0
    spec_passes: int = 0
    speedup: float | None = None
    measures_steps: bool = True
    """False for Hugging Face assisted generation, which reports answers and times only."""

    @property
    def accepted_per_target_pass(self) -> float | None:
        """Token speculation: tokens the target gained per verifying pass."""
        return self.spec_tokens / self.spec_passes if self.spec_passes else None

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def add(self, result: RunResult, correct: bool) -> None:
        summary = result.summary
        self.add_answer(summary.wall_time - summary.lock_wait - summary.warmup_time, correct)
        for writer, count in result.output_tokens_by_writer.items():
            self.tokens[writer] += count
        self.forward_passes["draft"] += result.summary.draft.forward_passes
        self.forward_passes["target"] += result.summary.target.forward_passes
        self.steps += len(result.records)
        self.escalated += sum(r.escalated for r in result.records)
        self.rejected += sum(r.regenerated for r in result.records)
        self.accepted_by_draft += result.summary.steps_by_decision["accepted_by_draft"]
        for record in result.records:
            if record.token_speculation is not None:
                self.proposed += record.token_speculation.proposed
                self.spec_accepted += record.token_speculation.accepted
                self.spec_tokens += record.token_speculation.tokens
                self.spec_passes += record.token_speculation.target_passes

    def add_answer(self, wall_time: float, correct: bool) -> None:
        self.n += 1
        self.correct += correct
        self.wall_time += wall_time

    def as_row(self) -> dict[str, Any]:
        """Every figure by name; None for what this mode does not measure."""
        row = {
            "mode": self.mode,
            **{k: v for k, v in asdict(self).items() if k not in ("mode",)},
            "accuracy": self.accuracy,
            "escalation_rate": self.escalated / self.steps if self.steps else 0.0,
            "rejection_rate": self.rejected / self.steps if self.steps else 0.0,
            "draft_only_acceptance": self.accepted_by_draft / self.steps if self.steps else 0.0,
            "accepted_per_target_pass": self.accepted_per_target_pass,
        }
        if not self.measures_steps:
            row.update(dict.fromkeys(_STEP_FIGURES))
        return row


_STEP_FIGURES = (
    "tokens", "forward_passes", "steps", "escalated", "rejected", "accepted_by_draft", "proposed", "spec_accepted",
    "spec_tokens", "spec_passes", "escalation_rate", "rejection_rate", "draft_only_acceptance",
)


@dataclass
class Calibration:
    """The draft's acceptance probability for each judged step, with two reference labels:
    the target's verdict (every step) and ground truth (steps the data set can check)."""

    p_accept: list[float] = field(default_factory=list)
    target_labels: list[bool] = field(default_factory=list)
    truth_labels: list[bool | None] = field(default_factory=list)

    def labelled(self, against: str) -> tuple[list[float], list[bool]]:
        labels = self.target_labels if against == "target" else self.truth_labels
        pairs = [(p, label) for p, label in zip(self.p_accept, labels) if label is not None]
        return [p for p, _ in pairs], [bool(label) for _, label in pairs]

    def auroc(self, against: str = "target") -> float | None:
        return auroc(*self.labelled(against))

    def reliability(self, against: str = "target", bins: int = 10) -> list[dict[str, float]]:
        scores, labels = self.labelled(against)
        rows = []
        for b in range(bins):
            low, high = b / bins, (b + 1) / bins
            members = [right for p, right in zip(scores, labels) if low <= p < high or (b == bins - 1 and p == 1.0)]
            if members:
                rows.append({"low": low, "high": high, "count": len(members), "fraction_right": sum(members) / len(members)})
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            against: {
                "steps": len(self.labelled(against)[1]),
                "auroc": self.auroc(against),
                "reliability": self.reliability(against),
            }
            for against in ("target", "truth")
        }


@dataclass
class EvalReport:
    modes: list[ModeReport]
    calibration: Calibration
    problems: int
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "problems": self.problems,
            "interrupted": self.interrupted,
            "modes": [m.as_row() for m in self.modes],
            "calibration": self.calibration.summary(),
        }

    def markdown(self) -> str:
        header = (
            "| mode | settings | accuracy | wall s | speedup vs target_only | draft tokens | target tokens | "
            "steps | accepted by draft alone | escalated | rejected | draft passes | target passes | "
            "tokens per target pass |"
        )
        lines = [header, "|" + "---|" * 14]
        for m in self.modes:
            row = m.as_row()
            settings = ", ".join(f"{k}={v}" for k, v in m.settings.items() if k != "token_speculation") or "-"
            tokens, passes = row["tokens"] or {}, row["forward_passes"] or {}
            cells = [
                m.mode, settings, f"{m.accuracy:.1%}", f"{m.wall_time:.1f}", _figure(m.speedup, "{:.2f}x"),
                _figure(tokens.get("draft")), _figure(tokens.get("target")), _figure(row["steps"]),
                _figure(row["draft_only_acceptance"], "{:.1%}"), _figure(row["escalation_rate"], "{:.1%}"),
                _figure(row["rejection_rate"], "{:.1%}"), _figure(passes.get("draft")), _figure(passes.get("target")),
                _figure(row["accepted_per_target_pass"], "{:.2f}"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for against, name in (("target", "the target's verdict"), ("truth", "ground truth")):
            auc = self.calibration.auroc(against)
            steps = len(self.calibration.labelled(against)[1])
            lines.append(
                f"Draft verification AUROC against {name}: {'n/a' if auc is None else f'{auc:.3f}'} over {steps} steps."
            )
        return "\n".join(lines)


def _figure(value: float | None, form: str = "{}") -> str:
    """A table cell: "-" for what was not measured."""
    return "-" if value is None else form.format(value)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a right step scores above a wrong one (ties count half)."""
    positives = [s for s, right in zip(scores, labels) if right]
    negatives = [s for s, right in zip(scores, labels) if not right]
    if not positives or not negatives:
        return None
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # 1-based ranks i+1..j
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


HF_ASSISTED = "hf_assisted"
TOKENS_SUFFIX = "+tokens"


@dataclass(frozen=True)
class RunPlan:
    """One configuration to evaluate: a mode plus the settings it overrides.

    `mode=None` stands for Hugging Face assisted generation (`generate(assistant_model=draft)`),
    the token-level baseline users run today.
    """

    mode: Mode | None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str) -> RunPlan:
        """`confspec`, `target_only+tokens` (with token speculation), `hf_assisted`, ..."""
        name = name.strip()
        if name == HF_ASSISTED:
            return cls(None)
        base, tokens, rest = name.partition(TOKENS_SUFFIX)
        if rest:
            raise ValueError(f"unknown mode {name!r}")
        try:
            mode = Mode(base)
        except ValueError:
            choices = ", ".join([m.value for m in Mode] + [HF_ASSISTED])
            raise ValueError(f"unknown mode {name!r}; choose from {choices} (add {TOKENS_SUFFIX} for token speculation)") from None
        return cls(mode, {"token_speculation": True} if tokens else {})

    @property
    def label(self) -> str:
        if self.mode is None:
            return HF_ASSISTED
        return self.mode.value + (TOKENS_SUFFIX if self.settings.get("token_speculation") else "")


ResultHook = Callable[[str, str, RunResult], None]
"""Called with the question, the mode's label and the engine's answer."""


def evaluate(
    engine: ConfSpecEngine,
    items: Sequence[EvalItem],
    plans: Sequence[RunPlan],
    *,
    base: dict[str, Any] | None = None,
    extract: AnswerExtractor = extract_answer,
    check_step: StepChecker | None = None,
    progress: bool = True,
    on_result: ResultHook | None = None,
) -> EvalReport:
    """Answer every item with every plan, plus a calibration pass; Ctrl-C keeps what is done.
    `on_result` sees every answer the engine gives (an audit log, for one)."""
    if not items:
        raise ValueError("no problems to evaluate")
    if not plans:
        raise ValueError("no modes to evaluate")
    base = dict(base or {})
    reports = [ModeReport(plan.label, plan.settings, measures_steps=plan.mode is not None) for plan in plans]
    configs = [build_config(**{**base, **plan.settings, "mode": plan.mode or Mode.TARGET_ONLY}) for plan in plans]
    calibration_config = build_config(
        **{**base, "mode": Mode.CONFSPEC, "accept_threshold": 2.0, "reject_threshold": 2.0}
    )
    calibration = Calibration()
    interrupted = False
    done = 0
    try:
        for done, item in enumerate(_progress(items, enabled=progress), start=1):
            turns = [{"role": "user", "content": item.question}]
            for plan, report, config in zip(plans, reports, configs):
                if plan.mode is None:
                    text, seconds = hf_assisted_generate(engine, turns, config)
                    report.add_answer(seconds, extract(text) == item.answer)
                    continue
                result = engine.generate(turns, config)
                report.add(result, extract(result.text) == item.answer)
                if on_result is not None:
                    on_result(item.question, plan.label, result)
            _calibrate(engine.generate(turns, calibration_config), calibration, check_step)
    except KeyboardInterrupt:
        interrupted = True
        done -= 1
        for report in reports:  # keep only whole problems: every mode answered the same set
            report.n = min(report.n, done)
    _fill_speedups(reports)
    return EvalReport(reports, calibration, problems=done, interrupted=interrupted)


def hf_assisted_generate(engine: ConfSpecEngine, turns: list[dict[str, Any]], config: SpecConfig) -> tuple[str, float]:
    """Hugging Face assisted generation on the same pair: the answer and its wall time."""
    import torch

    if not engine.shared_vocabulary:
        raise ValueError("hf_assisted needs draft and target to share a vocabulary")
    target = engine.target
    prompt = target.render_prompt(turns)
    input_ids = torch.tensor([prompt], device=target.device)
    started = time.perf_counter()
    output = target.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        assistant_model=engine.draft.model,
        max_new_tokens=config.max_tokens,
        do_sample=False,
        eos_token_id=sorted(target.eos_token_ids),
        pad_token_id=target.tokenizer.pad_token_id,
    )
    seconds = time.perf_counter() - started
    return target.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True), seconds


def _calibrate(result: RunResult, calibration: Calibration, check_step: StepChecker | None) -> None:
    for record in result.records:
        if record.draft_verdict is None or record.draft_confidence is None or record.target_verdict is None:
            continue
        judged = record.rejected_text if record.regenerated else record.text
        calibration.p_accept.append(record.draft_confidence if record.draft_verdict else 1.0 - record.draft_confidence)
        calibration.target_labels.append(record.target_verdict)
        calibration.truth_labels.append(check_step(judged) if check_step and judged is not None else None)


def _fill_speedups(reports: list[ModeReport]) -> None:
    reference = next((r for r in reports if r.mode == Mode.TARGET_ONLY.value), None)
    if reference is None or not reference.wall_time:
        return
    for report in reports:
        if report.wall_time:
            report.speedup = reference.wall_time / report.wall_time


def _progress(items: Sequence[EvalItem], *, enabled: bool) -> Iterable[EvalItem]:
    started = time.perf_counter()
    for index, item in enumerate(items, start=1):
        yield item
        if enabled:
            elapsed = time.perf_counter() - started
            width = 30
            filled = int(width * index / len(items))
            eta = elapsed / index * (len(items) - index)
            print(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {index}/{len(items)} {elapsed:5.0f}s eta {eta:5.0f}s",
                end="" if index < len(items) else "\n",
                file=sys.stderr,
                flush=True,
            )


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """`accept_threshold=0.5:0.99:5` -> ("accept_threshold", five evenly spaced values)."""
    name, _, span = spec.partition("=")
    parts = span.split(":")
    if not name or name not in SpecConfig.model_fields or len(parts) not in (2, 3):
        raise ValueError(f"--sweep wants SETTING=START:STOP[:COUNT], got {spec!r}")
    start, stop = float(parts[0]), float(parts[1])
    count = int(parts[2]) if len(parts) == 3 else 5
    if count < 2:
        return name, [start]
    return name, [round(start + (stop - start) * i / (count - 1), 4) for i in range(count)]
