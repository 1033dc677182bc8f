"""The method's core stated as tables and hand-computed figures: the gate's decision for every
verdict against both thresholds, every summary figure from a known list of records, and the
token-speculation counters when a step ends inside a kept proposal."""

from __future__ import annotations

import pytest

from langchain_confspec import ConfSpecEngine
from langchain_confspec.config import build_config
from langchain_confspec.engine.gate import GateAction, gate, target_accepts
from langchain_confspec.engine.speculation import DepthPolicy
from langchain_confspec.records import (
    Decision,
    ModelCounters,
    PhaseTimes,
    StepEnd,
    StepRecord,
    TokenSpeculation,
    Verdict,
    Writer,
    summarize,
)

ACCEPT, REJECT, ESCALATE = GateAction.ACCEPT, GateAction.REJECT, GateAction.ESCALATE


@pytest.mark.parametrize(
    ("p_accept", "accept_threshold", "reject_threshold", "action"),
    [
        # the draft says yes: its confidence is p_accept; it stands when it clears accept_threshold
        (0.95, 0.9, 0.99, ACCEPT),
        (0.9, 0.9, 0.99, ACCEPT),  # the threshold itself clears
        (0.85, 0.9, 0.5, ESCALATE),  # a low reject_threshold never accepts a yes
        (0.6, 0.5, 0.6, ACCEPT),
        # the draft says no: its confidence is 1 - p_accept; it stands when it clears reject_threshold
        (0.05, 0.5, 0.9, REJECT),
        (0.1, 0.99, 0.9, REJECT),  # the threshold itself clears
        (0.15, 0.5, 0.9, ESCALATE),  # an unsure no goes to the target ...
        (0.15, 0.8, 0.9, ESCALATE),  # ... even when a yes that sure would have been accepted
        (0.4, 0.55, 0.6, REJECT),
        (0.4, 0.55, 0.65, ESCALATE),
        # thresholds above 1 switch a path off
        (1.0, 1.5, 0.9, ESCALATE),
        (0.0, 0.5, 1.5, ESCALATE),
    ],
)
def test_the_gate_decides_by_the_verdict_s_side_and_that_side_s_threshold(
    p_accept: float, accept_threshold: float, reject_threshold: float, action: GateAction
) -> None:
    config = build_config(accept_threshold=accept_threshold, reject_threshold=reject_threshold, verdict_mass_floor=0.5)
    assert gate(Verdict(p_accept=p_accept, mass=1.0), config) is action


def test_a_verdict_the_draft_hardly_gave_always_goes_to_the_target() -> None:
    config = build_config(accept_threshold=0.0, reject_threshold=0.0, verdict_mass_floor=0.5)
    assert gate(Verdict(p_accept=1.0, mass=0.49), config) is ESCALATE
    assert gate(Verdict(p_accept=0.0, mass=0.49), config) is ESCALATE
    assert gate(Verdict(p_accept=1.0, mass=0.5), config) is ACCEPT


@pytest.mark.parametrize(
    ("p_accept", "mass", "threshold", "kept"),
    [(0.95, 1.0, 0.95, True), (0.94, 1.0, 0.95, False), (0.95, 0.4, 0.5, False), (0.2, 1.0, 0.1, True), (1.0, 1.0, 1.5, False)],
)
def test_the_target_keeps_a_step_when_its_acceptance_clears_its_threshold(
    p_accept: float, mass: float, threshold: float, kept: bool
) -> None:
    config = build_config(target_accept_threshold=threshold, verdict_mass_floor=0.5)
    assert target_accepts(Verdict(p_accept=p_accept, mass=mass), config) is kept


def _record(index: int, decision: Decision, *, escalated: bool = False, writer: Writer = Writer.DRAFT) -> StepRecord:
    regenerated = decision in (Decision.REJECTED_BY_DRAFT, Decision.REJECTED_BY_TARGET)
    return StepRecord(
        index=index, text=f"step {index}", n_tokens=3, writer=Writer.TARGET if regenerated else writer,
        decision=decision, end=StepEnd.DELIMITER, escalated=escalated, regenerated=regenerated,
        rejected_text=f"step {index}" if decision is Decision.REJECTED_BY_TARGET else ("other" if regenerated else None),
        identical_rewrite=decision is Decision.REJECTED_BY_TARGET,
        times=PhaseTimes(draft_write=0.1 * index, target_verify=0.01),
    )


