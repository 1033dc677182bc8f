"""`confspec eval` pieces: answers, data files, AUROC, sweeps, and a whole run on tiny models."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from langchain_confspec import ConfSpecEngine, Mode
from langchain_confspec.cli import main as cli_main
from langchain_confspec.config import build_config
from langchain_confspec.demo.problems import (
    check_step,
    corrupt_step,
    extract_answer,
    make_expression,
    make_problems,
)
from langchain_confspec.demo.tools import evaluate as evaluate_expression
from langchain_confspec.evaluation.harness import (
    Calibration,
    EvalItem,
    ModeReport,
    RunPlan,
    auroc,
    evaluate,
    expected_answer,
    load_jsonl,
    parse_sweep,
)


def test_answers_are_read_from_answer_lines_and_gsm8k_marks() -> None:
    assert extract_answer("3 + 4 = 7.\n\nAnswer: 7") == "7"
    assert extract_answer("Natalia sold 48/2 = 24 clips.\n#### 1,200") == "1200"
    assert extract_answer("Answer: 12.0") == "12"
    assert extract_answer("Answer: 2.5") == "2.5"
    assert extract_answer("no final line") is None
    assert extract_answer("Answer: 3\n\nAnswer: 4") == "4"


def test_jsonl_questions_and_gsm8k_answers_load(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(
        json.dumps({"question": "2+2?", "answer": "2+2=4\n#### 4"}) + "\n\n" + json.dumps({"question": "q", "answer": 7}) + "\n"
    )
    assert load_jsonl(path) == [EvalItem("2+2?", "4"), EvalItem("q", "7")]
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="question"):
        load_jsonl(path)


def test_bare_answers_read_as_a_model_answer_would() -> None:
    assert expected_answer("1,200") == "1200"
    assert expected_answer("7.0") == "7"
    assert expected_answer("fourteen") is None
    assert expected_answer("The answer is yes", extract=lambda text: text.rsplit(" ", 1)[-1]) == "yes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"question": "2+2?", "answer": 4}\n{"question": "q", "answer": }', r"set\.jsonl:2: not valid JSON: .*column 29"),
        ('{"question": "2+2?", "answer": 4}\n\n{"question": "q", "answer": "fourteen"}', r"set\.jsonl:3: .*'fourteen'"),
        ('["2+2?", 4]', r"set\.jsonl:1: .*JSON object"),
        ('{"question": " ", "answer": 4}', r"set\.jsonl:1: the question must be non-empty"),
        ("", r"set\.jsonl: no problems"),
        ("\n  \n", r"set\.jsonl: no problems"),
    ],
)
def test_data_that_would_score_silently_wrong_is_refused_by_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


def test_a_data_file_that_is_not_text_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"set\.jsonl: not UTF-8"):
        load_jsonl(path)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--problems", "0"], "at least 1, got 0"),
        (["--data", "{data}"], r"bad\.jsonl:2: not valid JSON"),
        (["--modes", " , "], "--modes names no mode"),
    ],
)
def test_cli_eval_refuses_unusable_problem_sets_before_loading_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "2+2?", "answer": 4}\n{"question": oops}\n')
    arguments = [a.replace("{data}", str(data)) for a in arguments]
    # A draft that does not exist: the data's error must come first, before any model loads.
    code = cli_main(["eval", "--draft", "/nonexistent/draft", "--no-progress", "--out", str(tmp_path / "out"), *arguments])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_no_problems_or_no_modes(tiny_engine: ConfSpecEngine) -> None:
    with pytest.raises(ValueError, match="no problems"):
        evaluate(tiny_engine, [], [RunPlan(Mode.TARGET_ONLY)], progress=False)
    with pytest.raises(ValueError, match="no modes"):
        evaluate(tiny_engine, [EvalItem("2+2?", "4")], [], progress=False)


def test_demo_problems_are_consistent_and_checkable() -> None:
    rng = random.Random(1)
    for problem in make_problems(300, seed=3):
        assert extract_answer(problem.solution) == str(problem.answer)
        assert 0 <= problem.answer < 200
        assert all(step.endswith("\n\n") for step in problem.steps[:-1])
        for step in problem.steps:
            verdict = check_step(step)
            assert verdict in (True, None)
            if verdict:
                assert check_step(corrupt_step(step, rng)) is False


def test_expression_steps_with_the_rest_solve_the_same_expression_one_operation_at_a_time() -> None:
    """Each step's rest is the expression with that operation done; its last step has none."""
    plain_rng, rest_rng, corrupting = random.Random(8), random.Random(8), random.Random(0)
    for n_operations in (1, 2, 3) * 30:
        plain = make_expression(plain_rng, n_operations)
        with_rest = make_expression(rest_rng, n_operations, with_rest=True)
        assert (with_rest.question, with_rest.answer) == (plain.question, plain.answer)
        steps = [step.strip() for step in with_rest.steps[:-1]]
        assert len(steps) == n_operations
        for step, plain_step in zip(steps, plain.steps):
            assert step.split(", so ")[0].rstrip(".") + "." == plain_step.strip()  # the same operation, in the same order
            assert check_step(step) is True
            assert check_step(corrupt_step(step, corrupting)) is False
        for step in steps[:-1]:
            rest = step.split(", so ")[1].rstrip(".")
            assert evaluate_expression(rest) == with_rest.answer
        assert ", so " not in steps[-1]


