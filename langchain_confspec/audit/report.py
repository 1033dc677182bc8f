"""A self-contained HTML page from audit logs: each answer's steps coloured by their fate, and
the figures across runs (acceptance, escalation, draft confidences, where the time went,
the time saved against the target alone).

No scripts, no external files: the page is HTML with inline CSS and SVG, so it can be mailed,
archived, or opened from disk.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from langchain_confspec.audit.display import SHORT_DECISION, format_outcome
from langchain_confspec.audit.log import AuditEntry
from langchain_confspec.config import Mode
from langchain_confspec.records import Decision, RunSummary, StepRecord, Writer

_FATES = {
    Decision.ACCEPTED_BY_DRAFT: ("fate-draft", "kept on the draft's verdict"),
    Decision.ACCEPTED_BY_TARGET: ("fate-target", "kept on the target's verdict"),
    Decision.REJECTED_BY_DRAFT: ("fate-draft-rejected", "rewritten by the target (draft rejected)"),
    Decision.REJECTED_BY_TARGET: ("fate-target-rejected", "rewritten by the target (target rejected)"),
    Decision.UNVERIFIED: ("fate-unverified", "not verified"),
}
_PHASES = (("draft_write", "draft writing"), ("draft_verify", "draft verifying"), ("target_verify", "target verifying"), ("target_write", "target writing"))

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1, h2 { font-weight: 600; } table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; }
.figures td:nth-child(2) { text-align: right; font-variant-numeric: tabular-nums; }
.run { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.run-meta { color: #666; font-size: .85em; }
.run-qa { margin: .3em 0; } .run-qa .label { color: #666; font-size: .85em; display: inline-block; min-width: 5.5em; }
.step { display: flex; gap: 1em; padding: .25em .5em; margin: .2em 0; border-radius: 4px; white-space: pre-wrap; }
.step .conf { min-width: 3em; font-variant-numeric: tabular-nums; color: #444; }
.step .fate { min-width: 8.5em; color: #555; font-size: .85em; }
.fate-draft { background: #dcf5dc; } .fate-target { background: #dce8f8; }
.fate-draft-rejected { background: #fde6cc; } .fate-target-rejected { background: #f6d0e4; }
.fate-unverified { background: #eee; }
.note { color: #555; font-size: .85em; max-width: 45em; }
.rejected { text-decoration: line-through; color: #a33; display: block; }
.same { color: #777; font-style: italic; display: block; }
.legend span { display: inline-block; padding: .1em .6em; margin-right: .5em; border-radius: 4px; }
"""


@dataclass
class RunView:
    run_id: str
    parent_run_id: str | None = None
    tags: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    summary: RunSummary | None = None
    question: str | None = None

    @property
    def busy_time(self) -> float:
        """Seconds the run spent answering: its wall time less any wait for a slot and warm-up."""
        s = self.summary
        return s.wall_time - s.lock_wait - s.warmup_time if s else 0.0

    @property
    def tokens(self) -> int:
        return sum(step.n_tokens for step in self.steps)


def group_runs(entries: Iterable[AuditEntry]) -> list[RunView]:
    """Entries gathered per model run, in the order the runs started."""
    runs: dict[str, RunView] = {}
    for entry in entries:
        run = runs.setdefault(entry.run_id, RunView(entry.run_id, entry.parent_run_id, entry.tags))
        run.parent_run_id = run.parent_run_id or entry.parent_run_id
        run.question = run.question or entry.question
        if entry.step is not None:
            run.steps.append(entry.step)
        if entry.summary is not None:
            run.summary = entry.summary
    return list(runs.values())


def render_report(entries: Iterable[AuditEntry], *, title: str = "ConfSpec audit report") -> str:
    runs = group_runs(entries)
    steps = [s for run in runs for s in run.steps]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _legend(),
        "<h2>Across runs</h2>",
        _figures(runs, steps),
        "<h3>Draft confidence</h3>",
        _confidence_histogram(steps),
        "<h3>Where the time went</h3>",
        _time_bars(runs),
        f"<h2>Runs ({len(runs)})</h2>",
        *(_run(run) for run in runs),
    ]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def _legend() -> str:
    shown = dict.fromkeys(_FATES.values())
    items = "".join(f'<span class="{css}">{html.escape(label)}</span>' for css, label in shown)
    return f'<p class="legend">{items}</p>'


