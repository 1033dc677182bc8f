"""Reading verdicts from next-token distributions, and custom verification prompts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from langchain_confspec import ConfigurationError, ConfSpecEngine
from langchain_confspec.config import build_config
from langchain_confspec.demo import DEMO_PAIR_DIR
from langchain_confspec.engine.gate import GateAction, gate, target_accepts
from langchain_confspec.engine.verification import VerdictReader
from langchain_confspec.models.tiny import build_tokenizer

TURNS = [{"role": "user", "content": "What is 12 * 12?"}]


def peaked_logits(tokenizer, text: str, size: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    logits = torch.full((size,), -20.0)
    logits[tokenizer.encode(text, add_special_tokens=False)[0]] = 10.0
    return logits


def test_binary_verdict_follows_yes_and_no() -> None:
    tokenizer = build_tokenizer()
    reader = VerdictReader(tokenizer, build_config())
    yes = reader.read(peaked_logits(tokenizer, " Yes", len(tokenizer)))
    no = reader.read(peaked_logits(tokenizer, "No", len(tokenizer)))
    assert yes.accepts and yes.confidence > 0.99
    assert not no.accepts and no.confidence > 0.99
    assert reader.read(torch.zeros(len(tokenizer))).confidence < 0.75  # flat: unsure


def test_a_single_letter_is_not_a_verdict() -> None:
    """The demo tokenizer spells "no" as "n" + "o": a bare "n" must not count as a No."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO_PAIR_DIR / "target")
    reader = VerdictReader(tokenizer, build_config())
    assert reader.read(peaked_logits(tokenizer, " Yes", len(tokenizer))).confidence > 0.99
    for letter in ("n", " n", "N", "y", "Y"):
        assert len(tokenizer.encode(letter, add_special_tokens=False)) == 1
        assert reader.read(peaked_logits(tokenizer, letter, len(tokenizer))).confidence < 0.75


@pytest.mark.parametrize(("score", "passes"), [("9", True), ("7", True), ("6", False), ("0", False)])
def test_score_verdict_passes_at_the_pass_mark(score: str, passes: bool) -> None:
    tokenizer = build_tokenizer()
    reader = VerdictReader(tokenizer, build_config(verification="score", score_pass_mark=7))
    verdict = reader.read(peaked_logits(tokenizer, score, len(tokenizer)))
    assert verdict.accepts is passes and verdict.confidence > 0.99


def word_tokenizer(words: dict[str, int], *, no_reads_as_yes: bool = False):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if no_reads_as_yes:
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("no", "yes")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_a_tokenizer_that_cannot_spell_the_verdict_words_gets_the_words_and_the_fix() -> None:
    blind = word_tokenizer({"[UNK]": 0, "step": 1})  # Yes and No are both [UNK], which is no verdict
    with pytest.raises(ConfigurationError, match=r"draft tokenizer cannot write the verdict words Yes/yes/YES.*verification='score'"):
        VerdictReader(blind, build_config(), role="draft")
    with pytest.raises(ConfigurationError, match=r"verdict words 7, 8, 9 as tokens.*verification='binary'"):
        VerdictReader(blind, build_config(verification="score"))


@pytest.mark.parametrize(("known", "missing"), [("yes", "No/no/NO"), ("no", "Yes/yes/YES")])
def test_one_missing_verdict_word_is_enough_to_refuse_and_is_named(known: str, missing: str) -> None:
    half = word_tokenizer({"[UNK]": 0, known: 1})
    with pytest.raises(ConfigurationError, match=f"cannot write the verdict words {missing} as tokens"):
        VerdictReader(half, build_config())


def test_words_that_begin_alike_are_refused_naming_the_token() -> None:
    merged = word_tokenizer({"[UNK]": 0, "yes": 1}, no_reads_as_yes=True)
    with pytest.raises(
        ConfigurationError,
        match=r"accepting answers \(Yes/yes/YES\) and rejecting ones \(No/no/NO\) begin with the same token \('yes'\)",
    ):
        VerdictReader(merged, build_config())


