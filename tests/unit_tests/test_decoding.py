"""Per-token host work: step checks decode text only where a delimiter or stop can appear,
and token choice stays on the logits' device in reused buffers."""

from __future__ import annotations

import random

import pytest
import torch

from langchain_confspec import ConfSpecEngine
from langchain_confspec.config import build_config
from langchain_confspec.engine.decoding import (
    StepBuilder,
    StopScanner,
    TokenChooser,
    WrittenStep,
    ends_step,
    quiet_tokens,
    token_texts,
    write_step,
)
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import StepEnd


def test_quiet_tokens_are_those_that_cannot_complete_a_needle(tiny_engine: ConfSpecEngine) -> None:
    tokenizer = tiny_engine.target.tokenizer
    texts = token_texts(tokenizer)
    quiet = quiet_tokens(tokenizer, ["\n\n"])
    assert quiet and all("\n" not in texts[i] for i in quiet)
    assert all(i in quiet for i, text in enumerate(texts) if text and "\n" not in text)
    assert tokenizer.eos_token_id not in quiet  # special tokens decode to nothing on their own
    with_stop = quiet_tokens(tokenizer, ["\n\n", "Answer:"])
    assert with_stop < quiet and all(":" in texts[i] for i in quiet - with_stop)
    assert quiet_tokens(tokenizer, ["\n\n", "the "]) == frozenset()  # a trailing space: decode always


def reference_step(session: ModelSession, ids: list[int], budget: int, delimiters: list[str], stops: list[str]) -> WrittenStep:
    """The step rules applied by decoding after every token (what StepBuilder must equal)."""
    tokenizer, eos, taken = session.loaded.tokenizer, session.loaded.eos_token_ids, []
    scanner = StopScanner(stops)
    for token in ids:
        if token in eos:
            return WrittenStep(taken, tokenizer.decode(taken, skip_special_tokens=True), StepEnd.EOS)
        taken.append(token)
        text = tokenizer.decode(taken, skip_special_tokens=True)
        if (stop_at := scanner.find(text)) is not None:
            return WrittenStep(taken, text, StepEnd.STOP, stop_at)
        if ends_step(text, delimiters):
            return WrittenStep(taken, text, StepEnd.DELIMITER)
        if len(taken) >= budget:
            return WrittenStep(taken, text, StepEnd.LENGTH)
    raise AssertionError("the stream ran out")