def _figures(runs: Sequence[RunView], steps: Sequence[StepRecord]) -> str:
    proposed = [s for s in steps if s.decision is not Decision.UNVERIFIED]
    kept_by_draft = sum(s.decision is Decision.ACCEPTED_BY_DRAFT for s in proposed)
    kept = kept_by_draft + sum(s.decision is Decision.ACCEPTED_BY_TARGET for s in proposed)
    escalated = sum(s.escalated for s in proposed)
    saved = estimated_time_saved(runs)
    rows = [
        ("runs", f"{len(runs)}"),
        ("steps", f"{len(steps)}"),
        ("draft steps kept, on either model's verdict", _share(kept, len(proposed))),
        ("kept on the draft's verdict alone", _share(kept_by_draft, len(proposed))),
        ("escalated to the target", _share(escalated, len(proposed))),
        ("rewritten by the target", _share(sum(s.regenerated for s in proposed), len(proposed))),
        ("rewritten identically (the same text again)", _share(sum(s.identical_rewrite for s in proposed), len(proposed))),
        ("wall time", f"{sum(r.summary.wall_time for r in runs if r.summary):.2f} s"),
        ("time saved against the target alone (estimated)", _saved_figure(saved)),
    ]
    cells = "".join(f"<tr><td>{html.escape(name)}</td><td>{value}</td></tr>" for name, value in rows)
    note = f'<p class="note" id="time-saved-note">{html.escape(_saved_note(saved))}</p>'
    return f'<table class="figures" id="figures">{cells}</table>{note}'


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%} ({part}/{whole})" if whole else "n/a"


@dataclass(frozen=True)
class TimeSaved:
    """The target alone against the runs that used the draft, on one cost per answer token."""

    seconds: float
    target_alone: float
    runs_time: float
    measured: bool
    """True when the cost comes from target_only runs in the logs; False when from the steps
    the target wrote, which leaves out its reading of each prompt (so the target alone, and
    the saving, come out low)."""


def estimated_time_saved(runs: Sequence[RunView]) -> TimeSaved | None:
    """What the target alone would have taken for the runs that used the draft, against what
    they took (less any wait for a slot and warm-up, which the target alone would pay too).

    The target's cost per answer token is measured on the logs' target_only runs, prompt
    reading included; without any, on the steps the target wrote here. None when neither
    exists, or no run used the draft.
    """
    timed = [r for r in runs if r.summary is not None]
    references = [r for r in timed if r.summary and r.summary.mode == Mode.TARGET_ONLY.value and r.tokens]
    compared = [r for r in timed if r.summary and r.summary.mode != Mode.TARGET_ONLY.value]
    if not compared:
        return None
    if references:
        per_token = sum(r.busy_time for r in references) / sum(r.tokens for r in references)
    else:
        written = [s for r in compared for s in r.steps if s.writer is Writer.TARGET and s.n_tokens]
        if not written:
            return None
        per_token = sum(s.times.target_write for s in written) / sum(s.n_tokens for s in written)
    alone = sum(r.tokens for r in compared) * per_token
    spent = sum(r.busy_time for r in compared)
    return TimeSaved(alone - spent, alone, spent, measured=bool(references))


def _saved_figure(saved: TimeSaved | None) -> str:
    if saved is None:
        return "n/a"
    if saved.seconds < 0:
        return f"none: {-saved.seconds:.2f} s slower"
    return f"{saved.seconds:.2f} s ({saved.seconds / saved.target_alone:.0%})"


def _saved_note(saved: TimeSaved | None) -> str:
    if saved is None:
        return (
            "Time saved: not estimated, since no run used the draft, or the target wrote no step and no "
            "target_only run is in these logs to measure its cost."
        )
    figures = f"The runs that used the draft took {saved.runs_time:.2f} s; the target alone, an estimated {saved.target_alone:.2f} s"
    if saved.measured:
        return f"{figures}, at the cost per answer token of the target_only runs in these logs, prompt reading included."
    return (
        f"{figures}, at the target's cost per token on the steps it rewrote here. That cost leaves out the target "
        "reading each prompt, so the estimate of the target alone is low, and can fall below the runs' own time "
        "when the saving is small. Log some calls with mode=\"target_only\" beside them to measure it instead."
    )