def test_a_tokenizer_that_adds_a_bos_token_reads_verdicts_without_it() -> None:
    """The verdict words' first tokens and the suffix are the text's own tokens, never the
    beginning-of-sequence token a tokenizer adds to whole texts."""
    from tokenizers import processors

    tokenizer = word_tokenizer({"[UNK]": 0, "[BOS]": 1, "Yes": 2, "No": 3, "Answer": 4, ":": 5})
    tokenizer.add_special_tokens({"bos_token": "[BOS]"})
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    assert tokenizer.encode("Yes")[0] == 1  # whole texts do begin with it
    reader = VerdictReader(tokenizer, build_config(verification_prompt="Answer:"))
    assert reader.suffix_ids == [4, 5]
    assert reader.read(peaked_logits(tokenizer, "Yes", len(tokenizer))).accepts
    assert not reader.read(peaked_logits(tokenizer, "No", len(tokenizer))).accepts


def test_two_letters_of_a_longer_word_make_a_verdict_token() -> None:
    """A tokenizer that splits "Yes" as "Ye" + "s" answers with "Ye": that is a Yes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "Y": 1, "e": 2, "s": 3, "Ye": 4, "N": 5, "o": 6, "No": 7}
    backend = Tokenizer(models.BPE(vocab, [("Y", "e"), ("N", "o")], unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    reader = VerdictReader(tokenizer, build_config())
    assert reader.read(peaked_logits(tokenizer, "Ye", len(tokenizer))).accepts


def test_a_score_above_the_scale_is_no_verdict() -> None:
    """Scores run 0-9: a tokenizer with a "10" token does not pass a step with it."""
    digits = {str(d): d + 1 for d in range(11)}
    tokenizer = word_tokenizer({"[UNK]": 0, **digits})
    reader = VerdictReader(tokenizer, build_config(verification="score", score_pass_mark=7))
    assert reader.read(peaked_logits(tokenizer, "9", len(tokenizer))).accepts
    assert reader.read(peaked_logits(tokenizer, "10", len(tokenizer))).mass < 0.01


def test_the_verdict_mass_is_read_and_a_low_one_is_no_confident_verdict(tiny_engine: ConfSpecEngine) -> None:
    reader = VerdictReader(tiny_engine.draft.tokenizer, build_config())
    logits = torch.full((len(tiny_engine.draft.tokenizer),), -30.0)
    logits[reader._accept[0]] = 0.0
    assert reader.read(logits).mass == pytest.approx(1.0) and reader.read(logits).p_accept == pytest.approx(1.0)
    logits[5] = 3.0  # most of the probability goes to an answer that is no verdict
    verdict = reader.read(logits)
    assert verdict.p_accept == pytest.approx(1.0) and verdict.mass < 0.1
    config = build_config(accept_threshold=0.5, verdict_mass_floor=0.5)
    assert gate(verdict, config) is GateAction.ESCALATE
    assert gate(verdict, build_config(accept_threshold=0.5, verdict_mass_floor=0.0)) is GateAction.ACCEPT
    assert not target_accepts(verdict, config) and target_accepts(verdict, build_config(verdict_mass_floor=0.0))


def test_score_style_runs_end_to_end(tiny_engine: ConfSpecEngine) -> None:
    result = tiny_engine.generate(TURNS, build_config(verification="score", max_tokens=24, max_step_tokens=8))
    assert result.records and all(0.5 <= r.draft_confidence <= 1.0 for r in result.records)  # type: ignore[operator]


def test_custom_verification_prompt_is_what_the_draft_reads(tiny_engine: ConfSpecEngine) -> None:
    settings = {"max_tokens": 24, "max_step_tokens": 8, "accept_threshold": 0.0, "reject_threshold": 0.0}
    default = tiny_engine.generate(TURNS, build_config(**settings))
    longer_prompt = "\n\nCheck the arithmetic of the last step above carefully. Is it correct? Answer Yes or No.\nAnswer:"
    custom = tiny_engine.generate(TURNS, build_config(**settings, verification_prompt=longer_prompt))
    tokenizer = tiny_engine.draft.tokenizer
    extra = len(tokenizer.encode(longer_prompt)) - len(tokenizer.encode(build_config().verification_suffix))
    assert extra > 0
    judgements = len(custom.records)
    assert len(default.records) == judgements
    assert custom.summary.draft.forward_tokens - default.summary.draft.forward_tokens == extra * judgements
