"""ModelSession: lazy batched reading, reading ahead of the host, rolling back, and exact logits
after rewinding, over a dynamic cache and over a static one."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from langchain_confspec import ConfSpecEngine
from langchain_confspec.models.cuda_graphs import EagerRehearsal
from langchain_confspec.models.session import (
    DynamicKV,
    KVBackend,
    ModelSession,
    StaticKV,
)
from langchain_confspec.models.static_runner import StaticRunner


@pytest.fixture(params=["dynamic", "static"])
def kv(request: pytest.FixtureRequest, tiny_engine: ConfSpecEngine) -> KVBackend:
    if request.param == "dynamic":
        return DynamicKV(tiny_engine.target)
    return StaticKV(StaticRunner(tiny_engine.target, 128, EagerRehearsal()), graphs=False)


def fresh_logits(session: ModelSession, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return session.loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_pending_tokens_are_read_in_one_pass(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    session = ModelSession(tiny_engine.target, [5, 6, 7, 8], kv=kv)
    session.next_logits()
    session.append([9, 10, 11])
    logits = session.next_logits()
    assert session.forward_passes == 2
    assert session.forward_tokens == 7
    torch.testing.assert_close(logits, fresh_logits(session, [5, 6, 7, 8, 9, 10, 11]), rtol=1e-4, atol=1e-4)


def test_truncate_to_a_kept_length_costs_no_forward_pass(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    session = ModelSession(tiny_engine.target, [5, 6, 7, 8], kv=kv)
    before = session.next_logits().clone()
    session.append([20, 21, 22])
    session.next_logits(keep=(4, 6))
    passes = session.forward_passes
    session.truncate(4)
    assert torch.equal(session.next_logits(), before)
    session.append([20, 21])
    session.truncate(6)  # nothing to crop: [20, 21] are unread again
    assert session.forward_passes == passes
    assert session.ids == [5, 6, 7, 8, 20, 21]


def test_truncate_to_an_unkept_length_rereads_one_token(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    session = ModelSession(tiny_engine.target, [5, 6, 7, 8, 9, 10], kv=kv)
    session.next_logits()
    session.truncate(3)
    tokens = session.forward_tokens
    logits = session.next_logits()
    assert session.forward_tokens == tokens + 1
    torch.testing.assert_close(logits, fresh_logits(session, [5, 6, 7]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("read_first", [0, 2], ids=["nothing-read", "part-read"])
def test_logits_from_gives_every_length_in_one_pass_and_rolls_back_to_any_of_them(
    tiny_engine: ConfSpecEngine, kv: KVBackend, read_first: int
) -> None:
    """`logits_from(start)`, `start` remembered: the next-token logits at every length from
    it on, in one pass; truncating to any of those lengths then costs no pass."""
    prompt = [5, 6, 7, 8]
    session = ModelSession(tiny_engine.target, prompt, kv=kv)
    session.next_logits()
    session.append([20, 21, 22, 23][:read_first])
    start = len(session)  # remembered here, as the engine does before a proposal or a seed
    session.next_logits(keep=(start,))
    session.append([30, 31, 32])
    passes = session.forward_passes
    rows = session.logits_from(start)
    assert rows.shape[0] == len(session) - start + 1 and session.forward_passes == passes + 1
    for offset, row in enumerate(rows):
        torch.testing.assert_close(row, fresh_logits(session, session.ids[: start + offset]), rtol=1e-4, atol=1e-4)
    for length in (len(session) - 1, start):
        session.truncate(length)
        torch.testing.assert_close(session.next_logits(), rows[length - start])
    assert session.forward_passes == passes + 1


def test_a_length_kept_by_an_earlier_read_stays_kept_while_named(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    """Naming several lengths forgets only those before the shortest: the step's start, kept
    by an earlier read, still rolls back without a pass."""
    session = ModelSession(tiny_engine.target, [5, 6, 7, 8], kv=kv)
    at_start = session.next_logits().clone()
    session.append([20, 21])
    session.next_logits(keep=(4,))
    session.append([22])
    session.next_logits(keep=(4, 6))
    passes = session.forward_passes
    session.truncate(4)
    assert torch.equal(session.next_logits(), at_start) and session.forward_passes == passes


def test_only_named_lengths_are_remembered(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    """Logits are copied and kept only for the lengths a caller names: memory stays bounded."""
    session = ModelSession(tiny_engine.target, [5, 6, 7, 8], kv=kv)
    session.next_logits()
    assert not session._checkpoints
    session.append([20])
    session.next_logits(keep=(4,))
    session.next_logits(keep=(4,))
    assert sorted(session._checkpoints) == [4]


def test_truncate_to_the_first_token_and_to_nothing(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv)
    session.next_logits()
    session.truncate(1)
    torch.testing.assert_close(session.next_logits(), fresh_logits(session, [5]), rtol=1e-4, atol=1e-4)
    session.truncate(0)
    session.append([9, 10])
    torch.testing.assert_close(session.next_logits(), fresh_logits(session, [9, 10]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [-1, 4])
def test_truncate_outside_the_context_is_refused(tiny_engine: ConfSpecEngine, length: int) -> None:
    session = ModelSession(tiny_engine.target, [5, 6, 7])
    with pytest.raises(ValueError, match=f"cannot truncate a context of 3 tokens to {length}"):
        session.truncate(length)


def test_choose_next_picks_after_all_ids(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    from langchain_confspec.config import build_config
    from langchain_confspec.engine.decoding import TokenChooser

    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv)
    chooser = TokenChooser(build_config())
    for _ in range(3):
        token = session.choose_next(chooser)
        assert token == int(torch.argmax(fresh_logits(session, session.ids)[: tiny_engine.target.vocab_size]))
        session.append([token])


class ChoosingKV(DynamicKV):
    """A backend that chooses the next token itself after one-token passes, as a batched
    decode step does (always token 7 here, so its choice is told apart from the argmax)."""

    def forward(self, tokens: Sequence[int] | torch.Tensor, start: int, n_rows: int) -> torch.Tensor:
        logits = super().forward(tokens, start, n_rows)
        self.last_choice = 7 if self.pick is not None else None
        return logits


def test_a_choice_made_by_the_backend_is_taken_once_and_only_after_a_one_token_pass(tiny_engine: ConfSpecEngine) -> None:
    from langchain_confspec.config import build_config
    from langchain_confspec.engine.decoding import TokenChooser

    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=ChoosingKV(tiny_engine.target))
    chooser = TokenChooser(build_config())
    argmax = int(torch.argmax(fresh_logits(session, [5, 6, 7])[: tiny_engine.target.vocab_size]))
    assert argmax != 7 and session.choose_next(chooser) == argmax  # the prompt's pass chose nothing
    session.append([argmax])
    assert session.choose_next(chooser) == 7  # a one-token pass: the backend's choice
    after = int(torch.argmax(fresh_logits(session, session.ids)[: tiny_engine.target.vocab_size]))
    assert after != 7 and session.choose_next(chooser) == after  # used once: no pass, the chooser's own choice


def test_room_counts_down_to_the_context_window(tiny_engine: ConfSpecEngine) -> None:
    session = ModelSession(tiny_engine.target, [5] * 10)
    assert session.room == tiny_engine.target.context_length - 10


# -- reading ahead: ids still on the device ---------------------------------------------------------


@pytest.mark.parametrize("pending", [[], [9, 10]], ids=["all-read", "with-pending"])
def test_reading_ahead_gives_the_logits_reading_the_ids_would(
    tiny_engine: ConfSpecEngine, kv: KVBackend, pending: list[int]
) -> None:
    """`read_ahead(keep=True)` reads pending ids and the device's in one pass and returns the
    logits before and after each device token, as `logits_from` does; once `settle` names the
    tokens, rolling back to any of those lengths costs no pass and gives the same logits."""
    session = ModelSession(tiny_engine.target, [5, 6, 7, 8], kv=kv)
    session.next_logits()
    session.append(pending)
    base = len(session)
    rows = session.read_ahead(torch.tensor([20, 21, 22]), keep=True)
    assert rows.shape[0] == 4 and session.forward_passes == 2
    session.settle([20, 21, 22])
    assert session.ids == [5, 6, 7, 8, *pending, 20, 21, 22] and session.forward_tokens == 4 + len(pending) + 3
    for offset in range(4):
        torch.testing.assert_close(rows[offset], fresh_logits(session, session.ids[: base + offset]), rtol=1e-4, atol=1e-4)
    session.truncate(base + 1)
    torch.testing.assert_close(session.next_logits(), rows[1])
    assert session.forward_passes == 2


def test_reading_ahead_token_by_token_follows_the_tokens(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    """A draft's proposal fed back one device token at a time: each read gives the logits after
    that token, and an unkept rollback afterwards re-reads as usual."""
    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv)
    session.next_logits()
    for token in (30, 31, 32):
        (logits,) = session.read_ahead(torch.tensor([token]))
    torch.testing.assert_close(logits, fresh_logits(session, [5, 6, 7, 30, 31, 32]), rtol=1e-4, atol=1e-4)
    session.settle([30, 31, 32])
    session.truncate(4)
    torch.testing.assert_close(session.next_logits(), fresh_logits(session, [5, 6, 7, 30]), rtol=1e-4, atol=1e-4)


def test_tokens_read_ahead_must_be_named_before_anything_else(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    """Ids still on the device hold the session until `settle` names them: nothing can be
    appended, read or rolled back in between, and naming the wrong number is refused."""
    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv)
    assert session.read_ahead(torch.tensor([8, 9])).shape == (2, tiny_engine.target.vocab_size)  # the prompt read too
    for action in (lambda: session.append([1]), session.next_logits, lambda: session.truncate(2)):
        with pytest.raises(RuntimeError, match="2 tokens were read ahead and not settled"):
            action()
    with pytest.raises(ValueError, match="1 ids named for 2 tokens"):
        session.settle([8])
    session.settle([8, 9])
    assert session.ids == [5, 6, 7, 8, 9] and session.forward_tokens == 5
    session.truncate(4)
    assert session.ids == [5, 6, 7, 8]


def test_a_session_counts_from_zero_and_reads_through_the_backend_it_was_given(tiny_engine: ConfSpecEngine) -> None:
    runner = StaticRunner(tiny_engine.target, 128, EagerRehearsal())
    kv = StaticKV(runner, graphs=False)
    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv, fast_path="static")
    counters = session.counters()
    assert (counters.prompt_tokens, counters.tokens_written, counters.forward_passes, counters.forward_tokens) == (3, 0, 0, 0)
    session.next_logits()
    session.append([8])
    session.next_logits()
    assert kv.batch_sizes == [1, 1]  # both passes ran in the static cache's row, alone
    assert session.counters().fast_path == "static" and session.forward_tokens == 4


def test_reading_ahead_remembers_only_the_latest_rounds_lengths(tiny_engine: ConfSpecEngine, kv: KVBackend) -> None:
    """Each round's logits are kept for its rollback and the older rounds' forgotten, so memory
    stays bounded over a long answer."""
    session = ModelSession(tiny_engine.target, [5, 6, 7], kv=kv)
    for round_tokens in ([20, 21], [22, 23, 24]):
        end = len(session)
        session.read_ahead(torch.tensor(round_tokens), keep=True)
        session.settle(round_tokens)
        assert sorted(session._checkpoints) == list(range(end, end + len(round_tokens) + 1))
