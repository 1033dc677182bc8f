"""Token-level speculation: the target's own output, under greedy decoding and sampling."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

from langchain_confspec import ConfigurationError, ConfSpecEngine, Writer, wrap_model
from langchain_confspec.config import build_config
from langchain_confspec.engine.decoding import TokenChooser
from langchain_confspec.engine.speculation import (
    DEPTH_TABLE_FILE,
    DepthPolicy,
    Proposal,
    _sampled_verdict,
    normalised_entropy,
    verify_proposal,
)
from langchain_confspec.models.tiny import build_model, build_tokenizer

PROMPTS = ["Hello world", "What is 12 * 12?", "Tom has 3 apples and buys 4 more.", "The quick brown fox", "24 + 36"]
ALWAYS_DEEP = DepthPolicy(max_depth=6, min_path_chance=0.0)


def turns(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def related_engine() -> ConfSpecEngine:
    """A draft that is the target with its last layer dropped: it agrees often, not always."""
    tokenizer = build_tokenizer()
    target = build_model(tokenizer, hidden_size=64, num_layers=3, seed=11)
    draft = build_model(tokenizer, hidden_size=64, num_layers=2, seed=11)
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if "layers.2." not in k}, strict=False)
    return ConfSpecEngine(
        wrap_model(draft, tokenizer, role="draft", name="draft"),
        wrap_model(target, tokenizer, role="target", name="target"),
        depth_policy=ALWAYS_DEEP,
    )


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("engine_name", ["tiny_engine", "related_engine"])
def test_greedy_speculation_gives_the_targets_own_text(
    prompt: str, engine_name: str, fast_path: str, engine_on: Callable[[ConfSpecEngine, str], ConfSpecEngine], request: pytest.FixtureRequest
) -> None:
    engine = engine_on(request.getfixturevalue(engine_name), fast_path)
    plain = engine.generate(turns(prompt), build_config(mode="target_only", max_tokens=48, max_step_tokens=11, fast_path="off"))
    spec = engine.generate(
        turns(prompt),
        build_config(mode="target_only", max_tokens=48, max_step_tokens=11, token_speculation=True, fast_path=fast_path),
    )
    assert spec.text == plain.text
    stats = [r.token_speculation for r in spec.records]
    assert all(s is not None and s.target_passes > 0 for s in stats)
    assert spec.summary.target.forward_passes <= plain.summary.target.forward_passes


@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("engine_name", ["tiny_engine", "related_engine"])
def test_fixed_depth_rounds_give_the_targets_own_text(
    depth: int, engine_name: str, fast_path: str, engine_on: Callable[[ConfSpecEngine, str], ConfSpecEngine], request: pytest.FixtureRequest
) -> None:
    """Rounds made and checked on the device (one read each) keep exactly what the target
    itself writes, whatever the depth against the step's length (11) and the answer's (48)."""
    engine = engine_on(request.getfixturevalue(engine_name), fast_path)
    settings = {"mode": "target_only", "max_tokens": 48, "max_step_tokens": 11}
    for prompt in PROMPTS:
        plain = engine.generate(turns(prompt), build_config(**settings, fast_path="off"))
        spec = engine.generate(
            turns(prompt), build_config(**settings, token_speculation=True, speculation_depth=depth, fast_path=fast_path)
        )
        assert spec.text == plain.text
        for record in spec.records:
            stats = record.token_speculation
            assert stats is not None and stats.target_passes > 0
            assert max(stats.depths) <= depth  # fewer only where the step's budget runs out
            assert stats.accepted <= stats.tokens <= stats.accepted + stats.target_passes


@pytest.mark.parametrize("depth", [None, 8], ids=["depth-rule", "fixed-depth"])
def test_no_proposal_reaches_past_the_steps_budget(related_engine: ConfSpecEngine, depth: int | None) -> None:
    """A round proposes at most the tokens the step has left: every round before it took at
    least one, so round i of a 3-token step proposes at most 3 - i."""
    config = build_config(mode="target_only", max_tokens=30, max_step_tokens=3, token_speculation=True, speculation_depth=depth)
    rounds = []
    for prompt in PROMPTS:
        for record in related_engine.generate(turns(prompt), config).records:
            assert record.token_speculation is not None
            rounds.append(record.token_speculation.depths)
    assert any(len(depths) > 1 for depths in rounds)  # some steps took more than one round
    assert all(d <= 3 - i for depths in rounds for i, d in enumerate(depths))


def test_a_speculative_writer_yields_text_only_when_streaming_and_keeps_both_sessions_in_step(related_engine: ConfSpecEngine) -> None:
    """With and without a seed (a rejected step checked first), nothing is yielded unless
    streaming, both sessions end holding the step, and a step written without a seed reused
    nothing."""
    from langchain_confspec.engine.decoding import StopScanner, write_step
    from langchain_confspec.engine.speculation import speculative_step_texts
    from langchain_confspec.models.session import ModelSession

    prompt = related_engine.target.render_prompt(turns(PROMPTS[1]))
    rules = {"budget": 10, "delimiters": ["\n\n"], "stops": StopScanner([])}
    plain = write_step(ModelSession(related_engine.target, prompt), TokenChooser(build_config()), **rules)
    for seed in ([], [*plain.ids[:3], 17, 17]):  # a seed the target agrees with only in part
        target = ModelSession(related_engine.target, [*prompt, *seed])
        draft = ModelSession(related_engine.draft, [*prompt, *seed])
        texts = speculative_step_texts(target, draft, TokenChooser(build_config()), ALWAYS_DEEP, seed=seed, **rules)
        try:
            next(texts)
            raise AssertionError("a writer that does not stream yielded text")
        except StopIteration as finished:
            step, _ = finished.value
        assert step.ids == plain.ids and target.ids == draft.ids == [*prompt, *plain.ids]
        assert step.reused == (3 if seed else 0)


def test_depth_samples_label_each_round_up_to_its_first_refusal(related_engine: ConfSpecEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `confspec fit-depth` learns from: per round, every kept token (True) and the first
    refused one (False); tokens after it were never judged and are left out."""
    from langchain_confspec.engine import speculation

    rounds: list[tuple[int, int]] = []  # (kept, proposed) per round, as the rule decided

    def recording(target_logits, proposal, chooser):  # type: ignore[no-untyped-def]
        kept, extra = verify_proposal(target_logits, proposal, chooser)
        rounds.append((kept, len(proposal.tokens)))
        return kept, extra

    monkeypatch.setattr(speculation, "verify_proposal", recording)
    engine = ConfSpecEngine(related_engine.draft, related_engine.target, depth_policy=ALWAYS_DEEP)
    engine.depth_samples = []
    engine.generate(turns(PROMPTS[2]), build_config(mode="target_only", max_tokens=40, token_speculation=True))
    expected = [label for kept, proposed in rounds for label in [True] * kept + ([False] if kept < proposed else [])]
    assert any(kept < proposed for kept, proposed in rounds) and any(kept for kept, _ in rounds)
    assert [kept for _, kept in engine.depth_samples] == expected


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
def test_a_device_round_leaves_both_sessions_holding_the_proposal(related_engine: ConfSpecEngine, temperature: float) -> None:
    """After each round both models hold the same text (the draft's last token still to be
    read), so the next round starts in step; every proposed token has its entropy."""
    from langchain_confspec.engine.speculation import device_round
    from langchain_confspec.models.session import ModelSession

    prompt = related_engine.target.render_prompt(turns(PROMPTS[2]))
    target, draft = ModelSession(related_engine.target, prompt), ModelSession(related_engine.draft, prompt)
    chooser = TokenChooser(build_config(temperature=temperature, seed=4))
    for depth in (4, 1, 6):
        base = len(target)
        proposal, kept, extra = device_round(target, draft, chooser, depth)
        assert target.ids == draft.ids == [*prompt, *target.ids[len(prompt) : base], *proposal.tokens]
        assert len(proposal.entropies) == depth and all(0.0 <= h <= 1.0 for h in proposal.entropies)
        assert 0 <= kept <= depth
        for session in (target, draft):
            session.truncate(base + kept)
            session.append([extra])


