"""Step delimiters, stop strings and streamed text, on plain strings."""

from __future__ import annotations

from langchain_confspec.engine.decoding import StopHoldback, StopScanner, ends_step


def test_a_step_ends_at_a_delimiter_after_content() -> None:
    assert ends_step("3 + 4 = 7.\n\n", ["\n\n"])
    assert ends_step("3 + 4 = 7.\n\nSo", ["\n\n"])
    assert not ends_step("3 + 4 = 7.\n", ["\n\n"])


def test_leading_blank_lines_belong_to_the_step() -> None:
    assert not ends_step("\n\n", ["\n\n"])
    assert not ends_step("\n\n  Step", ["\n\n"])
    assert ends_step("\n\nStep 1.\n\n", ["\n\n"])


def test_any_of_several_delimiters_ends_a_step() -> None:
    assert ends_step("First, add.\nThen", ["\n\n", "\nThen"])


def test_stop_found_across_step_boundaries() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.find("the answer ST") is None
    scanner.advance("the answer ST")
    assert scanner.find("OP and more") == -2
    assert scanner.find("nothing") is None
    longest = StopScanner(["STOP", "X"])  # all but the last character in the steps before
    longest.advance("the answer S")
    longest.advance("TO")
    assert longest.find("P") == -3


def test_holdback_releases_text_that_cannot_start_a_stop() -> None:
    holdback = StopHoldback(["STOP"])
    assert holdback.feed("the answer ST") == "the answer "
    assert holdback.feed("AR is bright") == "STAR is bright"
    assert holdback.finish("the answer STAR is bright") == ""


def test_holdback_never_releases_a_stop_that_straddles_steps() -> None:
    holdback = StopHoldback(["STOP"])
    streamed = holdback.feed("one ST") + holdback.feed("OP two")
    final = "one "
    assert final.startswith(streamed)
    assert streamed + holdback.finish(final) == final


def test_holdback_keeps_the_longest_start_of_a_stop() -> None:
    held = StopHoldback(["SSX"])
    assert held.feed("aSS") == "a"  # "S" and "SS" could both begin it: the longer is held
    assert StopHoldback(["SX"]).feed("aS") == "a"  # a stop's first character alone is held too
    assert StopHoldback(["B", "A"]).feed("xAyB") == "x"  # the earliest whole stop cuts


def test_held_back_text_comes_out_at_the_end_so_the_stream_is_the_answer() -> None:
    held = StopHoldback(["STOP"])
    streamed = held.feed("abc S") + held.feed("x, then ST")
    assert streamed == "abc Sx, then "
    assert streamed + held.finish("abc Sx, then STAY") == "abc Sx, then STAY"


def test_holdback_without_stops_releases_everything() -> None:
    holdback = StopHoldback([])
    assert holdback.feed("abc") == "abc"
    assert holdback.finish("abc") == ""


def test_the_step_after_a_received_one_starts_right_after_it() -> None:
    """A step the other model wrote (re-tokenized here) is a chunk of its own: the next step
    written in this tokenizer releases its whole text, from its first character."""
    from langchain_confspec.engine.answer_text import AnswerText
    from langchain_confspec.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    answer = AnswerText(tokenizer)
    received = "Tom has 3 apples."
    answer.receive(tokenizer.encode(received, add_special_tokens=False), received)
    step = tokenizer.encode(" He buys 4 more.", add_special_tokens=False)
    expected = tokenizer.decode(tokenizer.encode(received + " He buys 4 more.", add_special_tokens=False))[len(received) :]
    assert expected.strip() == "He buys 4 more."
    assert answer.settled(step) == expected
    answer.release(step, expected)
    assert answer.text == received + expected


def test_a_stop_at_the_very_start_and_the_first_of_several_stops_are_found() -> None:
    assert StopScanner(["STOP"]).find("STOP now") == 0
    assert StopScanner(["B", "A"]).find("xAyB") == 1  # the earliest match, whichever stop it is


def test_token_texts_decode_each_token_alone_for_any_tokenizer() -> None:
    """Fast tokenizers decode the whole vocabulary in one batch; any other tokenizer one token
    at a time: the same texts either way."""
    from langchain_confspec.engine.decoding import token_texts
    from langchain_confspec.models.tiny import build_tokenizer

    fast = build_tokenizer()

    class PlainTokenizer:  # no Rust backend
        def __len__(self) -> int:
            return len(fast)

        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            return fast.decode(ids, skip_special_tokens=skip_special_tokens)

    assert token_texts(PlainTokenizer()) == token_texts(fast) == [fast.decode([i], skip_special_tokens=True) for i in range(len(fast))]  # type: ignore[arg-type]
