"""Plain-text views of step records, for terminals and examples."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_confspec.records import Decision, RunSummary, StepRecord

SHORT_DECISION = {
    "accepted_by_draft": "draft ok",
    "accepted_by_target": "target ok",
    "rejected_by_draft": "draft rejected",
    "rejected_by_target": "target rejected",
    "unverified": "unverified",
}


_HEADER = f"{'step':>4}  {'writer':<6}  {'decision':<15}  {'conf':>5}  {'ms':>7}  text"


def format_step_header() -> str:
    return f"{_HEADER}\n{'-' * len(_HEADER)}"


def format_step_row(record: StepRecord, *, text_width: int = 40) -> str:
    """One step: index, writer, decision, draft confidence, time, and the start of its text; a
    rewrite shows the rejected text before it, or says that it is the same text."""
    confidence = f"{record.draft_confidence:.2f}" if record.draft_confidence is not None else "-"
    t = record.times
    millis = 1000 * (t.draft_write + t.draft_verify + t.target_verify + t.target_write)
    text = _clip(record.text, text_width)
    if record.identical_rewrite:
        text += " (rewritten identically)"
    elif record.regenerated and record.rejected_text is not None:
        text = f"{_clip(record.rejected_text, text_width)} -> {text}"
    return (
        f"{record.index:>4}  {record.writer.value:<6}  {SHORT_DECISION[record.decision.value]:<15}  "
        f"{confidence:>5}  {millis:>7.1f}  {text}"
    )


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_step_table(records: Sequence[StepRecord], *, text_width: int = 40) -> str:
    """A compact table: step, writer, decision, draft confidence, time, and the step's text."""
    return "\n".join([format_step_header(), *(format_step_row(r, text_width=text_width) for r in records)])


def format_outcome(summary: RunSummary) -> str:
    """What became of the draft's steps, each figure naming what it counts.

    "Kept" counts steps kept on either model's verdict, so it can read 100% beside escalations;
    the line says how many the draft's own verdict kept and what the target did with the rest.
    """
    decided = summary.steps_by_decision
    proposed = summary.draft_steps_proposed
    steps = f"{summary.n_steps} step{'' if summary.n_steps == 1 else 's'}"
    if not proposed:
        return f"{steps}, none of them judged ({summary.mode})"
    by_draft = decided[Decision.ACCEPTED_BY_DRAFT.value]
    by_target = decided[Decision.ACCEPTED_BY_TARGET.value]
    target_rejected = decided[Decision.REJECTED_BY_TARGET.value]
    draft_rejected = decided[Decision.REJECTED_BY_DRAFT.value]
    line = (
        f"{steps}, {proposed} judged: {by_draft} kept on the draft's own verdict, "
        f"{by_target + target_rejected} escalated to the target ({by_target} kept, {target_rejected} rewritten)"
    )
    if draft_rejected:
        line += f", {draft_rejected} rewritten on the draft's own rejection"
    if summary.identical_rewrites:
        line += f", {summary.identical_rewrites} of the rewrites identical to the rejected step"
    return line + f"; kept in all {by_draft + by_target} of {proposed} ({(by_draft + by_target) / proposed:.0%})"
