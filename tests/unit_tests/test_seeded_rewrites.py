"""A rewrite starts by checking the rejected step as a proposal: same answers, fewer target passes."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import pytest

from langchain_confspec import ConfSpecEngine
from langchain_confspec.audit.display import format_outcome, format_step_row
from langchain_confspec.audit.log import AuditEntry
from langchain_confspec.audit.report import render_report
from langchain_confspec.config import build_config
from langchain_confspec.engine.decoding import StepBuilder, StopScanner, take_seed
from langchain_confspec.models.session import ModelSession

QUESTIONS = [
    [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
    [{"role": "user", "content": "Mia has 27 shells. Mia finds 38 more. How many shells does Mia have now?"}],
]
REJECTING = [  # every step escalated and rewritten; or rejected by the draft itself
    {"mode": "confspec", "accept_threshold": 1.5, "target_accept_threshold": 2.0},
    {"mode": "confspec", "accept_threshold": 1.5, "reject_threshold": 0.0, "target_accept_threshold": 2.0},
    {"mode": "always_verify", "target_accept_threshold": 2.0},
    {"mode": "confspec", "accept_threshold": 1.5, "target_accept_threshold": 2.0, "token_speculation": True},
]


@pytest.mark.parametrize("settings", REJECTING, ids=["escalated", "draft-rejected", "always-verify", "with-token-speculation"])
def test_seeded_rewrites_answer_as_unseeded_ones_with_no_more_target_passes(
    tiny_engine: ConfSpecEngine, engine_on, fast_path: str, settings: dict[str, object]  # type: ignore[no-untyped-def]
) -> None:
    for engine in (engine_on(tiny_engine, fast_path), twin_engine(tiny_engine, fast_path)):
        check_seeded_against_plain(engine, fast_path, settings)


def twin_engine(tiny_engine: ConfSpecEngine, fast_path: str) -> ConfSpecEngine:
    """The target as its own draft: every rejected step is exactly what the target writes."""
    from langchain_confspec.models.cuda_graphs import EagerRehearsal

    capture = EagerRehearsal() if fast_path == "graphs" else None
    return ConfSpecEngine(tiny_engine.target, tiny_engine.target, graph_capture=capture)


def check_seeded_against_plain(engine: ConfSpecEngine, fast_path: str, settings: dict[str, object]) -> None:
    twins = engine.draft is engine.target
    reused = 0
    for question in QUESTIONS:
        config = {"max_tokens": 48, "max_step_tokens": 8, "fast_path": fast_path, **settings}
        seeded = engine.generate(question, build_config(**config))
        plain = engine.generate(question, build_config(rewrite_from_rejected=False, **config))
        assert seeded.text == plain.text
        assert [r.text for r in seeded.records] == [r.text for r in plain.records]
        assert any(r.regenerated for r in seeded.records)
        assert seeded.summary.target.forward_passes <= plain.summary.target.forward_passes
        if twins:  # identical rewrites: kept whole, in fewer passes than decoding them again
            assert seeded.summary.target.forward_passes < plain.summary.target.forward_passes
        assert all(r.rewrite_reused_tokens == 0 for r in plain.records)
        for record in seeded.records:  # what was kept is the common prefix of the two texts, in tokens
            assert record.rewrite_reused_tokens <= record.rejected_tokens
            if record.regenerated and record.text == record.rejected_text and record.n_tokens:
                assert record.rewrite_reused_tokens == record.rejected_tokens
            if twins and record.regenerated:
                assert record.text == record.rejected_text and record.rewrite_reused_tokens == record.rejected_tokens
        reused += sum(r.rewrite_reused_tokens for r in seeded.records)
    assert reused > 0 or not twins


def test_a_seed_the_model_agrees_with_costs_one_pass_and_is_kept_whole(tiny_engine: ConfSpecEngine, greedy_from) -> None:  # type: ignore[no-untyped-def]
    target = tiny_engine.target
    prompt = target.render_prompt(QUESTIONS[0])
    written, _ = greedy_from(target, prompt, 6)  # what the target itself writes
    session = ModelSession(target, prompt)
    session.next_logits()
    session.append(written)
    passes = session.forward_passes
    step = StepBuilder(session, budget=len(written), delimiters=["\x00never"], stops=StopScanner([]))
    done, reused = take_seed(session, step, written)
    assert reused == len(written) and done is not None and done.ids == written
    assert session.forward_passes == passes + 1 and session.ids == [*prompt, *written]
    wrong = [written[0], (written[1] + 1) % target.vocab_size, *written[2:]]  # disagrees at the second token
    session = ModelSession(target, prompt)
    session.append(wrong)
    step = StepBuilder(session, budget=len(written), delimiters=["\x00never"], stops=StopScanner([]))
    done, reused = take_seed(session, step, wrong)
    assert reused == 1 and step.ids == written[:2] and session.ids == [*prompt, *written[:2]]


def test_an_identical_rewrite_is_flagged_counted_and_shown_as_such(tiny_engine: ConfSpecEngine) -> None:
    settings = build_config(**REJECTING[0], max_tokens=48, max_step_tokens=8)
    twins = twin_engine(tiny_engine, "off").generate(QUESTIONS[0], settings)  # every rewrite is the same text
    rewrites = [r for r in twins.records if r.regenerated]
    assert rewrites and all(r.identical_rewrite for r in rewrites)
    assert twins.summary.identical_rewrites == len(rewrites)
    assert f"{len(rewrites)} of the rewrites identical" in format_outcome(twins.summary)
    assert all("(rewritten identically)" in format_step_row(r) and " -> " not in format_step_row(r) for r in rewrites)
    pair = tiny_engine.generate(QUESTIONS[0], settings)  # a different draft: rewrites that change the text
    changed = [r for r in pair.records if r.regenerated and r.text != r.rejected_text]
    assert changed and not any(r.identical_rewrite for r in changed)
    assert all(" -> " in format_step_row(r, text_width=200) for r in changed)
    assert pair.summary.identical_rewrites == sum(r.regenerated and r.text == r.rejected_text for r in pair.records)
    when, run = datetime.now(timezone.utc), str(uuid4())
    entries = [AuditEntry(kind="step", time=when, run_id=run, step=r) for r in twins.records]
    page = render_report([*entries, AuditEntry(kind="summary", time=when, run_id=run, summary=twins.summary)])
    assert page.count('class="same"') == len(rewrites) and "rewritten identically" in page