def test_the_share_of_bare_expressions_is_a_knob_that_leaves_the_held_out_set_alone() -> None:
    """Training can ask for more expressions; the default draw (the held-out set's) is unchanged."""
    def expressions(problems: list) -> int:  # type: ignore[type-arg]
        return sum(" starts with " not in p.steps[0] for p in problems)

    assert make_problems(50, seed=10_000) == make_problems(50, seed=10_000, expression_share=0.3)
    assert expressions(make_problems(400, seed=4, expression_share=0.8)) > 280
    assert expressions(make_problems(400, seed=4)) < 160
    assert expressions(make_problems(20, seed=4, expression_share=0.0)) == 0


def test_auroc_matches_hand_computed_values() -> None:
    assert auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.9, 0.4, 0.6, 0.2], [True, True, False, False]) == 0.75
    assert auroc([0.9], [True]) is None


def test_sweep_specs_parse_and_bad_ones_are_refused() -> None:
    assert parse_sweep("accept_threshold=0.5:0.9:3") == ("accept_threshold", [0.5, 0.7, 0.9])
    with pytest.raises(ValueError, match="SETTING"):
        parse_sweep("no_such_setting=0:1")
    with pytest.raises(ValueError, match="SETTING"):
        parse_sweep("accept_threshold=0.5")


def test_evaluate_counts_every_mode_on_the_same_problems(tiny_engine: ConfSpecEngine) -> None:
    items = [EvalItem(p.question, str(p.answer)) for p in make_problems(3, seed=5)]
    plans = [RunPlan(Mode.TARGET_ONLY), RunPlan(Mode.CONFSPEC), RunPlan(Mode.CONFSPEC, {"accept_threshold": 0.0, "verdict_mass_floor": 0.0})]
    report = evaluate(tiny_engine, items, plans, base={"max_tokens": 16, "max_step_tokens": 8}, progress=False)
    assert [m.n for m in report.modes] == [3, 3, 3]
    target_only, confspec, trusting = report.modes
    for mode in report.modes:  # each speedup is the reference's time over the mode's own
        assert mode.speedup == pytest.approx(target_only.wall_time / mode.wall_time)
    assert target_only.tokens["draft"] == 0 and target_only.forward_passes["draft"] == 0
    assert trusting.escalated == 0
    assert confspec.tokens["draft"] + confspec.tokens["target"] > 0
    assert len(report.calibration.target_labels) == len(report.calibration.p_accept) > 0
    assert "| target_only |" in report.markdown()


