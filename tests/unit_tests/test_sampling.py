"""Sampling through the whole engine: token speculation keeps the target's distribution, and
temperature and top-p shape what is sampled.

The models are bigram tables inside real tiny Llamas (caches, fast paths and the engine run as
usual): the next token's logits depend only on the token just read, over six digit tokens.
The exact distribution of the first two answer tokens then follows from the table by an
independent computation (softmax at the temperature, top-p nucleus), so sampled counts can be
checked against it with a chi-square test, and so can the draft's, which must be rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM

from langchain_confspec import ConfSpecEngine, wrap_model
from langchain_confspec.config import build_config
from langchain_confspec.engine.decoding import TokenChooser
from langchain_confspec.engine.speculation import DepthPolicy
from langchain_confspec.models.tiny import build_model, build_tokenizer

EngineOn = Callable[[ConfSpecEngine, str], ConfSpecEngine]
DIGITS = "123456"
TURNS = [{"role": "user", "content": "Hello world"}]
CRITICAL = {k: v for k, v in [(10, 29.59), (15, 37.70), (20, 45.31), (25, 52.62), (30, 59.70), (35, 66.62)]}  # p = 0.001


class BigramLlama(LlamaForCausalLM):
    """Next-token logits = `table[token just read]`."""

    table: torch.Tensor

    def forward(self, input_ids: torch.Tensor, **kwargs):  # type: ignore[no-untyped-def]
        output = super().forward(input_ids=input_ids, **kwargs)
        rows = output.logits.shape[1]
        output.logits = self.table[input_ids[0, -rows:]][None].to(output.logits.dtype)
        return output


def bigram(tokenizer, seed: int) -> BigramLlama:  # type: ignore[no-untyped-def]
    digit_ids = tokenizer.convert_tokens_to_ids(list(DIGITS))
    base = build_model(tokenizer, hidden_size=32, num_layers=1, seed=seed)
    model = BigramLlama(base.config).eval()
    model.load_state_dict(base.state_dict())
    generator = torch.Generator().manual_seed(seed)
    table = torch.full((len(tokenizer), len(tokenizer)), -30.0)
    table[:, digit_ids] = 1.6 * torch.randn((len(tokenizer), len(DIGITS)), generator=generator)
    model.table = table
    return model


@pytest.fixture(scope="module")
def sampler() -> ConfSpecEngine:
    tokenizer = build_tokenizer()
    draft, target = bigram(tokenizer, seed=1), bigram(tokenizer, seed=2)
    return ConfSpecEngine(
        wrap_model(draft, tokenizer, role="draft", name="draft"),
        wrap_model(target, tokenizer, role="target", name="target"),
        depth_policy=DepthPolicy(max_depth=3, min_path_chance=0.0),  # always propose as deep as allowed
    )


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The sampling distribution, computed here on its own: softmax at the temperature, then the
    smallest set of likeliest tokens reaching `top_p`, renormalised."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    order = torch.argsort(probs, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for index in order.tolist():
        keep[index] = True
        mass += float(probs[index])
        if mass >= top_p:
            break
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum()


def expected_pairs(engine: ConfSpecEngine, role: str, temperature: float, top_p: float) -> dict[str, float]:
    """Probability of each first two answer tokens (as text) under `role`'s table."""
    model: BigramLlama = getattr(engine, role).model
    tokenizer = engine.target.tokenizer
    last = engine.target.render_prompt(TURNS)[-1]
    first = nucleus(model.table[last], temperature, top_p)
    pairs = {}
    for a in torch.nonzero(first).flatten().tolist():
        second = nucleus(model.table[a], temperature, top_p)
        for b in torch.nonzero(second).flatten().tolist():
            pairs[tokenizer.decode([a, b])] = float(first[a] * second[b])
    return pairs


