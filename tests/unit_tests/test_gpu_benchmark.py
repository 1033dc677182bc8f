"""The benchmarks' smoke modes: their own code, on tiny CPU models, so they never rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def smoke_results(script: str, out: Path, *flags: str) -> dict[str, Any]:
    """Run `benchmarks/<script> --smoke`; the results.json it wrote to `out`."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out), *flags],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_the_gpu_benchmark_runs_every_section_in_smoke_mode(tmp_path: Path) -> None:
    results = smoke_results("gpu.py", tmp_path)
    assert {"decode", "passes", "pair", "bundled", "warmup", "window", "goals"} <= set(results)
    for row in results["decode"]:
        assert 0 < row["bare_graph_step_ms"] and 0 < row["engine_graphs_ms"] and 0 < row["engine_off_ms"]
        assert row["context"] > 0 and row["rows"] >= 1  # every row says what it measured
        assert row["hf_eager_ms"] > 0
        bandwidth = results["copy_bandwidth_gbs"] * 1e9  # the floor is read at the rate measured here
        assert row["floor_ms"] == pytest.approx(1000 * row["weights_gib"] * 2**30 / bandwidth)
    window = {r["run"]: r for r in results["window"]}
    assert window["long window"]["context"] > window["short window"]["context"] and window["defaults"]["rows"] > 1
    verdicts = {g["goal"]: g["verdict"] for g in results["goals"]}
    assert len(verdicts) == 6 and set(verdicts.values()) <= {"met", "not met", "not measured"}
    assert verdicts["7B decode <= 7.9 ms/token"] == "not measured"  # no 7B in smoke mode: never judged on nothing
    assert verdicts["confspec >= 2.24x target_only at 70% kept"] != "not measured"
    assert {r["tokens"] for r in results["passes"]} == {8, 64, 300}
    patterns = results["pair"]["patterns"]
    for pattern in patterns:  # the scripted acceptance pattern is the one that ran
        assert pattern["kept_by_draft"] + pattern["escalated"] == pattern["steps"]
        assert abs(pattern["kept_by_draft"] / pattern["steps"] - pattern["draft_keeps"]) <= 1 / pattern["steps"]
        assert pattern["predicted_seconds"] > 0 and pattern["seconds"] > 0
    assert [p["kept_by_draft"] for p in patterns] == sorted(p["kept_by_draft"] for p in patterns)
    bundled = results["bundled"]
    for row in bundled["rows"]:  # the graph path (rehearsed) answers exactly as the dynamic one
        assert row["identical_to_off"] == bundled["problems"], row
    right = {row["mode"]: row["right"] for row in bundled["rows"]}  # token speculation, either way, is the target's text
    assert right["target_only"] == right["target_only+tokens"] == right["target_only+tokens, depth 4"]
    markdown = (tmp_path / "results.md").read_text()
    for heading in ("## Decode", "## Multi-token passes", "fixed acceptance", "## The bundled pair", "## Warm-up", "## Goals"):
        assert heading in markdown


def test_skipping_hf_keeps_the_engine_rows_and_the_pair_speedups(tmp_path: Path) -> None:
    results = smoke_results("gpu.py", tmp_path, "--sections", "decode,pair", "--skip-hf")
    assert all(row["hf_eager_ms"] is None and row["hf_static_ms"] is None for row in results["decode"])
    assert list(results["pair"]["baselines_seconds"]) == ["target_only (fast path)"]
    assert [p["draft_keeps"] for p in results["pair"]["patterns"]] == [0.5, 0.7, 0.9]
    assert "| target_only (fast path) |" in (tmp_path / "results.md").read_text()


def test_the_batching_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    rows = smoke_results("batching.py", tmp_path)["rows"]
    assert [row["concurrent"] for row in rows] == [1, 4]
    assert all(row["same_answers"] and row["same_share"] == 1.0 for row in rows)  # fp32: batched answers are the answers alone
    assert rows[1]["mean_batch_size"] > 1 and rows[0]["mean_batch_size"] == 1
    assert "| tiny pair | 4 |" in (tmp_path / "results.md").read_text()


def test_the_device_session_script_runs_both_parts_in_smoke_mode(tmp_path: Path) -> None:
    """`gpu_session.sh`, what a short GPU lease runs, never meets a flag its benchmarks refuse."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    for part in ("1", "2"):
        run = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), part, "--smoke"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
    logs = (tmp_path / "log1.txt").read_text() + (tmp_path / "log2.txt").read_text()
    for section in ("pair", "bundled", "batching", "shapes"):
        assert f"== {section} exit 0" in logs, logs[-3000:]
    pair = json.loads((tmp_path / "pair" / "results.json").read_text())
    assert len(pair["pair"]["patterns"]) == 3 and pair["decode"][0]["hf_eager_ms"] is None  # --skip-hf reached it
    assert list(pair["pair"]["baselines_seconds"]) == ["target_only (fast path)"]
    assert len(json.loads((tmp_path / "bundled" / "results.json").read_text())["bundled"]["rows"]) == 7
    workloads = {row["workload"] for row in json.loads((tmp_path / "batching" / "results.json").read_text())["rows"]}
    assert {"tiny-a/tiny-b target_only", "tiny-a/tiny-b confspec, draft keeps 70%", "tiny pair"} == workloads
    assert "passes" in json.loads((tmp_path / "shapes" / "results.json").read_text())


def test_the_rewrites_benchmark_runs_in_smoke_mode() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rewrites.py"), "--smoke"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "same answers: True" in run.stdout and "| from the rejected step |" in run.stdout


def test_a_run_killed_while_saving_leaves_the_last_results_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from result_files import save_results

    save_results(tmp_path, {"rows": [1, 2]}, "two rows\n")
    real_write_text = Path.write_text

    def killed_halfway(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # the lease ends here

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_results(tmp_path, {"rows": [1, 2, 3]}, "three rows\n")
    monkeypatch.undo()
    assert json.loads((tmp_path / "results.json").read_text()) == {"rows": [1, 2]}
    assert (tmp_path / "results.md").read_text() == "two rows\n"
    save_results(tmp_path, {"rows": [1, 2, 3]}, "three rows\n")  # the next save replaces the half-written file
    assert json.loads((tmp_path / "results.json").read_text()) == {"rows": [1, 2, 3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]