def test_a_related_draft_saves_target_passes(related_engine: ConfSpecEngine) -> None:
    spec = related_engine.generate(
        turns(PROMPTS[2]), build_config(mode="target_only", max_tokens=60, max_step_tokens=20, token_speculation=True)
    )
    accepted = sum(r.token_speculation.accepted for r in spec.records)  # type: ignore[union-attr]
    passes = sum(r.token_speculation.target_passes for r in spec.records)  # type: ignore[union-attr]
    assert accepted > 0
    assert spec.summary.target.forward_passes < 60
    record = spec.records[0].token_speculation
    assert record is not None and record.mean_accepted_per_pass == pytest.approx(record.tokens / record.target_passes)
    # every token of a target-written step came from a pass: kept proposals or the target's own
    assert sum(r.token_speculation.tokens for r in spec.records) >= sum(r.n_tokens for r in spec.records)  # type: ignore[union-attr]
    assert all(r.token_speculation.accepted <= r.token_speculation.tokens <= r.token_speculation.accepted + r.token_speculation.target_passes for r in spec.records)  # type: ignore[union-attr]
    assert passes == sum(len(r.token_speculation.depths) for r in spec.records)  # type: ignore[union-attr]
    assert max(d for r in spec.records for d in r.token_speculation.depths) == ALWAYS_DEEP.max_depth  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confspec_rewrites_with_speculation_match_target_only(
    related_engine: ConfSpecEngine, engine_on: Callable[[ConfSpecEngine, str], ConfSpecEngine], fast_path: str, seed: int
) -> None:
    engine = engine_on(related_engine, fast_path)
    prompt = PROMPTS[seed]
    never = {"accept_threshold": 2.0, "target_accept_threshold": 2.0, "max_tokens": 40, "max_step_tokens": 8}
    reference = engine.generate(turns(prompt), build_config(mode="target_only", max_tokens=40, max_step_tokens=8, fast_path="off"))
    spec = engine.generate(turns(prompt), build_config(mode="confspec", token_speculation=True, fast_path=fast_path, **never))
    assert spec.text == reference.text
    assert all(r.writer is Writer.TARGET and r.token_speculation is not None for r in spec.records)