def chi_square(samples: list[str], expected: dict[str, float]) -> tuple[float, int]:
    """Pearson's statistic over categories expected at least 5 times (the rest pooled), and its
    degrees of freedom."""
    counts, n = Counter(samples), len(samples)
    big = [k for k, p in expected.items() if p * n >= 5]
    observed = [counts[k] for k in big] + [n - sum(counts[k] for k in big)]
    wanted = [expected[k] * n for k in big] + [n * (1 - sum(expected[k] for k in big))]
    statistic = sum((o - w) ** 2 / w for o, w in zip(observed, wanted) if w > 0)
    return statistic, len(big)


def critical(dof: int) -> float:
    return CRITICAL[min((k for k in CRITICAL if k >= dof), default=35)]


def sample(engine: ConfSpecEngine, n: int, **settings: object) -> list[str]:
    base = {"max_tokens": 3, "max_step_tokens": 3, "mode": "target_only"}
    return [engine.generate(TURNS, build_config(**{**base, **settings}, seed=seed)).text[:2] for seed in range(n)]  # type: ignore[arg-type]


def test_token_speculation_samples_from_the_targets_distribution(
    sampler: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    settings = {"temperature": 0.7, "top_p": 0.9}
    expected = expected_pairs(sampler, "target", **settings)  # type: ignore[arg-type]
    engine = engine_on(sampler, fast_path)
    speculated = sample(engine, 600, token_speculation=True, fast_path=fast_path, **settings)
    statistic, dof = chi_square(speculated, expected)
    assert dof >= 5 and statistic < critical(dof), (statistic, dof)
    # The same test tells the draft's distribution apart, so passing it means something.
    drafted = sample(engine, 600, mode="draft_only", fast_path=fast_path, **settings)
    assert chi_square(drafted, expected)[0] > critical(dof)


def test_a_speculation_rule_that_keeps_every_proposal_is_caught(sampler: ConfSpecEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_confspec.engine import speculation

    monkeypatch.setattr(
        speculation, "verify_proposal", lambda logits, proposal, chooser: (len(proposal.tokens), chooser.choose(logits[-1]))
    )
    settings = {"temperature": 0.7, "top_p": 0.9}
    statistic, dof = chi_square(sample(sampler, 600, token_speculation=True, **settings), expected_pairs(sampler, "target", **settings))  # type: ignore[arg-type]
    assert statistic > critical(dof)


def test_top_p_keeps_samples_inside_the_nucleus(sampler: ConfSpecEngine) -> None:
    last = sampler.target.render_prompt(TURNS)[-1]
    tokenizer = sampler.target.tokenizer
    inside = {tokenizer.decode([i]) for i in torch.nonzero(nucleus(sampler.target.model.table[last], 1.0, 0.5)).flatten().tolist()}
    narrow = {text[0] for text in sample(sampler, 200, temperature=1.0, top_p=0.5)}
    wide = {text[0] for text in sample(sampler, 200, temperature=1.0, top_p=1.0)}
    assert narrow <= inside
    assert wide - inside  # without the cut, tokens outside the nucleus are drawn


def test_temperature_shapes_the_distribution(sampler: ConfSpecEngine) -> None:
    cold, hot = (expected_pairs(sampler, "target", t, 1.0) for t in (0.4, 2.0))
    for temperature, own, other in ((0.4, cold, hot), (2.0, hot, cold)):
        drawn = sample(sampler, 400, temperature=temperature)
        statistic, dof = chi_square(drawn, own)
        assert statistic < critical(dof), (temperature, statistic, dof)
        mismatch, other_dof = chi_square(drawn, other)
        assert mismatch > critical(other_dof), (temperature, mismatch, other_dof)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63)])
def test_the_widest_seeds_torch_takes_are_accepted_and_sample(seed: int) -> None:
    chooser = TokenChooser(build_config(temperature=1.0, seed=seed))
    assert 0 <= chooser.choose(torch.zeros(5)) < 5


def test_a_nucleus_of_one_token_samples_it() -> None:
    """top_p small enough that only the likeliest token is in the nucleus: sampling is greedy."""
    logits = torch.randn(50)
    chooser = TokenChooser(build_config(temperature=0.7, top_p=1e-6, seed=3))
    assert all(chooser.choose(logits) == int(torch.argmax(logits)) for _ in range(20))
