"""`target_check="agreement"`: an escalated step stands only if the target would write it itself."""

from __future__ import annotations

import pytest

from langchain_confspec import (
    ConfigurationError,
    ConfSpecChatModel,
    ConfSpecEngine,
    Decision,
    StepEnd,
    Writer,
)
from langchain_confspec.config import build_config
from langchain_confspec.engine.verification import agrees
from langchain_confspec.models.session import ModelSession

QUESTIONS = [
    [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
    [{"role": "user", "content": "Mia has 27 shells. Mia finds 38 more. How many shells does Mia have now?"}],
]
# Every step escalated (or judged by the target in always_verify); the verdict would keep them all.
KEEPING = {"target_accept_threshold": 0.0, "verdict_mass_floor": 0.0}
ESCALATED = {"mode": "confspec", "accept_threshold": 1.5, "reject_threshold": 1.5, **KEEPING}
ESCALATING = [
    ESCALATED,
    {"mode": "always_verify", **KEEPING},
    {**ESCALATED, "token_speculation": True},
    {**ESCALATED, "rewrite_from_rejected": False},
]


@pytest.mark.parametrize("settings", ESCALATING, ids=["escalated", "always-verify", "with-token-speculation", "unseeded-rewrites"])
def test_escalated_steps_read_exactly_as_the_targets_own(
    tiny_engine: ConfSpecEngine, engine_on, fast_path: str, settings: dict[str, object]  # type: ignore[no-untyped-def]
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    rewritten, verdict_differs = 0, False
    for question in QUESTIONS:
        common = {"max_tokens": 48, "max_step_tokens": 8, "fast_path": fast_path}
        reference = engine.generate(question, build_config(mode="target_only", **common))
        by_verdict = engine.generate(question, build_config(**common, **settings))
        answer = engine.generate(question, build_config(target_check="agreement", **common, **settings))
        assert answer.text == reference.text
        verdict_differs |= by_verdict.text != reference.text
        for record in answer.records:
            assert record.escalated and record.target_confidence is None and record.target_verdict_mass is None
            if record.target_verdict:  # kept: the draft's own step, which the target would write
                assert record.decision is Decision.ACCEPTED_BY_TARGET and record.writer is Writer.DRAFT
            else:  # rewritten from where the target departs from it
                assert record.decision is Decision.REJECTED_BY_TARGET and record.text != record.rejected_text
                rewritten += 1
    assert rewritten  # (the demo pair's test keeps steps too: this random draft hardly agrees)
    assert verdict_differs  # where the verdict alone keeps the draft's steps


def test_a_target_that_is_its_own_draft_keeps_every_step_and_rewrites_none(tiny_engine: ConfSpecEngine) -> None:
    twins = ConfSpecEngine(tiny_engine.target, tiny_engine.target)
    config = build_config(mode="always_verify", target_check="agreement", target_accept_threshold=2.0, max_tokens=48, max_step_tokens=8)
    for question in QUESTIONS:
        answer = twins.generate(question, config)
        assert answer.records and all(r.decision is Decision.ACCEPTED_BY_TARGET for r in answer.records)
        # One target pass checks each step, where writing it would take one per token.
        assert answer.summary.target.forward_passes <= len(answer.records) < sum(r.n_tokens for r in answer.records)


def test_agreement_needs_the_end_of_the_answer_where_the_step_ended_it(tiny_engine: ConfSpecEngine, greedy_from) -> None:  # type: ignore[no-untyped-def]
    target = tiny_engine.target
    prompt = target.render_prompt(QUESTIONS[0])
    step, after = greedy_from(target, prompt, 5)  # what the target writes itself, and what next
    session = ModelSession(target, prompt)
    session.append(step)
    assert agrees(session, len(prompt), StepEnd.LENGTH, target.eos_token_ids)
    assert agrees(session, len(prompt), StepEnd.EOS, frozenset({after})) and not agrees(session, len(prompt), StepEnd.EOS, frozenset({after + 1}))
    changed = ModelSession(target, prompt)
    changed.append([*step[:-1], (step[-1] + 1) % target.vocab_size])
    assert not agrees(changed, len(prompt), StepEnd.LENGTH, target.eos_token_ids)


def test_agreement_is_refused_with_sampling_naming_both_settings(tiny_model_params: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="target_check='agreement'.*temperature=0"):
        build_config(target_check="agreement", temperature=0.7)
    with pytest.raises(ConfigurationError, match="target_check='agreement'.*temperature=0"):
        ConfSpecChatModel(**tiny_model_params, target_check="agreement", temperature=0.7)
    chat = ConfSpecChatModel(**tiny_model_params, target_check="agreement", max_tokens=8)
    with pytest.raises(ConfigurationError, match="target_check='agreement'.*temperature=0"):
        chat.invoke("What is 3 + 4?", temperature=0.5)
    with pytest.raises(ConfigurationError, match="target_check: Input should be 'verdict' or 'agreement'"):
        build_config(target_check="match")