def _confidence_histogram(steps: Sequence[StepRecord], bins: int = 10) -> str:
    """Bars of how many steps the draft judged at each acceptance probability."""
    values = [s.draft_confidence if s.draft_verdict else 1 - s.draft_confidence for s in steps if s.draft_confidence is not None and s.draft_verdict is not None]
    if not values:
        return '<p id="confidence-histogram">No step was judged by the draft.</p>'
    counts = [0] * bins
    for value in values:
        counts[min(int(value * bins), bins - 1)] += 1
    width, height, top = 400, 120, max(counts)
    bar = width / bins
    bars = "".join(
        f'<rect x="{i * bar + 1:.1f}" y="{height - c / top * height:.1f}" width="{bar - 2:.1f}" '
        f'height="{c / top * height:.1f}" fill="#5a8f5a"><title>{i / bins:.1f}-{(i + 1) / bins:.1f}: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    axis = f'<text x="0" y="{height + 14}" font-size="11">0 (reject)</text><text x="{width - 60}" y="{height + 14}" font-size="11">1 (accept)</text>'
    return (
        f'<svg id="confidence-histogram" role="img" aria-label="histogram of draft acceptance probabilities" '
        f'width="{width}" height="{height + 20}" viewBox="0 0 {width} {height + 20}">{bars}{axis}</svg>'
    )


def _time_bars(runs: Sequence[RunView]) -> str:
    totals: dict[str, float] = defaultdict(float)
    for run in runs:
        for step in run.steps:
            for name, _ in _PHASES:
                totals[name] += getattr(step.times, name)
    whole = sum(totals.values())
    if not whole:
        return '<p id="time-split">No time recorded.</p>'
    colours = ("#7fb37f", "#b5d6b5", "#8fb0e0", "#e8a868")
    x, parts, legend = 0.0, [], []
    for (name, label), colour in zip(_PHASES, colours, strict=True):
        share = totals[name] / whole
        parts.append(f'<rect x="{x * 400:.1f}" y="0" width="{share * 400:.1f}" height="20" fill="{colour}"><title>{label}</title></rect>')
        legend.append(f'<tr><td style="color:{colour}">&#9632;</td><td>{label}</td><td>{totals[name]:.2f} s ({share:.0%})</td></tr>')
        x += share
    return f'<svg id="time-split" width="400" height="20">{"".join(parts)}</svg><table>{"".join(legend)}</table>'


def _run(run: RunView) -> str:
    lines = []
    if run.question is not None:
        lines.append(_qa("Question", run.question))
    if run.steps:
        finished = run.summary is not None and run.summary.finish_reason == "stop"
        last = run.steps[-1].text
        lines.append(_qa("Answer", _ANSWER_MARK.sub("", last)) if finished else _qa("Last step", last))
    meta = []
    if run.summary:
        s = run.summary
        meta.append(f"{s.mode}, {s.wall_time:.2f} s, finish: {s.finish_reason}")
        meta.append(format_outcome(s))
    tags = [t for t in run.tags if not _LANGCHAIN_TAG.match(t)]
    if tags:
        meta.append("tags: " + ", ".join(tags))
    meta.append(f"run {run.run_id}" + (f" in chain run {run.parent_run_id}" if run.parent_run_id else ""))
    steps = "".join(_step(step) for step in run.steps)
    return (
        f'<section class="run">{"".join(lines)}<div class="run-meta">{html.escape(" · ".join(meta))}</div>{steps}</section>'
    )


_ANSWER_MARK = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)
_LANGCHAIN_TAG = re.compile(r"(seq:step|map:key):")
"""Tags LangChain gives a runnable for its place in a sequence or a map: bookkeeping, not the user's."""


def _qa(label: str, text: str) -> str:
    return f'<p class="run-qa"><span class="label">{label}</span> {html.escape(" ".join(text.split()))}</p>'


def _step(step: StepRecord) -> str:
    css, label = _FATES[step.decision]
    confidence = "" if step.draft_confidence is None else f"{step.draft_confidence:.2f}"
    rejected = f'<span class="rejected">{html.escape(step.rejected_text.rstrip())}</span>' if step.rejected_text else ""
    if step.identical_rewrite:
        rejected = '<span class="same">rewritten identically:</span>'  # nothing changed: no strike-through
    return (
        f'<div class="step {css}" title="{html.escape(label)}"><span class="conf">{confidence}</span>'
        f'<span class="fate">{SHORT_DECISION[step.decision.value]}</span>'
        f"<span>{rejected}{html.escape(step.text.rstrip())}</span></div>"
    )
