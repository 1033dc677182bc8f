"""How a model checks a step: a verdict read from its next-token distribution, or agreement.

A verification suffix (a question and an answer prefix) is appended after the step; one
forward pass gives the distribution of the next token, and the probability mass on the
accepting answers (Yes, or scores at or above the pass mark) is the verdict. The suffix is
cropped back out of the cache afterwards. Agreement asks instead whether the model would
write the step itself (greedy), from one pass over the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from langchain_confspec.config import SpecConfig, VerificationStyle
from langchain_confspec.engine.decoding import Checker, kept_prefix
from langchain_confspec.errors import ConfigurationError
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import StepEnd, Verdict

_YES_WORDS = ("Yes", "yes", "YES")
_NO_WORDS = ("No", "no", "NO")


def _first_token_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> set[int]:
    """First token of each word, with and without a leading space (how answers start).

    A first token must carry at least two letters of a longer word: a tokenizer that spells
    "no" as "n" + "o" would otherwise count every word starting with "n" as a verdict. The
    unknown token and other special tokens never count: they stand for anything.
    """
    special = set(tokenizer.all_special_ids)
    ids: set[int] = set()
    for word in words:
        for variant in (word, " " + word):
            encoded = tokenizer.encode(variant, add_special_tokens=False)
            if encoded and encoded[0] not in special and len(tokenizer.decode(encoded[:1]).strip()) >= min(2, len(word)):
                ids.add(encoded[0])
    return ids


class VerdictReader:
    """Knows a tokenizer's answer tokens and the suffix that asks the question."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: SpecConfig, *, role: str = "model") -> None:
        self.suffix_ids: list[int] = tokenizer.encode(config.verification_suffix, add_special_tokens=False)
        if config.verification is VerificationStyle.SCORE:
            words = (", ".join(str(d) for d in range(config.score_pass_mark, 10)), ", ".join(str(d) for d in range(config.score_pass_mark)))
            digits = [_first_token_ids(tokenizer, [str(d)]) for d in range(10)]
            self._accept = sorted(set().union(*digits[config.score_pass_mark :]))
            self._reject = sorted(set().union(*digits[: config.score_pass_mark]))
            fix = "Use verification='binary' (Yes/No) instead."
        else:
            words = ("/".join(_YES_WORDS), "/".join(_NO_WORDS))
            self._accept = sorted(_first_token_ids(tokenizer, _YES_WORDS))
            self._reject = sorted(_first_token_ids(tokenizer, _NO_WORDS))
            fix = "Use verification='score' (a 0-9 score; set verification_prompt if the default question does not suit the model)."
        if not self._accept or not self._reject:
            missing = words[0] if not self._accept else words[1]
            raise ConfigurationError(
                f"The {role} tokenizer cannot write the verdict words {missing} as tokens of their own, so its "
                f"verdicts cannot be read. {fix}"
            )
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        overlap = set(self._accept) & set(self._reject)
        if overlap:
            shared = ", ".join(repr(tokenizer.decode([i])) for i in sorted(overlap))
            raise ConfigurationError(
                f"In the {role} tokenizer, accepting answers ({words[0]}) and rejecting ones ({words[1]}) begin with "
                f"the same token ({shared}), so its verdicts cannot be read. {fix}"
            )

    def read(self, logits: torch.Tensor) -> Verdict:
        """The verdict in a next-token distribution, and how much probability it got at all:
        one read back from the device (the answer tokens' ids live there already)."""
        probs = torch.softmax(logits.float(), dim=-1)
        accept_ids, reject_ids = self._ids_on(logits.device)
        accept, reject = torch.stack([probs[accept_ids].sum(), probs[reject_ids].sum()]).tolist()
        total = accept + reject
        return Verdict(p_accept=accept / total if total > 0 else 0.5, mass=min(total, 1.0))


    @property
    def answer_ids(self) -> list[int]:
        """The accepting and rejecting answers' token ids."""
        return [*self._accept, *self._reject]

    def read_probs(self, probs: Mapping[int, float]) -> Verdict:
        """The verdict in the probabilities of some next tokens (a server's top-n): verdict
        words missing from them count as 0, which lowers the recorded mass."""
        accept = sum(probs.get(i, 0.0) for i in self._accept)
        reject = sum(probs.get(i, 0.0) for i in self._reject)
        total = accept + reject
        return Verdict(p_accept=accept / total if total > 0 else 0.5, mass=min(total, 1.0))

    def _ids_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The accepting and rejecting token ids as index tensors on `device`, made once."""
        if device not in self._on_device:
            self._on_device[device] = (
                torch.tensor(self._accept, dtype=torch.long, device=device),
                torch.tensor(self._reject, dtype=torch.long, device=device),
            )
        return self._on_device[device]


def judge(session: ModelSession, reader: VerdictReader, *, keep: Sequence[int] = ()) -> Verdict:
    """Ask `session`'s model about the step at the end of its context, then crop the question.

    `keep` names context lengths (e.g. before the step) whose next-token distribution should
    survive, so rewinding there afterwards costs no forward pass.
    """
    length = len(session)
    session.append(reader.suffix_ids)
    logits = session.next_logits(keep=(*keep, length))
    session.truncate(length)
    return reader.read(logits)


def agrees(session: Checker, start: int, end: StepEnd, eos_ids: frozenset[int]) -> bool:
    """Whether `session`'s model would write, greedy, the step it holds from `start`: each of
    its tokens, and the end of the answer where the step ended it. One pass reads the step and
    keeps every length's logits, so a rewrite checking the same step as its seed needs none."""
    step = session.ids[start:]
    choices = session.greedy_choices(start)  # len(step) + 1
    if kept_prefix(choices, step) < len(step):
        return False
    return end is not StepEnd.EOS or choices[len(step)] in eos_ids
