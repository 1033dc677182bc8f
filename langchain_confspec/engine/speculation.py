"""Token-level speculation inside the target's steps (HeteroSpec style).

Whenever the target writes, the draft proposes a few tokens and the target checks them all
in one forward pass. Under greedy decoding a proposed token is kept when it is the target's
own argmax, so the text is exactly the target's greedy text; under sampling the standard
speculative-sampling rule keeps the target's output distribution. How far the draft proposes
depends on how sure it is: a `DepthPolicy` maps the draft's normalised top-k entropy at each
proposed token to the chance that the target keeps it, and drafting stops once the chance
that the whole proposal survives falls below a floor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from langchain_confspec.engine.answer_text import AnswerText
from langchain_confspec.engine.decoding import (
    StepBuilder,
    StopScanner,
    TokenChooser,
    WrittenStep,
    drain,
    kept_prefix,
    take_seed,
)
from langchain_confspec.engine.remote_session import RemoteSession
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import TokenSpeculation

DEPTH_TABLE_FILE = "confspec_depth.json"
TOP_K = 8


def normalised_entropy(logits: torch.Tensor, top_k: int = TOP_K) -> float:
    """Entropy of the renormalised top-k probabilities, divided by log k: 0 sure, 1 unsure."""
    return float(entropy_tensor(logits, top_k))


def entropy_tensor(logits: torch.Tensor, top_k: int = TOP_K) -> torch.Tensor:
    """`normalised_entropy` as a 0-d tensor on the logits' device. The renormalised top-k
    probabilities are the softmax of the top-k logits, so nothing vocabulary-sized is built."""
    k = min(top_k, logits.shape[-1])
    top = torch.log_softmax(torch.topk(logits.float(), k).values, dim=-1)
    return -(top.exp() * top).sum() / math.log(k)


@dataclass
class DepthPolicy:
    """How deep the draft proposes, from the acceptance it can expect at each entropy level.

    `acceptance[i]` is the estimated chance that the target keeps a draft token whose
    normalised entropy falls in bin i of `len(acceptance)` equal bins over [0, 1].
    """

    acceptance: list[float] = field(default_factory=lambda: [round(0.95 - 0.1 * i, 2) for i in range(8)])
    max_depth: int = 8
    min_path_chance: float = 0.3

    def expected_acceptance(self, entropy: float) -> float:
        index = min(int(entropy * len(self.acceptance)), len(self.acceptance) - 1)
        return self.acceptance[index]

    @classmethod
    def fit(cls, samples: Sequence[tuple[float, bool]], bins: int = 8, **settings: float) -> DepthPolicy:
        """Per-bin acceptance rates from recorded (entropy, kept) pairs, smoothed towards the
        default and made non-increasing in entropy (an unsure draft is never trusted more)."""
        prior = cls().acceptance
        rates = []
        for b in range(bins):
            kept = [k for h, k in samples if min(int(h * bins), bins - 1) == b]
            prior_rate = prior[min(b * len(prior) // bins, len(prior) - 1)]
            rates.append((sum(kept) + 2 * prior_rate) / (len(kept) + 2))
        for b in range(1, bins):
            rates[b] = min(rates[b], rates[b - 1])
        return cls(acceptance=[round(r, 4) for r in rates], **settings)  # type: ignore[arg-type]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DepthPolicy:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def for_model(cls, model_dir: str | Path | None) -> DepthPolicy:
        """The table saved beside a model's config, or the default."""
        if model_dir is not None and (Path(model_dir) / DEPTH_TABLE_FILE).is_file():
            return cls.load(Path(model_dir) / DEPTH_TABLE_FILE)
        return cls()


@dataclass
class Proposal:
    tokens: list[int]
    entropies: list[float]
    draft_probs: torch.Tensor | None = None  # (depth, vocab): the draft's sampling distribution at each token


def propose(draft: ModelSession, chooser: TokenChooser, policy: DepthPolicy, limit: int) -> Proposal:
    """Let the draft run ahead while the chance that the target keeps it all stays high.

    One host synchronisation per proposed token reads its id and entropy together.
    """
    proposal = Proposal([], [])
    depth = min(policy.max_depth, limit)
    chance = 1.0
    eos = draft.loaded.eos_token_ids
    while len(proposal.tokens) < depth:
        logits = draft.next_logits()
        if chooser.greedy:
            choice = torch.argmax(logits)
        else:
            if proposal.draft_probs is None:
                proposal.draft_probs = torch.empty((depth, logits.shape[-1]), device=logits.device)
            probs = chooser.distribution(logits, out=proposal.draft_probs[len(proposal.tokens)])
            choice = chooser.draw(probs)
        entropy, chosen = torch.stack([entropy_tensor(logits).double(), choice.double()]).tolist()
        token = int(chosen)
        chance *= policy.expected_acceptance(entropy)
        if proposal.tokens and chance < policy.min_path_chance:
            break
        proposal.tokens.append(token)
        proposal.entropies.append(entropy)
        draft.append((token,))
        if token in eos:
            break
    return proposal


