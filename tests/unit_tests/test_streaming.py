"""Token streaming: text streams as soon as it is final, provisional draft text reaches only
`confspec_draft_token` events, and the joined chunks are always the invoked answer."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from langchain_confspec import ConfSpecChatModel

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
ACCEPT_ALL = {"accept_threshold": 0.0, "reject_threshold": 1.5, "verdict_mass_floor": 0.0}
REJECT_ALL = {"accept_threshold": 1.5, "target_accept_threshold": 2.0}


class Timeline(BaseCallbackHandler):
    """Tokens and events in the order the model run sent them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.items.append(("token", token))

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.items.append((name, data))

    def named(self, name: str) -> list[Any]:
        return [data for kind, data in self.items if kind == name]


@pytest.fixture(scope="module")
def chat(tiny_model_params: dict[str, str]) -> ConfSpecChatModel:
    return ConfSpecChatModel(**tiny_model_params, max_tokens=30, max_step_tokens=8)


def streamed(chat: ConfSpecChatModel, **settings: Any) -> tuple[list[str], Timeline, str]:
    timeline = Timeline()
    chunks = [str(c.content) for c in chat.stream(QUESTION, config={"callbacks": [timeline]}, **settings)]
    return chunks, timeline, str(chat.invoke(QUESTION, **settings).content)


@pytest.mark.parametrize("mode", ["target_only", "draft_only"])
def test_plain_modes_stream_token_by_token_before_the_step_is_announced(chat: ConfSpecChatModel, mode: str) -> None:
    chunks, timeline, answer = streamed(chat, mode=mode)
    steps = timeline.named("confspec_step")
    assert "".join(chunks) == answer
    assert len([c for c in chunks if c]) > len(steps)  # finer than one chunk per step
    first_step_event = next(i for i, (kind, _) in enumerate(timeline.items) if kind == "confspec_step")
    assert timeline.items[0][0] == "token" and first_step_event > 1  # text came before the step was done
    assert timeline.named("confspec_draft_token") == []


def test_draft_text_awaiting_a_verdict_reaches_events_only_and_streams_once_kept(chat: ConfSpecChatModel) -> None:
    chunks, timeline, answer = streamed(chat, **ACCEPT_ALL)
    steps = timeline.named("confspec_step")
    assert all(step["decision"] == "accepted_by_draft" for step in steps)
    assert "".join(chunks) == answer
    assert [c for c in chunks if c] == [s["text"] for s in steps if s["text"]]  # whole steps, once kept
    drafts = timeline.named("confspec_draft_token")
    for step in steps:  # each step's draft tokens, then its fate
        mine = [i for i, (kind, data) in enumerate(timeline.items) if kind == "confspec_draft_token" and data["step"] == step["index"]]
        fate = next(i for i, (kind, data) in enumerate(timeline.items) if kind == "confspec_step" and data["index"] == step["index"])
        assert mine and max(mine) < fate
        assert "".join(timeline.items[i][1]["text"] for i in mine) == step["text"]
    assert len(drafts) > len(steps)


def test_rewrites_stream_as_the_target_writes_them_and_rejected_drafts_never_do(chat: ConfSpecChatModel) -> None:
    chunks, timeline, answer = streamed(chat, **REJECT_ALL)
    steps = timeline.named("confspec_step")
    assert steps and all(step["regenerated"] for step in steps)
    assert "".join(chunks) == answer
    assert len([c for c in chunks if c]) > len(steps)
    rejected = "".join(step["rejected_text"] for step in steps)
    assert "".join(d["text"] for d in timeline.named("confspec_draft_token")) == rejected


def test_token_speculated_steps_stream_too(chat: ConfSpecChatModel) -> None:
    chunks, timeline, answer = streamed(chat, mode="target_only", token_speculation=True)
    assert "".join(chunks) == answer
    assert len([c for c in chunks if c]) > len(timeline.named("confspec_step"))


def test_stop_strings_are_held_back_from_token_streams(chat: ConfSpecChatModel) -> None:
    full = str(chat.invoke(QUESTION, mode="target_only").content)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    chunks, _, answer = streamed(chat, mode="target_only", stop=[stop])
    assert answer == full[: full.index(stop)]
    assert "".join(chunks) == answer and not any(stop in c for c in chunks)


def test_on_llm_new_token_gets_what_the_chunks_carry(chat: ConfSpecChatModel) -> None:
    timeline = Timeline()
    chunks = [str(c.content) for c in chat.stream(QUESTION, config={"callbacks": [timeline]}, mode="target_only")]
    assert timeline.named("token") == chunks
    invoked = Timeline()
    message = chat.invoke(QUESTION, config={"callbacks": [invoked]}, mode="target_only", stream=True)
    assert "".join(invoked.named("token")) == message.content and len(invoked.named("token")) > 1


async def test_astream_streams_the_same_tokens(chat: ConfSpecChatModel) -> None:
    chunks = [str(c.content) async for c in chat.astream(QUESTION, mode="target_only")]
    assert chunks == [str(c.content) for c in chat.stream(QUESTION, mode="target_only")]
    assert "".join(chunks) == (await chat.ainvoke(QUESTION, mode="target_only")).content
