"""PNG charts for `confspec eval` (matplotlib, imported only when a chart is drawn).

Each chart has a function that draws it (for tests and notebooks) and one that saves it.
Legends sit below the axes, where they cannot hide a bar, a point or a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_confspec.evaluation.harness import Calibration, ModeReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REFERENCES = {"target": "the target's verdict", "truth": "ground truth"}


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path


def sweep_figure(reports: Sequence[ModeReport], setting: str, reference: ModeReport | None) -> Figure:
    """Accuracy against speedup, one point per swept value, with the target's accuracy for scale."""
    figure, axes = _pyplot().subplots(figsize=(6, 4.6), layout="constrained")
    xs = [r.speedup or 0.0 for r in reports]
    ys = [100 * r.accuracy for r in reports]
    axes.plot(xs, ys, marker="o", label=f"confspec at each {setting}")
    for r, x, y in zip(reports, xs, ys):
        axes.annotate(f"{r.settings.get(setting)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if reference is not None:
        axes.axhline(100 * reference.accuracy, color="grey", linestyle="--", label="target_only accuracy")
    axes.set_xlabel("speedup over target_only (x)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"confspec: accuracy vs speedup, sweeping {setting}")
    figure.legend(loc="outside lower center", ncol=2, frameon=False)
    return figure


def plot_sweep(reports: Sequence[ModeReport], setting: str, reference: ModeReport | None, path: Path) -> Path:
    return _save(sweep_figure(reports, setting, reference), path)


def reliability_figure(calibration: Calibration, against: str = "target", bins: int = 10) -> Figure:
    """Share of right steps per bin of the draft's acceptance probability, "right" meaning
    what `against` says (the target's verdict, or ground truth); each bar's count above it."""
    rows = calibration.reliability(against, bins)
    figure, axes = _pyplot().subplots(figsize=(5, 5.6), layout="constrained")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    axes.bar(centres, [r["fraction_right"] for r in rows], width=1 / bins * 0.9, alpha=0.7, label="share of steps right (count above)")
    for centre, r in zip(centres, rows):
        axes.annotate(
            str(int(r["count"])), (centre, r["fraction_right"]), textcoords="offset points", xytext=(0, 2),
            ha="center", va="bottom", fontsize=7,
        )
    auc = calibration.auroc(against)
    steps = len(calibration.labelled(against)[1])
    axes.set_title(
        f"Draft verdicts against {REFERENCES[against]}\nAUROC {'n/a' if auc is None else f'{auc:.3f}'} over {steps:,} steps"
    )
    axes.set_xlabel("draft P(accept)")
    axes.set_ylabel(f"share of steps right, by {REFERENCES[against]}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.1)
    figure.legend(loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    return figure


def plot_reliability(calibration: Calibration, path: Path, against: str = "target", bins: int = 10) -> Path:
    return _save(reliability_figure(calibration, against, bins), path)