def verify_proposal(
    target_logits: torch.Tensor, proposal: Proposal, chooser: TokenChooser
) -> tuple[int, int]:
    """How many proposed tokens the target keeps, and the token it adds after them.

    `target_logits` holds the target's next-token logits before each proposed token and after
    the last one: (len(proposal.tokens) + 1, vocab). Greedy: one host synchronisation;
    sampling: two (every acceptance ratio at once, then the token drawn after them).
    """
    if chooser.greedy:  # one host synchronisation for the check
        choices = torch.argmax(target_logits, dim=-1).tolist()
        kept = kept_prefix(choices, proposal.tokens)
        return kept, choices[kept]
    assert proposal.draft_probs is not None
    # Every proposed token's acceptance ratio p/q, read back at once: one synchronisation.
    depth = len(proposal.tokens)
    ids = torch.tensor(proposal.tokens, device=target_logits.device)
    target_probs = torch.stack([chooser.distribution(target_logits[i]).clone() for i in range(depth)])  # (depth, vocab)
    rows = torch.arange(depth, device=target_logits.device)
    ratios = (target_probs[rows, ids] / proposal.draft_probs[rows, ids]).tolist()
    for i, ratio in enumerate(ratios):
        if chooser.uniform() >= min(1.0, ratio):  # rejected: the second (and last) read is the resample
            residual = (target_probs[i] - proposal.draft_probs[i]).clamp_min(0.0)
            total = residual.sum()
            fallback = total <= 0  # p == q there: sample the target itself
            return i, int(chooser.draw(torch.where(fallback, target_probs[i], residual / total.clamp_min(1e-30))))
    return depth, chooser.choose(target_logits[-1])


def _checked(target: ModelSession | RemoteSession, base: int, proposal: Proposal, chooser: TokenChooser) -> tuple[int, int]:
    """`verify_proposal` over a local target's logits. A served target returns no logits: it
    scores the proposal greedily, in one request (the engine sends it no sampled call)."""
    if isinstance(target, ModelSession):
        return verify_proposal(target.logits_from(base), proposal, chooser)
    choices = target.greedy_choices(base)
    kept = kept_prefix(choices, proposal.tokens)
    return kept, choices[kept]


def device_round(
    target: ModelSession, draft: ModelSession, chooser: TokenChooser, depth: int
) -> tuple[Proposal, int, int]:
    """A fixed-depth round made and checked on the device, read back once: the proposal, how
    many of its tokens the target keeps, and the token it adds after them.

    The draft proposes `depth` tokens, each fed back as its next input while still on the
    device; the target reads them in one pass; the keep rule (greedy: the target's own argmax;
    sampling: the speculative-sampling rule, uniforms and the resample drawn from the call's
    generator on the device) runs on the device too, and one read brings back the tokens, the
    verdict and the entropies. Both sessions end as after `propose` and `verify_proposal`: the
    proposal appended, the draft's last token pending.
    """
    logits = draft.next_logits()
    tokens, entropies, draft_probs = [], [], []
    for i in range(depth):
        if chooser.greedy:
            token = torch.argmax(logits)
        else:
            draft_probs.append(chooser.distribution(logits).clone())
            token = chooser.draw(draft_probs[-1])
        tokens.append(token.view(1))
        entropies.append(entropy_tensor(logits))
        if i + 1 < depth:
            logits = draft.read_ahead(tokens[-1])[-1]
    proposed = torch.cat(tokens)
    target_logits = target.read_ahead(proposed, keep=True)  # (depth + 1, vocab)
    if chooser.greedy:
        choices = torch.argmax(target_logits, dim=-1)
        kept = (choices[:depth] == proposed).long().cumprod(0).sum()
        extra = choices.gather(0, kept.view(1))[0]
    else:
        kept, extra = _sampled_verdict(target_logits, proposed, torch.stack(draft_probs), chooser)
    read = torch.cat([proposed.double(), torch.stack([kept, extra]).double(), torch.stack(entropies).double()]).tolist()
    ids = [int(t) for t in read[:depth]]
    draft.settle(ids[:-1])
    draft.append(ids[-1:])
    target.settle(ids)
    return Proposal(ids, read[depth + 2 :]), int(read[depth]), int(read[depth + 1])


