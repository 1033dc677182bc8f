"""Audit logs and the HTML report: written from real runs, read back typed, rendered."""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from langchain_core.prompts import ChatPromptTemplate

from langchain_confspec import (
    ConfSpecChatModel,
    Decision,
    PhaseTimes,
    StepEnd,
    StepRecord,
    Writer,
)
from langchain_confspec.audit.log import (
    AuditEntry,
    ConfSpecAuditHandler,
    RotatingJsonLines,
    audit_files,
    read_audit_log,
)
from langchain_confspec.audit.report import (
    RunView,
    estimated_time_saved,
    group_runs,
    render_report,
)
from langchain_confspec.cli import main as cli_main
from langchain_confspec.records import ModelCounters, summarize


@pytest.fixture
def model(tiny_model_params: dict[str, str]) -> ConfSpecChatModel:
    return ConfSpecChatModel(**tiny_model_params, max_tokens=24, max_step_tokens=8, accept_threshold=0.6)


def test_records_trace_back_to_the_chain_call(model: ConfSpecChatModel, tmp_path: Path) -> None:
    handler = ConfSpecAuditHandler(tmp_path / "audit.jsonl")
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model
    message = chain.invoke({"q": "hi"}, config={"callbacks": [handler], "tags": ["t1"], "metadata": {"user": "ann"}})
    entries = list(read_audit_log(tmp_path / "audit.jsonl"))
    steps = [e.step for e in entries if e.step is not None]
    summaries = [e for e in entries if e.summary is not None]
    assert [s.model_dump(mode="json") for s in steps] == message.response_metadata["confspec"]["steps"]
    assert len(summaries) == 1 and summaries[-1] is entries[-1]
    run_ids = {e.run_id for e in entries}
    assert len(run_ids) == 1
    parent = entries[0].parent_run_id
    assert parent is not None and parent != entries[0].run_id  # the chain's run, not the model's
    assert all(e.parent_run_id == parent and "t1" in e.tags and e.metadata.get("user") == "ann" for e in entries)
    assert summaries[-1].question == "hi" and all(e.question is None for e in entries[:-1])