def test_speculation_needs_a_shared_vocabulary() -> None:
    small, large = build_tokenizer(vocab_size=200), build_tokenizer()
    engine = ConfSpecEngine(
        wrap_model(build_model(small), small, role="draft"), wrap_model(build_model(large), large, role="target")
    )
    with pytest.raises(ConfigurationError, match="share a vocabulary"):
        engine.generate(turns("hi"), build_config(token_speculation=True))


# -- the acceptance rule on its own: distributions over a four-token vocabulary ------------------


def speculative_first_tokens(p: torch.Tensor, q: torch.Tensor, n: int, *, rule=verify_proposal) -> list[int]:  # type: ignore[no-untyped-def]
    """Draw the first emitted token n times: the draft samples from q, the rule decides."""
    chooser = TokenChooser(build_config(temperature=1.0, seed=1234))
    log_p, log_q = torch.log(p), torch.log(q)
    firsts = []
    for _ in range(n):
        draft_probs = chooser.distribution(log_q).clone()  # the chooser reuses its own buffer
        token = chooser.sample(draft_probs)
        proposal = Proposal([token], [0.0], draft_probs=draft_probs[None])
        kept, extra = rule(torch.stack([log_p, log_p]), proposal, chooser)
        firsts.append(token if kept else extra)
    return firsts


def chi_square(observed: list[int], expected: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(observed), minlength=len(expected)).float()
    want = expected * len(observed)
    return float(((counts - want) ** 2 / want).sum())


P = torch.tensor([0.5, 0.3, 0.15, 0.05])
Q = torch.tensor([0.1, 0.2, 0.3, 0.4])
CRITICAL_3_DOF = 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_speculative_sampling_keeps_the_target_distribution() -> None:
    assert chi_square(speculative_first_tokens(P, Q, 6000), P) < CRITICAL_3_DOF


def test_a_broken_acceptance_rule_is_caught() -> None:
    def always_accept(target_logits, proposal, chooser):  # type: ignore[no-untyped-def]
        return len(proposal.tokens), chooser.choose(target_logits[-1])

    assert chi_square(speculative_first_tokens(P, Q, 6000, rule=always_accept), P) > CRITICAL_3_DOF


def device_rule(target_logits: torch.Tensor, proposal: Proposal, chooser: TokenChooser) -> tuple[int, int]:
    """The rule of a fixed-depth round, as `verify_proposal` is called."""
    assert proposal.draft_probs is not None
    kept, token = _sampled_verdict(target_logits, torch.tensor(proposal.tokens), proposal.draft_probs, chooser)
    return int(kept), int(token)


def test_the_device_rule_keeps_the_target_distribution() -> None:
    assert chi_square(speculative_first_tokens(P, Q, 6000, rule=device_rule), P) < CRITICAL_3_DOF


@pytest.mark.parametrize("rule", [verify_proposal, device_rule], ids=["read-per-token", "device-round"])
def test_after_a_kept_proposal_the_next_token_follows_the_targets_next_distribution(rule) -> None:  # type: ignore[no-untyped-def]
    """With the draft equal to the target at the proposed position every proposal is kept, and
    the token after it follows the target's distribution after the proposal (R here), not the
    one before it (P)."""
    chooser = TokenChooser(build_config(temperature=1.0, seed=7))
    after = torch.tensor([0.1, 0.1, 0.2, 0.6])
    draft_probs = chooser.distribution(torch.log(P)).clone()[None]
    extras = []
    for _ in range(4000):
        kept, extra = rule(torch.stack([torch.log(P), torch.log(after)]), Proposal([1], [0.0], draft_probs), chooser)
        assert kept == 1
        extras.append(extra)
    assert chi_square(extras, after) < CRITICAL_3_DOF