def test_lazy_decoding_ends_steps_exactly_where_decoding_every_token_would(
    tiny_engine: ConfSpecEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = ModelSession(tiny_engine.target, [1])
    tokenizer = session.loaded.tokenizer
    texts = token_texts(tokenizer)
    loud = [i for i, t in enumerate(texts) if any(c in t for c in "\n:S")]
    rng = random.Random(0)
    decodes = {"n": 0}
    decode = type(tokenizer).decode

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        decodes["n"] += 1
        return decode(self, *args, **kwargs)

    ends = set()
    tokens_seen = 0
    for trial in range(400):
        delimiters, stops = rng.choice([(["\n\n"], []), (["\n\n"], ["Answer:"]), (["\nStep"], ["STOP"])])
        ids = [rng.choice(loud) if rng.random() < 0.15 else rng.randrange(len(tokenizer)) for _ in range(60)]
        if stops and rng.random() < 0.5:  # spell a stop string somewhere, across its tokens
            at = rng.randrange(len(ids))
            ids[at:at] = tokenizer.encode("x" + stops[0], add_special_tokens=False)
        budget = rng.randrange(1, 40)
        expected = reference_step(session, ids, budget, delimiters, stops)
        monkeypatch.setattr(type(tokenizer), "decode", counting)
        builder = StepBuilder(session, budget=budget, delimiters=delimiters, stops=StopScanner(stops))
        got = next(done for token in ids if (done := builder.add(token)) is not None)
        monkeypatch.undo()
        assert (got.ids, got.text, got.end, got.stop_at) == (expected.ids, expected.text, expected.end, expected.stop_at), trial
        ends.add(got.end)
        tokens_seen += len(got.ids)
    assert ends == set(StepEnd)
    assert decodes["n"] < 0.6 * tokens_seen  # most tokens cost a set lookup, not a decode


def test_distribution_matches_temperature_and_top_p_on_a_reused_buffer() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    chooser = TokenChooser(build_config(temperature=0.7, top_p=0.8, seed=1))
    probs = torch.softmax(logits / 0.7, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    ordered[torch.cumsum(ordered, 0) - ordered >= 0.8] = 0.0
    expected = torch.zeros_like(probs).scatter_(0, order, ordered)
    expected /= expected.sum()
    first = chooser.distribution(logits)
    torch.testing.assert_close(first, expected)
    assert chooser.distribution(logits * 2).data_ptr() == first.data_ptr()  # no new vocabulary-sized tensor


def test_choices_are_seeded_and_respect_the_allowed_set() -> None:
    logits = torch.randn(500, generator=torch.Generator().manual_seed(4))
    draws = [[TokenChooser(build_config(temperature=1.0, seed=9)).choose(logits) for _ in range(1)] for _ in range(2)]
    assert draws[0] == draws[1]
    chooser = TokenChooser(build_config(temperature=1.0, seed=9))
    sequence = [chooser.choose(logits) for _ in range(30)]
    assert len(set(sequence)) > 1
    allowed = [3, 77, 401]
    assert all(chooser.choose_among(logits, allowed) in allowed for _ in range(30))
    greedy = TokenChooser(build_config())
    assert greedy.choose_among(logits, allowed) == max(allowed, key=lambda i: float(logits[i]))


@pytest.mark.parametrize("fast_path", ["off", "static"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_decode_loop_reads_back_nothing_but_the_chosen_ids(
    tiny_engine: ConfSpecEngine, monkeypatch: pytest.MonkeyPatch, fast_path: str, temperature: float
) -> None:
    config = build_config(temperature=temperature, top_p=0.9, seed=2, fast_path=fast_path)
    kv, _, _ = tiny_engine.fast_paths.backend("target", tiny_engine.fast_paths.resolve(config.fast_path, "target").path)
    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv)
    session.next_logits()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor was copied to the host")

    for name in ("cpu", "tolist", "numpy", "item"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    step = write_step(session, TokenChooser(config), budget=24, delimiters=["\n\n"], stops=StopScanner([]))
    monkeypatch.undo()
    assert step.ids and len(session) == 3 + len(step.ids)


def test_streamed_pieces_of_a_step_join_to_its_text_and_a_stop_is_never_released(tiny_engine: ConfSpecEngine) -> None:
    from langchain_confspec.engine.decoding import write_step_texts

    for question in ("Hello world", "What is 12 * 12?"):
        session = ModelSession(tiny_engine.target, tiny_engine.target.render_prompt([{"role": "user", "content": question}]))
        texts = write_step_texts(session, TokenChooser(build_config()), budget=24, delimiters=["\n\n"], stops=StopScanner([]), stream=True)
        pieces = []
        while True:
            try:
                pieces.append(next(texts))
            except StopIteration as written:
                step: WrittenStep = written.value
                break
        assert len(pieces) > 1 and all(pieces) and "".join(pieces) == step.text
        assert session.tokens_written == sum(t not in session.loaded.eos_token_ids for t in step.ids)
    builder = StepBuilder(session, budget=8, delimiters=["\n\n"], stops=StopScanner(["STOP"]))
    assert builder.new_text(WrittenStep([1, 2], "STOP and after", StepEnd.STOP, stop_at=0)) == ""
    assert builder.new_text(WrittenStep([1, 2], "ok STOP", StepEnd.STOP, stop_at=3)) == "ok "


def test_a_step_cut_by_a_stop_counts_the_tokens_whose_text_begins_before_it(tiny_engine: ConfSpecEngine) -> None:
    """`tokens_before_stop`: the tokens up to the one that reaches into the stop string."""
    tokenizer = tiny_engine.target.tokenizer
    prompt = tiny_engine.target.render_prompt([{"role": "user", "content": "Hello world"}])
    plain = write_step(ModelSession(tiny_engine.target, prompt), TokenChooser(build_config()), budget=24, delimiters=["\n\n"], stops=StopScanner([]))
    firsts = [at for at in range(len(plain.text) - 3) if plain.text.find(plain.text[at : at + 3]) == at]
    assert firsts[0] == 0 and len(firsts) >= 4
    for at in firsts[:4]:  # stop strings whose first occurrence begins there (the first at the step's start)
        stop = plain.text[at : at + 3]
        step = write_step(ModelSession(tiny_engine.target, prompt), TokenChooser(build_config()), budget=24, delimiters=["\n\n"], stops=StopScanner([stop]))
        before = step.tokens_before_stop
        assert step.end is StepEnd.STOP and step.stop_at == at and before is not None and step.n_tokens == before
        if at == 0:
            assert before == 0  # the stop string is the whole step: no token counts
        else:
            assert len(tokenizer.decode(step.ids[: before - 1])) < at <= len(tokenizer.decode(step.ids[:before]))


def test_writers_yield_text_only_when_streaming(tiny_engine: ConfSpecEngine) -> None:
    from langchain_confspec.engine.decoding import write_step_texts

    prompt = tiny_engine.target.render_prompt([{"role": "user", "content": "What is 12 * 12?"}])
    rules = {"budget": 12, "delimiters": ["\n\n"], "stops": StopScanner([])}
    plain = write_step(ModelSession(tiny_engine.target, prompt), TokenChooser(build_config()), **rules)
    for seed in ([], list(plain.ids)):  # from scratch, and a rewrite checking a seed first
        session = ModelSession(tiny_engine.target, [*prompt, *seed])
        texts = write_step_texts(session, TokenChooser(build_config()), seed=seed, **rules)
        assert next(texts, None) is None  # nothing yielded: the step is only returned
        assert session.ids == [*prompt, *plain.ids]


def test_an_opener_ends_the_step_right_after_it_wherever_it_stands(tiny_engine: ConfSpecEngine) -> None:
    """A tool call's opening tag ends the step at once, at the step's start too (where a
    delimiter would not: it needs content before it), so the call can be a step of its own."""
    tokenizer = tiny_engine.target.tokenizer
    session = ModelSession(tiny_engine.target, tiny_engine.target.render_prompt([{"role": "user", "content": "Hi"}]))
    for before in ("I will call it. ", ""):
        ids = tokenizer.encode(before + '<tool_call>\n{"name": "x"}', add_special_tokens=False)
        endings = {}
        for opener in ("<tool_call>", ""):
            builder = StepBuilder(session, budget=len(ids), delimiters=["\n\n", "\n"], stops=StopScanner([]), opener=opener)
            endings[opener] = next(done for done in map(builder.add, ids) if done is not None)
        assert endings["<tool_call>"].end is StepEnd.DELIMITER and endings["<tool_call>"].text == before + "<tool_call>"
        assert len(endings[""].text) > len(before + "<tool_call>")  # without it, the step runs on
