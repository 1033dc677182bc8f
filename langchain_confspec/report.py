"""A self-contained HTML page from audit logs: each answer's steps coloured by their fate, and
the figures across runs (acceptance, escalation, draft confidences, where the time went,
the time saved against the target alone).

No scripts, no external files: the page is HTML with inline CSS and SVG, so it can be mailed,
archived, or opened from disk.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from langchain_confspec.audit import AuditEntry
from langchain_confspec.records import Decision, RunSummary, StepRecord, Writer

_FATES = {
    Decision.ACCEPTED_BY_DRAFT: ("fate-draft", "kept on the draft's verdict"),
    Decision.ACCEPTED_BY_TARGET: ("fate-target", "kept on the target's verdict"),
    Decision.REJECTED_BY_DRAFT: ("fate-rewritten", "rewritten by the target (draft rejected)"),
    Decision.REJECTED_BY_TARGET: ("fate-rewritten", "rewritten by the target (target rejected)"),
    Decision.UNVERIFIED: ("fate-unverified", "not verified"),
}
_PHASES = (("draft_write", "draft writing"), ("draft_verify", "draft verifying"), ("target_verify", "target verifying"), ("target_write", "target writing"))

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1, h2 { font-weight: 600; } table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; }
.figures td:nth-child(2) { text-align: right; font-variant-numeric: tabular-nums; }
.run { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.run-meta { color: #666; font-size: .85em; }
.step { display: flex; gap: 1em; padding: .25em .5em; margin: .2em 0; border-radius: 4px; white-space: pre-wrap; }
.step .conf { min-width: 4.5em; font-variant-numeric: tabular-nums; color: #444; }
.fate-draft { background: #dcf5dc; } .fate-target { background: #dce8f8; }
.fate-rewritten { background: #fde6cc; } .fate-unverified { background: #eee; }
.rejected { text-decoration: line-through; color: #a33; display: block; }
.legend span { display: inline-block; padding: .1em .6em; margin-right: .5em; border-radius: 4px; }
"""


@dataclass
class RunView:
    run_id: str
    parent_run_id: str | None = None
    tags: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    summary: RunSummary | None = None


def group_runs(entries: Iterable[AuditEntry]) -> list[RunView]:
    """Entries gathered per model run, in the order the runs started."""
    runs: dict[str, RunView] = {}
    for entry in entries:
        run = runs.setdefault(entry.run_id, RunView(entry.run_id, entry.parent_run_id, entry.tags))
        run.parent_run_id = run.parent_run_id or entry.parent_run_id
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
        ("draft steps kept (acceptance)", _share(kept, len(proposed))),
        ("kept on the draft's verdict alone", _share(kept_by_draft, len(proposed))),
        ("escalated to the target", _share(escalated, len(proposed))),
        ("rewritten by the target", _share(sum(s.regenerated for s in proposed), len(proposed))),
        ("wall time", f"{sum(r.summary.wall_time for r in runs if r.summary):.2f} s"),
        ("estimated time saved against the target alone", "n/a" if saved is None else f"{saved:.2f} s"),
    ]
    cells = "".join(f"<tr><td>{html.escape(name)}</td><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="figures" id="figures">{cells}</table>'


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%} ({part}/{whole})" if whole else "n/a"


def estimated_time_saved(runs: Sequence[RunView]) -> float | None:
    """What the target alone would have taken, minus what the runs took.

    The target's cost per token is measured on the steps it wrote in these runs; the target
    alone would have written every token of every answer at that cost. None when the
    target wrote nothing to measure.
    """
    target_tokens = sum(s.n_tokens for r in runs for s in r.steps if s.writer is Writer.TARGET)
    target_seconds = sum(s.times.target_write for r in runs for s in r.steps if s.writer is Writer.TARGET)
    timed = [r for r in runs if r.summary is not None]
    if not target_tokens or not timed:
        return None
    per_token = target_seconds / target_tokens
    alone = sum(s.n_tokens for r in timed for s in r.steps) * per_token
    return alone - sum(r.summary.wall_time for r in timed if r.summary)


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
    meta = [f"run {html.escape(run.run_id)}"]
    if run.parent_run_id:
        meta.append(f"in chain run {html.escape(run.parent_run_id)}")
    if run.tags:
        meta.append("tags: " + html.escape(", ".join(run.tags)))
    if run.summary:
        meta.append(f"{run.summary.mode}, {run.summary.wall_time:.2f} s, finish: {run.summary.finish_reason}")
    steps = "".join(_step(step) for step in run.steps)
    return f'<section class="run"><div class="run-meta">{" · ".join(meta)}</div>{steps}</section>'


def _step(step: StepRecord) -> str:
    css, label = _FATES[step.decision]
    confidence = "" if step.draft_confidence is None else f"{step.draft_confidence:.2f}"
    rejected = f'<span class="rejected">{html.escape(step.rejected_text.rstrip())}</span>' if step.rejected_text else ""
    return (
        f'<div class="step {css}" title="{html.escape(label)}"><span class="conf">{confidence}</span>'
        f"<span>{rejected}{html.escape(step.text.rstrip())}</span></div>"
    )