def test_concurrent_runs_write_whole_lines(model: ConfSpecChatModel, tmp_path: Path) -> None:
    handler = ConfSpecAuditHandler(tmp_path)  # a directory: one file per process
    threads = [threading.Thread(target=model.invoke, args=(f"q{i}",), kwargs={"config": {"callbacks": [handler]}}) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def run_async() -> None:
        await asyncio.gather(*(model.ainvoke(f"a{i}", config={"callbacks": [handler]}) for i in range(3)))

    asyncio.run(run_async())
    assert handler.path.parent == tmp_path and handler.path.name.startswith("confspec-audit-")
    runs = group_runs(read_audit_log(tmp_path))
    assert len(runs) == 7 and all(run.summary is not None for run in runs)
    assert all([s.index for s in run.steps] == list(range(len(run.steps))) for run in runs)


def test_rotation_keeps_every_line_across_files(tmp_path: Path) -> None:
    out = RotatingJsonLines(tmp_path / "log.jsonl", max_bytes=300, backups=50)
    for n in range(40):
        out.write({"kind": "summary", "n": n, "pad": "x" * 40})
    out.close()
    files = audit_files(tmp_path / "log.jsonl")
    assert len(files) > 3 and files[-1].name == "log.jsonl"
    numbers = [json.loads(line)["n"] for f in files for line in f.read_text().splitlines()]
    assert numbers == list(range(40))
    assert all(f.stat().st_size <= 300 for f in files)


def test_a_torn_last_line_is_skipped_but_a_bad_middle_line_is_named(model: ConfSpecChatModel, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    handler = ConfSpecAuditHandler(log)
    model.invoke("hi", config={"callbacks": [handler]})
    whole = log.read_text()
    log.write_text(whole + '{"kind": "step", "ti')
    assert len(list(read_audit_log(log))) == whole.count("\n")
    log.write_text('{"kind": "nonsense"}\n' + whole)
    with pytest.raises(ValueError, match="audit.jsonl:1"):
        list(read_audit_log(log))


def test_report_shows_each_run_and_the_figures(model: ConfSpecChatModel, tmp_path: Path) -> None:
    handler = ConfSpecAuditHandler(tmp_path / "audit.jsonl")
    chain = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")]) | model
    answers = [chain.invoke({"q": q}, config={"callbacks": [handler], "tags": ["mine"]}) for q in ("one <b>", "two")]
    page = render_report(read_audit_log(tmp_path / "audit.jsonl"), title="T <x>")
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;x&gt;</title>" in page
    assert page.count('class="run"') == 2
    assert 'id="figures"' in page and 'id="confidence-histogram"' in page and 'id="time-split"' in page
    assert "<script" not in page and "http" not in page  # self-contained
    steps = [e.step for e in read_audit_log(tmp_path / "audit.jsonl") if e.step]
    assert page.count('class="step ') == len(steps)
    # Each run shows what it was asked and how it ended; the user's tags, not LangChain's own.
    assert "Question</span> one &lt;b&gt;</p>" in page and "Question</span> two</p>" in page
    for message in answers:
        last = " ".join(message.response_metadata["confspec"]["steps"][-1]["text"].split())
        assert f"</span> {html.escape(last)}</p>" in page
    assert "tags: mine" in page and "seq:step" not in page
    assert 'id="time-saved-note"' in page


def test_every_fate_has_its_own_colour() -> None:
    page = render_report([])
    classes = re.findall(r'<span class="(fate-[a-z-]+)">', page)
    assert len(classes) == len(Decision)
    backgrounds = {css: re.search(rf"\.{css} {{ background: (#[0-9a-f]+); }}", page) for css in classes}
    assert all(backgrounds.values()), backgrounds
    assert len({match[1] for match in backgrounds.values() if match}) == len(Decision)


def _run(mode: str, decisions: list[Decision], *, wall: float, lock_wait: float = 0.0, target_write: float = 0.0) -> RunView:
    steps = [
        StepRecord(
            index=i, text="1 + 1 = 2.\n\n", n_tokens=10, end=StepEnd.DELIMITER, decision=decision,
            writer=Writer.DRAFT if decision in (Decision.ACCEPTED_BY_DRAFT, Decision.ACCEPTED_BY_TARGET) or mode == "draft_only" else Writer.TARGET,
            times=PhaseTimes(target_write=target_write if decision is not Decision.ACCEPTED_BY_DRAFT else 0.0),
        )
        for i, decision in enumerate(decisions)
    ]
    summary = summarize(
        steps, mode=mode, finish_reason="stop", draft=ModelCounters(), target=ModelCounters(), wall_time=wall, lock_wait=lock_wait
    )
    return RunView(run_id=mode, steps=steps, summary=summary)


def test_time_saved_is_measured_on_target_only_runs_when_the_log_has_them() -> None:
    reference = _run("target_only", [Decision.UNVERIFIED] * 4, wall=0.5, lock_wait=0.1)  # 40 tokens in 0.4 s busy
    confspec = _run("confspec", [Decision.ACCEPTED_BY_DRAFT] * 3 + [Decision.REJECTED_BY_TARGET], wall=0.35, lock_wait=0.05, target_write=0.05)
    saved = estimated_time_saved([reference, confspec])
    assert saved is not None and saved.measured
    assert saved.target_alone == pytest.approx(0.4) and saved.runs_time == pytest.approx(0.3)
    assert saved.seconds == pytest.approx(0.1)
    # Without a reference, the target's own steps price a token (0.05 s / 10 tokens), which
    # leaves out its prompt reading: the figure says so.
    fallback = estimated_time_saved([confspec])
    assert fallback is not None and not fallback.measured
    assert fallback.target_alone == pytest.approx(0.2) and fallback.seconds == pytest.approx(-0.1)
    assert "not estimated" in render_report([])
    page = render_report(_entries(confspec))
    assert "none: 0.10 s slower" in page and "leaves out the target reading each prompt" in page
    page = render_report([*_entries(reference), *_entries(confspec)])
    assert "0.10 s (25%)" in page and "target_only runs in these logs" in page


def _entries(run: RunView) -> list[AuditEntry]:
    now = datetime.now(timezone.utc)
    steps = [AuditEntry(kind="step", time=now, run_id=run.run_id, step=step) for step in run.steps]
    return [*steps, AuditEntry(kind="summary", time=now, run_id=run.run_id, summary=run.summary)]


def test_report_command_writes_the_page(model: ConfSpecChatModel, tmp_path: Path) -> None:
    handler = ConfSpecAuditHandler(tmp_path / "audit.jsonl")
    model.invoke("hi", config={"callbacks": [handler]})
    assert cli_main(["report", str(tmp_path / "audit.jsonl"), "-o", str(tmp_path / "r.html")]) == 0
    assert 'id="figures"' in (tmp_path / "r.html").read_text()
    assert cli_main(["report", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.html")]) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"question": "2+2?", "answer": 4}\n', r"log\.jsonl:1: not an audit entry \(kind: field required; time: field required; run_id: field required\)"),
        (b"hello\nworld\n", r"log\.jsonl:1: not an audit entry \(invalid JSON"),
        (b"\x83\xff\x00 binary", r"log\.jsonl: not an audit log: not UTF-8"),
        (b"", r"log\.jsonl: no audit entries in it"),
    ],
)
def test_report_on_a_file_that_is_not_an_audit_log_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    (tmp_path / "log.jsonl").write_bytes(content)
    assert cli_main(["report", str(tmp_path / "log.jsonl"), "-o", str(tmp_path / "r.html")]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and error.count("\n") == 1
    assert "pydantic" not in error and "http" not in error
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(model: ConfSpecChatModel, tmp_path: Path) -> None:
    handler = ConfSpecAuditHandler(tmp_path / "audit.jsonl")
    model.invoke("hi", config={"callbacks": [handler]})
    page = tmp_path / "report.html"
    page.write_text(render_report(read_audit_log(tmp_path / "audit.jsonl")))
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'id="figures"' in dom and 'class="run"' in dom and "<svg" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()], capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a rendered page, not a blank stub


def test_logging_is_silent_by_default_and_tells_each_step_at_debug(
    model: ConfSpecChatModel, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("langchain_confspec").handlers)
    with caplog.at_level(logging.DEBUG, logger="langchain_confspec"):
        message = model.invoke("hi")
    steps = [r for r in caplog.records if r.name == "langchain_confspec.engine.generation" and r.getMessage().startswith("step ")]
    assert len(steps) == len(message.response_metadata["confspec"]["steps"])


@pytest.mark.parametrize("detail", ["numbers", "none"])
def test_metadata_can_be_trimmed_for_tracing(tiny_model_params: dict[str, str], detail: str) -> None:
    full = ConfSpecChatModel(**tiny_model_params, max_tokens=24).invoke("hi").response_metadata["confspec"]
    trimmed = ConfSpecChatModel(**tiny_model_params, max_tokens=24, metadata_steps=detail).invoke("hi")
    meta = trimmed.response_metadata["confspec"]
    assert meta["summary"]["n_steps"] == full["summary"]["n_steps"]
    if detail == "none":
        assert "steps" not in meta
    else:
        assert all("text" not in s and "rejected_text" not in s and "decision" in s for s in meta["steps"])
    assert len(json.dumps(meta)) < len(json.dumps(full))


def test_verbose_run_prints_each_step_before_the_answer(
    tiny_pair_paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    draft, target = tiny_pair_paths
    argv = ["run", "hi", "--draft", str(draft), "--target", str(target), "--no-compare", "--verbose"]
    assert cli_main([*argv, "--set", "max_tokens=12", "--set", "max_step_tokens=4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("step"))
    rows = [line for line in lines[header + 2 :] if line[:4].strip().isdigit()]
    assert len(rows) >= 3 and [int(r[:4]) for r in rows] == list(range(len(rows)))


def test_run_and_eval_write_an_audit_log_that_report_reads(
    tiny_pair_paths: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft, target = tiny_pair_paths
    models = ["--draft", str(draft), "--target", str(target), "--set", "max_tokens=12", "--set", "max_step_tokens=4"]
    log = tmp_path / "a.jsonl"
    assert cli_main(["run", "hi", *models, "--no-compare", "--audit-log", str(log)]) == 0
    assert f"confspec report {log}" in capsys.readouterr().out  # says where the log is and what reads it
    run = list(read_audit_log(log))
    assert run[-1].kind == "summary" and run[-1].question == "hi" and run[-1].metadata == {"mode": "confspec"}
    assert run[-1].summary is not None and [e.kind for e in run[:-1]] == ["step"] * run[-1].summary.n_steps
    out = tmp_path / "eval"
    argv = ["eval", *models, "--problems", "2", "--modes", "target_only,confspec", "--out", str(out), "--no-progress"]
    assert cli_main([*argv, "--audit-log", str(log)]) == 0
    summaries = [e for e in read_audit_log(log) if e.kind == "summary"]
    assert [e.metadata["mode"] for e in summaries] == ["confspec", "target_only", "confspec", "target_only", "confspec"]
    assert cli_main(["report", str(log), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count('class="run"') == len(summaries)
