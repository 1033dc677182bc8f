"""ModelSession: lazy batched reading, rolling back, and exact logits after rewinding, over a
dynamic cache and over a static one."""

from __future__ import annotations

import pytest
import torch

from langchain_confspec import ConfSpecEngine
from langchain_confspec.cuda_graphs import EagerRehearsal
from langchain_confspec.session import DynamicKV, KVBackend, ModelSession, StaticKV
from langchain_confspec.static_runner import StaticRunner


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


def test_room_counts_down_to_the_context_window(tiny_engine: ConfSpecEngine) -> None:
    session = ModelSession(tiny_engine.target, [5] * 10)
    assert session.room == tiny_engine.target.context_length - 10