def test_every_summary_figure_matches_a_count_by_hand() -> None:
    records = [
        _record(0, Decision.ACCEPTED_BY_DRAFT),
        _record(1, Decision.ACCEPTED_BY_DRAFT),
        _record(2, Decision.ACCEPTED_BY_TARGET, escalated=True),
        _record(3, Decision.REJECTED_BY_TARGET, escalated=True),
        _record(4, Decision.REJECTED_BY_DRAFT),
        _record(5, Decision.ACCEPTED_BY_TARGET, escalated=True),
        _record(6, Decision.UNVERIFIED, writer=Writer.TARGET),  # a step no verdict was asked for
    ]
    summary = summarize(
        records, mode="confspec", finish_reason="stop", draft=ModelCounters(warmup_seconds=1.0),
        target=ModelCounters(warmup_seconds=0.5), wall_time=2.0, lock_wait=0.25, batch_sizes=[1, 3],
    )
    # proposed: the 6 judged steps; kept: 2 by the draft + 2 by the target; escalated: 3
    assert summary.n_steps == 7 and summary.draft_steps_proposed == 6
    assert summary.draft_acceptance_rate == pytest.approx(4 / 6)
    assert summary.escalation_rate == pytest.approx(3 / 6)
    assert summary.steps_by_decision == {
        "accepted_by_draft": 2, "accepted_by_target": 2, "rejected_by_target": 1, "rejected_by_draft": 1, "unverified": 1,
    }
    assert summary.identical_rewrites == 1
    assert summary.times.draft_write == pytest.approx(0.1 * sum(range(7)))
    assert summary.times.target_verify == pytest.approx(0.07)
    assert summary.mean_batch_size == 2.0 and summary.lock_wait == 0.25 and summary.wall_time == 2.0
    assert summary.warmup_time == 1.5  # both models' one-time warm-up


def test_tokens_per_target_pass_is_tokens_over_passes() -> None:
    assert TokenSpeculation(proposed=12, accepted=7, tokens=10, target_passes=4).mean_accepted_per_pass == 2.5
    assert TokenSpeculation().mean_accepted_per_pass == 0.0


def test_a_run_with_nothing_judged_has_no_rates() -> None:
    summary = summarize(
        [_record(0, Decision.UNVERIFIED)], mode="target_only", finish_reason="stop", draft=ModelCounters(),
        target=ModelCounters(), wall_time=0.0, lock_wait=0.0,
    )
    assert summary.draft_steps_proposed == 0 and summary.draft_acceptance_rate is None and summary.escalation_rate is None


def test_speculation_counts_only_the_kept_tokens_a_step_used(tiny_engine: ConfSpecEngine) -> None:
    """The target as its own draft keeps every proposal. A step has at most 5 tokens (and ends
    at a space, so some end early) and the
    draft proposes as deep as the step's budget, so each step is one pass whose proposal is
    kept whole and the step takes only what it needs of it: accepted is what it took."""
    twins = ConfSpecEngine(tiny_engine.target, tiny_engine.target, depth_policy=DepthPolicy(max_depth=8, min_path_chance=0.0))
    config = build_config(
        mode="target_only", token_speculation=True, max_tokens=40, max_step_tokens=5, step_delimiters=(" ",), fast_path="off"
    )
    result = twins.generate([{"role": "user", "content": "Hello world"}], config)
    stats = [r.token_speculation for r in result.records]
    assert len(stats) >= 3 and all(s is not None for s in stats)
    for record, s in zip(result.records, stats, strict=True):
        assert s is not None and s.target_passes == 1 and s.depths == [s.proposed]
        assert s.tokens == record.n_tokens + (record.end is StepEnd.EOS)  # an end-of-sequence token is taken, not kept
        assert s.accepted == s.tokens <= s.proposed
    assert any(s.tokens < s.proposed for s in stats if s is not None)  # some step ended inside its proposal
