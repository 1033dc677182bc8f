"""The package surface and the repository's set-up contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_confspec
from langchain_confspec import Decision, PhaseTimes, StepEnd, StepRecord, Writer
from langchain_confspec.audit.display import format_outcome, format_step_table
from langchain_confspec.records import ModelCounters, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_all_names_exist_and_nothing_public_is_missing() -> None:
    assert sorted(langchain_confspec.__all__) == sorted(set(langchain_confspec.__all__))
    for name in langchain_confspec.__all__:
        assert hasattr(langchain_confspec, name), name
    assert {"ConfSpecChatModel", "ChatConfSpec", "StepRecord", "RunSummary", "ConfSpecEngine"} <= set(
        langchain_confspec.__all__
    )


def test_package_is_typed() -> None:
    assert (Path(langchain_confspec.__file__).parent / "py.typed").exists()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_step_records_round_trip_through_json_and_show_in_a_table() -> None:
    record = StepRecord(
        index=0,
        text="3 + 4 = 7.\n\n",
        n_tokens=6,
        writer=Writer.TARGET,
        decision=Decision.REJECTED_BY_TARGET,
        end=StepEnd.DELIMITER,
        draft_verdict=False,
        draft_confidence=0.61,
        escalated=True,
        regenerated=True,
        rejected_text="3 + 4 = 8.\n\n",
        times=PhaseTimes(draft_write=0.01, target_write=0.02),
    )
    assert StepRecord.model_validate_json(record.model_dump_json()) == record
    table = format_step_table([record])
    assert "target rejected" in table and "0.61" in table and "30.0" in table


def _summary_of(*decisions: Decision) -> str:
    records = [
        StepRecord(
            index=i, text="1 + 1 = 2.\n\n", n_tokens=5, writer=Writer.DRAFT, decision=decision, end=StepEnd.DELIMITER,
            escalated=decision in (Decision.ACCEPTED_BY_TARGET, Decision.REJECTED_BY_TARGET),
            regenerated=decision in (Decision.REJECTED_BY_DRAFT, Decision.REJECTED_BY_TARGET),
        )
        for i, decision in enumerate(decisions)
    ]
    summary = summarize(
        records, mode="confspec", finish_reason="stop", draft=ModelCounters(), target=ModelCounters(), wall_time=0.1, lock_wait=0.0
    )
    return format_outcome(summary)


def test_the_outcome_line_says_what_each_figure_counts() -> None:
    """All kept beside two escalations reads as such, not as a bare "acceptance 100%"."""
    line = _summary_of(Decision.ACCEPTED_BY_DRAFT, Decision.ACCEPTED_BY_TARGET, Decision.ACCEPTED_BY_TARGET, Decision.UNVERIFIED)
    assert line == (
        "4 steps, 3 judged: 1 kept on the draft's own verdict, 2 escalated to the target (2 kept, 0 rewritten); "
        "kept in all 3 of 3 (100%)"
    )
    line = _summary_of(Decision.REJECTED_BY_DRAFT, Decision.REJECTED_BY_TARGET, Decision.ACCEPTED_BY_DRAFT, Decision.ACCEPTED_BY_DRAFT)
    assert "1 escalated to the target (0 kept, 1 rewritten), 1 rewritten on the draft's own rejection" in line
    assert line.endswith("kept in all 2 of 4 (50%)")
    assert _summary_of(Decision.UNVERIFIED) == "1 step, none of them judged (confspec)"


def test_the_cli_answers_help_without_loading_torch_or_transformers() -> None:
    code = (
        "import sys\nfrom langchain_confspec.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, 'langchain_core' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-3:] == ["False", "False", "False"]
    assert "usage: confspec" in result.stdout


def test_the_package_imports_what_needs_torch_on_first_use() -> None:
    assert "ConfSpecChatModel" in dir(langchain_confspec)
    assert langchain_confspec.ConfSpecChatModel is langchain_confspec.chat_model.model.ConfSpecChatModel
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        langchain_confspec.NoSuchThing  # noqa: B018