def _sampled_verdict(
    target_logits: torch.Tensor, proposed: torch.Tensor, draft_probs: torch.Tensor, chooser: TokenChooser
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule on the device: each proposed token kept with chance
    min(1, p/q) until the first refusal, whose token is drawn from max(p - q, 0); after a fully
    kept proposal, from p. Returns (kept, token) as 0-d tensors."""
    depth = len(proposed)
    target_probs = torch.stack([chooser.distribution(row).clone() for row in target_logits])  # (depth + 1, vocab)
    rows = torch.arange(depth, device=proposed.device)
    ratios = target_probs[rows, proposed] / draft_probs[rows, proposed]
    accepted = chooser.uniforms(depth, proposed.device) < ratios.clamp(max=1.0)
    kept = accepted.long().cumprod(0).sum()
    residual = (target_probs - torch.cat([draft_probs, torch.zeros_like(draft_probs[:1])])).clamp_min(0.0)
    row = residual.index_select(0, kept.view(1))[0]
    total = row.sum()
    own = target_probs.index_select(0, kept.view(1))[0]
    return kept, chooser.draw(torch.where(total > 0, row / total.clamp_min(1e-30), own))


def speculative_step_texts(
    target: ModelSession | RemoteSession,
    draft: ModelSession,
    chooser: TokenChooser,
    policy: DepthPolicy,
    *,
    budget: int,
    delimiters: Sequence[str],
    stops: StopScanner,
    answer: AnswerText | None = None,
    final: bool = False,
    stream: bool = False,
    samples: list[tuple[float, bool]] | None = None,
    seed: Sequence[int] = (),
    fixed_depth: int | None = None,
    opener: str = "",
) -> Generator[str, None, tuple[WrittenStep, TokenSpeculation]]:
    """The target writes one step, with the draft proposing tokens ahead of it; with `stream`,
    the step's settled text is yielded as the target's passes settle it.

    Both sessions must hold the same text (same vocabulary) when this starts, and hold the
    written step when it returns; with a `seed` (greedy only: a rejected step), both end with
    it, and the target first keeps as much of it as it agrees with (`take_seed`). `samples`
    collects (entropy, kept) pairs for fitting a `DepthPolicy`. With `fixed_depth`, every
    round proposes that many tokens (fewer near the budget) and is read back once
    (`device_round`) instead of once per proposed token.
    """
    step = StepBuilder(target, budget=budget, delimiters=delimiters, stops=stops, answer=answer, final=final, opener=opener)
    stats = TokenSpeculation()
    reused = 0
    if seed:
        draft_base = len(draft) - len(seed)
        done, reused = take_seed(target, step, seed)
        draft.truncate(draft_base + reused)
        draft.append(step.ids[reused:])
        if stream and (text := step.new_text(done)):
            yield text
        if done is not None:
            return replace(done, reused=reused), stats
    while True:
        target_base, draft_base = len(target), len(draft)
        limit = budget - len(step.ids)
        if fixed_depth is None:
            proposal = propose(draft, chooser, policy, limit)
            target.append(proposal.tokens)
            kept, extra = _checked(target, target_base, proposal, chooser)
        else:
            assert isinstance(target, ModelSession), "a fixed-depth round runs on the target's device"
            proposal, kept, extra = device_round(target, draft, chooser, min(fixed_depth, limit))
        stats.proposed += len(proposal.tokens)
        stats.target_passes += 1
        stats.depths.append(len(proposal.tokens))
        draft.tokens_written += len(proposal.tokens)
        if samples is not None:  # tokens after the first refusal were never judged
            samples.extend((h, i < kept) for i, h in enumerate(proposal.entropies[: kept + 1]))

        consumed: list[int] = []  # tokens that join the step, in order
        taken = 0  # tokens the step took, the one that ended it included
        done = None
        for token in [*proposal.tokens[:kept], extra]:
            taken += 1
            done = step.add(token)
            if token not in step.eos:
                consumed.append(token)
            if done is not None:
                break
        stats.accepted += min(kept, taken)  # kept proposals past the step's end were never used
        stats.tokens += taken
        target.tokens_written += len(consumed)
        for session, base in ((target, target_base), (draft, draft_base)):
            session.truncate(base + min(kept, len(consumed)))
            session.append(consumed[kept:])
        if stream and (text := step.new_text(done)):
            yield text
        if done is not None:
            return replace(done, reused=reused), stats


def speculative_write_step(
    target: ModelSession, draft: ModelSession, chooser: TokenChooser, policy: DepthPolicy, **step: Any
) -> tuple[WrittenStep, TokenSpeculation]:
    """`speculative_step_texts` run to its end."""
    return drain(speculative_step_texts(target, draft, chooser, policy, **step))
