"""PNG charts for `confspec eval` (matplotlib, imported only when a chart is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from langchain_confspec.evaluation import Calibration, ModeReport


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(reports: Sequence[ModeReport], setting: str, reference: ModeReport | None, path: Path) -> Path:
    """Accuracy against speedup, one point per swept value, with the target's accuracy for scale."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    xs = [r.speedup or 0.0 for r in reports]
    ys = [100 * r.accuracy for r in reports]
    axes.plot(xs, ys, marker="o")
    for r, x, y in zip(reports, xs, ys):
        axes.annotate(f"{r.settings.get(setting)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if reference is not None:
        axes.axhline(100 * reference.accuracy, color="grey", linestyle="--", label="target_only accuracy")
        axes.legend()
    axes.set_xlabel("speedup over target_only (x)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"confspec: accuracy vs speedup, sweeping {setting}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_reliability(calibration: Calibration, path: Path, against: str = "target", bins: int = 10) -> Path:
    """Share of right steps per bin of the draft's acceptance probability."""
    plt = _pyplot()
    rows = calibration.reliability(against, bins)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    axes.bar(
        [(r["low"] + r["high"]) / 2 for r in rows],
        [r["fraction_right"] for r in rows],
        width=1 / bins * 0.9,
        alpha=0.7,
        label="steps right",
    )
    for r in rows:
        axes.annotate(str(int(r["count"])), ((r["low"] + r["high"]) / 2, r["fraction_right"]), ha="center", fontsize=7)
    auc = calibration.auroc(against)
    label = "the target's verdict" if against == "target" else "ground truth"
    axes.set_title(f"draft verification (AUROC {'n/a' if auc is None else f'{auc:.3f}'})")
    axes.set_xlabel(f"draft P(accept); right = {label}")
    axes.set_ylabel("fraction of steps right")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