def test_ctrl_c_keeps_the_problems_already_done(tiny_engine: ConfSpecEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = tiny_engine.generate

    def interrupt_on_fourth(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_engine, "generate", interrupt_on_fourth)
    items = [EvalItem(p.question, str(p.answer)) for p in make_problems(3, seed=6)]
    report = evaluate(tiny_engine, items, [RunPlan(Mode.TARGET_ONLY), RunPlan(Mode.DRAFT_ONLY)], base={"max_tokens": 8}, progress=False)
    assert report.interrupted
    assert report.problems == 1
    assert [m.n for m in report.modes] == [1, 1]


def test_cli_eval_writes_json_markdown_and_charts(tiny_pair_paths: tuple[Path, Path], tmp_path: Path) -> None:
    draft, target = tiny_pair_paths
    out = tmp_path / "eval"
    code = cli_main(
        ["eval", "--draft", str(draft), "--target", str(target), "--problems", "2", "--no-progress",
         "--sweep", "accept_threshold=0.5:0.9:2", "--set", "max_tokens=12", "--out", str(out)]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["mode"] for m in results["modes"]] == ["target_only", "draft_only", "always_verify", "confspec", "confspec", "confspec"]
    assert all(m["n"] == 2 for m in results["modes"])
    for chart in ("reliability.png", "sweep.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_run_prints_answer_and_step_table(tiny_pair_paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    draft, target = tiny_pair_paths
    assert cli_main(["run", "What is 2 + 2?", "--draft", str(draft), "--target", str(target), "--set", "max_tokens=12"]) == 0
    printed = capsys.readouterr().out
    assert "writer" in printed and "decision" in printed and "speedup" in printed
    assert "kept on the draft's own verdict" in printed and "escalated to the target" in printed


def test_cli_reports_bad_input_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "hi", "--draft", "/nonexistent/draft", "--target", "/nonexistent/target"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plan_names_cover_token_speculation_and_hf_assisted() -> None:
    assert RunPlan.parse("confspec+tokens") == RunPlan(Mode.CONFSPEC, {"token_speculation": True})
    assert RunPlan.parse("target_only").label == "target_only"
    assert RunPlan.parse("hf_assisted").mode is None
    with pytest.raises(ValueError, match="unknown mode"):
        RunPlan.parse("fastest")


def test_one_run_compares_token_level_and_step_level_plans(tiny_engine: ConfSpecEngine) -> None:
    # The "right answer" of each problem is the target's own greedy text, read whole.
    questions = [p.question for p in make_problems(2, seed=7)]
    greedy = [tiny_engine.generate([{"role": "user", "content": q}], build_config(mode="target_only", max_tokens=16)).text for q in questions]
    items = [EvalItem(q, text) for q, text in zip(questions, greedy)]
    names = ["target_only", "target_only+tokens", "hf_assisted", "confspec", "confspec+tokens"]
    report = evaluate(
        tiny_engine, items, [RunPlan.parse(n) for n in names], base={"max_tokens": 16}, extract=lambda text: text, progress=False
    )
    rows = {m.mode: m for m in report.modes}
    assert list(rows) == names
    assert rows["target_only+tokens"].accepted_per_target_pass is not None
    assert rows["target_only"].accepted_per_target_pass is None
    assert rows["hf_assisted"].n == 2 and rows["hf_assisted"].wall_time > 0
    # Greedy token speculation and HF assisted generation both give the target's own answers.
    assert rows["target_only"].correct == rows["target_only+tokens"].correct == rows["hf_assisted"].correct == 2
    assert all(m.speedup is not None for m in report.modes)


def _calibration(seed: int = 3) -> Calibration:
    """Steps whose right-ness grows with the draft's confidence, a third of them checkable, and
    a few unsure steps that were all right (a tall bar where a legend in the corner would sit)."""
    rng = random.Random(seed)
    scores = [x for x in (rng.random() for _ in range(400)) if not 0.1 <= x < 0.2] + [0.12] * 6
    return Calibration(
        p_accept=scores,
        target_labels=[score == 0.12 or rng.random() < score for score in scores],
        truth_labels=[(score == 0.12 or rng.random() < score) if i % 3 == 0 else None for i, score in enumerate(scores)],
    )


def _overlaps(figure: Any, covering: Any, parts: list[Any]) -> list[Any]:
    renderer = figure.canvas.get_renderer()
    box = covering.get_window_extent(renderer)
    return [part for part in parts if box.overlaps(part.get_window_extent(renderer))]


def test_reliability_charts_say_what_they_are_measured_against_and_hide_nothing() -> None:
    pytest.importorskip("matplotlib")
    from langchain_confspec.evaluation.plots import reliability_figure

    calibration = _calibration()
    titles = []
    for against in ("target", "truth"):
        figure = reliability_figure(calibration, against)
        (axes,) = figure.axes
        titles.append(axes.get_title())
        assert f"{len(calibration.labelled(against)[1]):,} steps" in axes.get_title()
        (legend,) = figure.legends
        bars, counts = list(axes.patches), list(axes.texts)
        assert len(bars) == len(counts) == len(calibration.reliability(against)) > 5
        assert not _overlaps(figure, legend, bars + counts)
        assert all(text.get_window_extent().y1 <= axes.get_window_extent().y1 for text in counts)  # counts inside the axes
    assert titles[0] != titles[1]
    assert "the target's verdict" in titles[0] and "ground truth" in titles[1]


def test_the_sweep_chart_legend_hides_no_point_or_label() -> None:
    pytest.importorskip("matplotlib")
    from langchain_confspec.evaluation.plots import sweep_figure

    reports = [ModeReport("confspec", {"accept_threshold": t}, n=10, correct=c, speedup=s) for t, c, s in ((0.6, 8, 1.3), (0.7, 9, 1.2), (0.9, 10, 1.0))]
    reference = ModeReport("target_only", {}, n=10, correct=10, speedup=1.0)
    figure = sweep_figure(reports, "accept_threshold", reference)
    (axes,) = figure.axes
    (legend,) = figure.legends
    assert not _overlaps(figure, legend, list(axes.texts) + list(axes.lines))


def test_the_table_marks_what_hf_assisted_does_not_measure(tiny_engine: ConfSpecEngine) -> None:
    items = [EvalItem(p.question, str(p.answer)) for p in make_problems(1, seed=8)]
    report = evaluate(tiny_engine, items, [RunPlan(Mode.TARGET_ONLY), RunPlan(None)], base={"max_tokens": 8}, progress=False)
    target_row, assisted_row = (line.split(" | ") for line in report.markdown().splitlines()[2:4])
    assert assisted_row[0] == "| hf_assisted" and target_row[0] == "| target_only"
    assert assisted_row[5:] == ["-"] * 8 + ["- |"]  # tokens, steps, rates, passes
    assert target_row[5] == "0" and target_row[6] != "-"  # measured zeros stay zeros
    assert report.to_json()["modes"][1]["steps"] is None and report.to_json()["modes"][1]["tokens"] is None