@pytest.mark.parametrize("depth", [None, 4])
def test_sampled_speculation_is_repeatable_with_a_seed(related_engine: ConfSpecEngine, depth: int | None) -> None:
    config = build_config(
        mode="target_only", token_speculation=True, speculation_depth=depth, temperature=0.8, seed=5, max_tokens=30
    )
    first = related_engine.generate(turns(PROMPTS[0]), config).text
    assert related_engine.generate(turns(PROMPTS[0]), config).text == first


# -- adaptive depth --------------------------------------------------------------------------------


def test_entropy_is_zero_when_sure_and_one_when_flat() -> None:
    assert normalised_entropy(torch.tensor([20.0] + [0.0] * 20)) < 0.01
    assert normalised_entropy(torch.zeros(50)) == pytest.approx(1.0)
    # Only the likeliest 8 count: 8 equal candidates and nothing else is as unsure as it gets.
    assert normalised_entropy(torch.tensor([5.0] * 8 + [-30.0] * 200)) == pytest.approx(1.0)


def test_each_entropy_reads_its_own_bin() -> None:
    policy = DepthPolicy(acceptance=[0.9, 0.7, 0.5, 0.3])
    assert [policy.expected_acceptance(h) for h in (0.0, 0.24, 0.25, 0.6, 0.99, 1.0)] == [0.9, 0.9, 0.7, 0.5, 0.3, 0.3]


def test_a_flat_draft_sample_fits_the_last_bin() -> None:
    """Entropy 1.0 (a flat top 8) belongs to the last bin, like 0.99."""
    fitted = DepthPolicy.fit([(1.0, False)] * 50, bins=4)
    assert fitted.acceptance[-1] < 0.1 and fitted.acceptance[-2] > 0.3


def test_with_no_samples_a_fitted_table_is_the_prior_read_at_each_bins_start() -> None:
    """Refitting to another number of bins smooths each bin towards the prior's value at the
    bin's lower edge, and with nothing recorded that value is all there is."""
    prior = DepthPolicy().acceptance
    assert DepthPolicy.fit([], bins=len(prior)).acceptance == prior
    assert DepthPolicy.fit([], bins=4).acceptance == [prior[0], prior[2], prior[4], prior[6]]
    assert DepthPolicy.fit([], bins=16).acceptance == [a for a in prior for _ in range(2)]


def test_a_fitted_table_never_trusts_a_less_sure_bin_more() -> None:
    """Drafts refused when sure and kept when a little less sure: the second bin's rate is
    brought down to the first's, as every later bin is to the one before it."""
    fitted = DepthPolicy.fit([(0.05, False)] * 50 + [(0.2, True)] * 50)
    assert fitted.acceptance[1] == fitted.acceptance[0] < 0.1
    assert all(a >= b for a, b in zip(fitted.acceptance, fitted.acceptance[1:]))


def test_a_fitted_table_trusts_confident_drafts_more(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    samples = [(h, rng.random() < 1 - h) for h in (rng.random() for _ in range(4000))]
    policy = DepthPolicy.fit(samples)
    assert policy.acceptance[0] > 0.8 and policy.acceptance[-1] < 0.25
    assert all(a >= b for a, b in zip(policy.acceptance, policy.acceptance[1:]))
    assert all(a == round(a, 4) != round(a, 3) for a in policy.acceptance)  # the saved table reads at 4 decimals
    policy.save(tmp_path / "depth.json")
    assert DepthPolicy.load(tmp_path / "depth.json") == policy


def test_a_table_saved_beside_a_model_is_the_one_it_gets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fitted = DepthPolicy(acceptance=[0.9, 0.6, 0.2], max_depth=5)
    fitted.save(tmp_path / DEPTH_TABLE_FILE)
    assert DepthPolicy.for_model(tmp_path) == fitted
    assert DepthPolicy.for_model(tmp_path / "elsewhere") == DepthPolicy() == DepthPolicy.for_model(None)


def test_depth_follows_confidence(related_engine: ConfSpecEngine) -> None:
    cautious = DepthPolicy(acceptance=[0.2] * 8, max_depth=6, min_path_chance=0.3)
    bold = DepthPolicy(acceptance=[1.0] * 8, max_depth=6, min_path_chance=0.3)
    depths = {}
    for name, policy in (("cautious", cautious), ("bold", bold)):
        related_engine.depth_policy = policy
        result = related_engine.generate(turns(PROMPTS[1]), build_config(mode="target_only", token_speculation=True, max_tokens=30))
        depths[name] = max(d for r in result.records for d in r.token_speculation.depths)  # type: ignore[union-attr]
    related_engine.depth_policy = ALWAYS_DEEP
    assert depths["cautious"] == 1 and depths["bold"] > 1
