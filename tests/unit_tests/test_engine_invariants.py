"""The invariants of docs/method.md, held on tiny random models, on every fast path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from langchain_confspec import ConfSpecEngine, Decision, StepEnd, Writer, wrap_model
from langchain_confspec.config import build_config
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.tiny import build_model, build_tokenizer

PROMPTS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A train travels 60 miles in 2 hours. What is its speed?",
    "Hello world",
    "What is 12 * 12?",
    "The quick brown fox",
    "Think step by step: 24 + 36 - 10",
]


def turns(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]


def greedy_reference(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> str:
    """What the model alone produces with Hugging Face's own greedy decoding."""
    prompt_ids = loaded.render_prompt(turns(prompt))
    output = loaded.model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(loaded.eos_token_ids),
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return loaded.tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True)


EngineOn = Callable[[ConfSpecEngine, str], ConfSpecEngine]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_target_only_equals_target_greedy(tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, prompt: str) -> None:
    engine = engine_on(tiny_engine, fast_path)
    config = build_config(mode="target_only", max_tokens=48, max_step_tokens=7, fast_path=fast_path)
    result = engine.generate(turns(prompt), config)
    assert result.text == greedy_reference(tiny_engine.target, prompt, 48)
    assert all(r.writer is Writer.TARGET for r in result.records)
    assert result.summary.target.fast_path == fast_path


@pytest.mark.parametrize("prompt", PROMPTS)
def test_draft_only_equals_draft_greedy(tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, prompt: str) -> None:
    engine = engine_on(tiny_engine, fast_path)
    config = build_config(mode="draft_only", max_tokens=48, max_step_tokens=9, fast_path=fast_path)
    result = engine.generate(turns(prompt), config)
    assert result.text == greedy_reference(tiny_engine.draft, prompt, 48)
    assert all(r.writer is Writer.DRAFT for r in result.records)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_confspec_with_rejecting_target_equals_target_only(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, prompt: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    never = build_config(
        mode="confspec", max_tokens=48, max_step_tokens=6, accept_threshold=1.5, target_accept_threshold=2.0, fast_path=fast_path
    )
    result = engine.generate(turns(prompt), never)
    reference = engine.generate(turns(prompt), build_config(mode="target_only", max_tokens=48, max_step_tokens=6, fast_path="off"))
    assert result.text == reference.text
    rejected = [r for r in result.records if r.decision in (Decision.REJECTED_BY_TARGET, Decision.REJECTED_BY_DRAFT)]
    assert rejected, "every step should have been rejected and rewritten"
    assert all(r.writer is Writer.TARGET and r.regenerated and r.rejected_text is not None for r in rejected)


def test_escalated_steps_accepted_by_target_keep_the_draft_text(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    config = build_config(
        fast_path=fast_path,
        mode="confspec",
        max_tokens=40,
        max_step_tokens=8,
        accept_threshold=1.5,
        reject_threshold=1.5,
        target_accept_threshold=0.0,
        verdict_mass_floor=0.0,  # random models put little probability on Yes/No: take their verdicts anyway
    )
    result = engine.generate(turns(PROMPTS[0]), config)
    assert {r.decision for r in result.records} == {Decision.ACCEPTED_BY_TARGET}
    assert all(r.escalated and r.target_confidence is not None for r in result.records)
    draft_alone = engine.generate(turns(PROMPTS[0]), build_config(fast_path=fast_path, mode="draft_only", max_tokens=40, max_step_tokens=8))
    assert result.text == draft_alone.text


def test_confident_draft_accepts_without_asking_the_target(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    config = build_config(fast_path=fast_path, mode="confspec", max_tokens=40, max_step_tokens=8, accept_threshold=0.0, reject_threshold=0.0, verdict_mass_floor=0.0)
    result = engine.generate(turns(PROMPTS[1]), config)
    assert not any(r.escalated for r in result.records)
    assert all(r.draft_confidence is not None for r in result.records)
    assert result.summary.escalation_rate == 0.0
    decisions = {r.decision for r in result.records}
    assert decisions <= {Decision.ACCEPTED_BY_DRAFT, Decision.REJECTED_BY_DRAFT}
    # The target read no verification suffix: it only caught up (prompt + handed-over steps).
    assert result.summary.target.forward_tokens <= result.summary.target.prompt_tokens + sum(
        r.n_tokens + r.rejected_tokens for r in result.records
    )


def test_always_verify_asks_the_target_about_every_step(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    result = engine.generate(turns(PROMPTS[2]), build_config(fast_path=fast_path, mode="always_verify", max_tokens=32, max_step_tokens=8))
    assert result.records and all(r.escalated and r.draft_confidence is None for r in result.records)
    assert result.summary.escalation_rate == 1.0


@pytest.mark.parametrize("mode", ["confspec", "always_verify", "target_only", "draft_only"])
def test_forward_tokens_grow_linearly_with_answer_length(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, mode: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    """Each model reads every token once, plus verification suffixes and rejected steps."""
    suffix = {
        role: len(tiny_engine.__getattribute__(role).tokenizer.encode(build_config().verification_suffix))
        for role in ("draft", "target")
    }
    totals = []
    for max_tokens in (16, 64, 160):
        result = engine.generate(turns(PROMPTS[3]), build_config(fast_path=fast_path, mode=mode, max_tokens=max_tokens, max_step_tokens=8))
        s, records = result.summary, result.records
        assert sum(r.n_tokens for r in records) == max_tokens  # random models rarely stop early
        judged_by_draft = sum(r.draft_confidence is not None for r in records)
        escalated = sum(r.escalated for r in records)
        by_target = sum(r.n_tokens for r in records if r.writer is Writer.TARGET)
        by_draft = sum(r.n_tokens for r in records if r.writer is Writer.DRAFT)
        rejected = sum(r.rejected_tokens for r in records)
        if mode != "target_only":
            assert s.draft.forward_tokens <= s.draft.prompt_tokens + s.draft.tokens_written + by_target + judged_by_draft * suffix["draft"]
        if mode != "draft_only":
            assert s.target.forward_tokens <= (
                s.target.prompt_tokens + s.target.tokens_written + by_draft + rejected + escalated * suffix["target"]
            )
        totals.append(s.draft.forward_tokens + s.target.forward_tokens)
    # From 64 to 160 answer tokens (2.5x), the work may grow 2.5x plus the fixed prompt, never quadratically.
    assert totals[2] < 2.6 * totals[1]


def test_stop_string_straddling_tokens_stops_generation(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    config = build_config(fast_path=fast_path, mode="target_only", max_tokens=60, max_step_tokens=60)
    full = engine.generate(turns(PROMPTS[0]), config)
    tokenizer = tiny_engine.target.tokenizer
    # Choose a stop string that begins inside one token and ends inside a later one.
    answer_ids = tokenizer.encode(full.text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in answer_ids]
    boundary = next(k for k in range(3, len(pieces)) if len(pieces[k - 1]) >= 2 and len(pieces[k]) >= 2)
    offset = sum(len(p) for p in pieces[: boundary - 1])
    stop = full.text[offset + 1 : offset + len(pieces[boundary - 1]) + 1]
    assert stop not in pieces
    start = full.text.index(stop)
    stopped = engine.generate(turns(PROMPTS[0]), build_config(fast_path=fast_path, mode="target_only", max_tokens=60, max_step_tokens=60, stop=[stop]))
    assert stopped.text == full.text[:start]
    assert stopped.summary.finish_reason == "stop"
    assert stopped.records[-1].end is StepEnd.STOP
    assert stopped.summary.target.tokens_written < len(answer_ids)


def test_mismatched_tokenizers_travel_as_text(engine_on: EngineOn, fast_path: str) -> None:
    draft_tokenizer = build_tokenizer(vocab_size=200)
    target_tokenizer = build_tokenizer()
    engine = engine_on(
        ConfSpecEngine(
            wrap_model(build_model(draft_tokenizer, seed=3), draft_tokenizer, role="draft", name="draft"),
            wrap_model(build_model(target_tokenizer, hidden_size=64, num_layers=3, seed=4), target_tokenizer, role="target", name="target"),
        ),
        fast_path,
    )
    assert not engine.shared_vocabulary
    never = build_config(fast_path=fast_path, mode="confspec", max_tokens=40, max_step_tokens=8, accept_threshold=1.5, target_accept_threshold=2.0)
    result = engine.generate(turns(PROMPTS[1]), never)
    reference = engine.generate(turns(PROMPTS[1]), build_config(fast_path=fast_path, mode="target_only", max_tokens=40, max_step_tokens=8))
    assert result.text == reference.text
    accept_all = build_config(fast_path=fast_path, mode="confspec", max_tokens=40, max_step_tokens=8, accept_threshold=1.5, reject_threshold=1.5, target_accept_threshold=0.0, verdict_mass_floor=0.0)
    accepted = engine.generate(turns(PROMPTS[1]), accept_all)
    assert accepted.text == engine.generate(turns(PROMPTS[1]), build_config(fast_path=fast_path, mode="draft_only", max_tokens=40, max_step_tokens=8)).text
    # The target read the draft's steps re-tokenised with its own vocabulary.
    assert accepted.summary.target.forward_tokens > accepted.summary.target.prompt_tokens


def test_seeded_sampling_is_repeatable_and_differs_from_greedy(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    sampled = build_config(fast_path=fast_path, mode="confspec", max_tokens=40, temperature=1.0, top_p=0.9, seed=7)
    first = engine.generate(turns(PROMPTS[4]), sampled)
    again = engine.generate(turns(PROMPTS[4]), sampled)
    greedy = engine.generate(turns(PROMPTS[4]), build_config(fast_path=fast_path, mode="confspec", max_tokens=40))
    assert first.text == again.text
    assert first.text != greedy.text


@pytest.mark.parametrize("window", [70, 83])
def test_every_mode_cuts_steps_at_the_same_places_near_the_context_limit(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, window: int
) -> None:
    engine = engine_on(ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_context=window), fast_path)
    common = {"max_tokens": 200, "max_step_tokens": 9, "fast_path": fast_path}
    reference = engine.generate(turns(PROMPTS[5]), build_config(mode="target_only", **common))
    assert reference.summary.finish_reason == "length" and sum(r.n_tokens for r in reference.records) < 200
    for settings in (
        {"mode": "confspec", "accept_threshold": 1.5, "target_accept_threshold": 2.0},
        {"mode": "always_verify", "target_accept_threshold": 2.0},
        {"mode": "target_only", "token_speculation": True},
    ):
        result = engine.generate(turns(PROMPTS[5]), build_config(**common, **settings))
        assert result.text == reference.text, settings
        assert [r.n_tokens for r in result.records] == [r.n_tokens for r in reference.records], settings
