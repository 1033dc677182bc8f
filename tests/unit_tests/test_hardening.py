"""Hardening: load, fairness, cancellation, injected faults, fuzzed input, limits, release.

All on the tiny local pair, greedy, so that every answer can be compared with the answer the
same call gives alone.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_confspec import ConfSpecChatModel, ConfSpecError, StepEnd
from langchain_confspec.errors import (
    ContextLengthError,
    GenerationError,
    ModelOutOfMemoryError,
)
from langchain_confspec.models.batching import BatchScheduler
from langchain_confspec.models.tiny import build_tiny_pair

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


@pytest.fixture
def model(tiny_model_params: dict[str, str]) -> ConfSpecChatModel:
    return ConfSpecChatModel(**tiny_model_params, max_tokens=24, max_step_tokens=8, accept_threshold=0.6)


# -- load and fairness ----------------------------------------------------------------------------


def test_slots_are_served_in_arrival_order() -> None:
    scheduler = BatchScheduler(1, run_batch=lambda role, jobs: [])
    served: list[int] = []
    threads = []
    with scheduler.slot():
        for n in range(6):
            thread = threading.Thread(target=lambda n=n: _take(scheduler, served, n))
            thread.start()
            deadline = time.monotonic() + 10
            while scheduler._tickets < n + 2 and time.monotonic() < deadline:  # thread n is queued
                time.sleep(0.001)
            threads.append(thread)
    for thread in threads:
        thread.join(timeout=10)
    assert served == list(range(6))


def _take(scheduler: BatchScheduler, served: list[int], n: int) -> None:
    with scheduler.slot():
        served.append(n)


def test_32_tasks_and_8_threads_get_their_own_answers(model: ConfSpecChatModel) -> None:
    questions = [f"{QUESTION} ({n})" for n in range(40)]
    expected = {q: model.invoke(q).content for q in questions}
    results: dict[str, Any] = {}

    def threaded(question: str) -> None:
        results[question] = model.invoke(question)

    async def tasks() -> None:
        replies = await asyncio.gather(*(model.ainvoke(q) for q in questions[:32]))
        results.update(zip(questions[:32], replies, strict=True))

    threads = [threading.Thread(target=threaded, args=(q,)) for q in questions[32:]]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    asyncio.run(asyncio.wait_for(tasks(), timeout=300))
    for thread in threads:
        thread.join(timeout=300)
    assert time.monotonic() - started < 300, "no deadlock: everything finished in bounded time"
    assert {q: m.content for q, m in results.items()} == expected
    waits = [m.response_metadata["confspec"]["summary"]["lock_wait"] for m in results.values()]
    assert max(waits) > 0  # queueing is visible in the records


# -- cancellation -----------------------------------------------------------------------------------


class _StepCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.steps = 0
        self.first = threading.Event()

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == "confspec_step":
            self.steps += 1
            self.first.set()


async def test_cancelling_ainvoke_stops_within_a_step_and_frees_the_model(model: ConfSpecChatModel) -> None:
    expected = (await model.ainvoke(QUESTION)).content
    counter = _StepCounter()
    task = asyncio.create_task(model.ainvoke(QUESTION, max_tokens=400, max_step_tokens=2, config={"callbacks": [counter]}))
    while not counter.first.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    at_cancel = counter.steps
    with pytest.raises(asyncio.CancelledError):
        await task
    message = await asyncio.wait_for(model.ainvoke(QUESTION), timeout=60)
    assert message.content == expected
    assert counter.steps <= at_cancel + 2  # the step in flight (and its event) at most
    assert message.response_metadata["confspec"]["summary"]["lock_wait"] < 5


# -- faults ---------------------------------------------------------------------------------------------


def _fail_once(model: ConfSpecChatModel, role: str, error: BaseException) -> None:
    """Make the next forward pass of `role`'s model raise `error`."""
    module = getattr(model._get_engine(), role).model

    def failing(*args: Any, **kwargs: Any) -> Any:
        del module.forward  # the class's own forward again
        raise error

    module.forward = failing


@pytest.mark.parametrize("role", ["draft", "target"])
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), GenerationError),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), ModelOutOfMemoryError),
    ],
)
def test_a_failing_forward_pass_is_a_clear_error_and_the_next_call_works(
    model: ConfSpecChatModel, role: str, error: BaseException, expected: type[Exception]
) -> None:
    before = model.invoke(QUESTION).content
    _fail_once(model, role, error)
    with pytest.raises(expected, match="while answering"):
        model.invoke(QUESTION, accept_threshold=2.0)  # every step reaches both models
    assert model.invoke(QUESTION).content == before


async def test_a_failing_forward_pass_during_astream(model: ConfSpecChatModel) -> None:
    before = (await model.ainvoke(QUESTION)).content
    _fail_once(model, "target", RuntimeError("boom"))
    with pytest.raises(GenerationError, match="boom"):
        async for _ in model.astream(QUESTION, accept_threshold=2.0):
            pass
    assert (await model.ainvoke(QUESTION)).content == before


class _Raising(BaseCallbackHandler):
    def __init__(self, raise_error: bool) -> None:
        self.raise_error = raise_error

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        raise KeyError("handler bug")


def test_a_raising_handler_is_contained_unless_it_asks_to_raise(model: ConfSpecChatModel) -> None:
    before = model.invoke(QUESTION).content
    assert model.invoke(QUESTION, config={"callbacks": [_Raising(raise_error=False)]}).content == before
    with pytest.raises(KeyError, match="handler bug"):
        model.invoke(QUESTION, config={"callbacks": [_Raising(raise_error=True)]})
    assert model.invoke(QUESTION).content == before


# -- fuzzed input ---------------------------------------------------------------------------------------------

_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["", "\x00\x07\x1b[31m", "\u202e\u200b", "🙂" * 30, "word " * 1500]),
)
_blocks = st.lists(
    st.one_of(
        _text,
        st.builds(lambda t: {"type": "text", "text": t}, _text),
        st.just({"type": "image", "url": "http://x"}),
        st.just({"type": "unknown"}),
    ),
    max_size=3,
)
_content = st.one_of(_text, _blocks)
_tool_calls = st.lists(
    st.builds(lambda name, n: {"name": name or "f", "args": {"x": n}, "id": f"c{n}"}, st.text(max_size=8), st.integers(0, 9)),
    max_size=2,
)
_message = st.one_of(
    st.builds(HumanMessage, content=_content),
    st.builds(SystemMessage, content=_content),
    st.builds(lambda c, calls: AIMessage(content=c if isinstance(c, str) else "", tool_calls=calls), _content, _tool_calls),
    st.builds(lambda c, status: ToolMessage(content=c, tool_call_id="c1", status=status), _content, st.sampled_from(["success", "error"])),
    st.builds(lambda c, role: ChatMessage(content=c, role=role), _text, st.sampled_from(["user", "assistant", "critic"])),
    st.builds(lambda c: FunctionMessage(content=c, name="f"), _text),
)
_settings = st.fixed_dictionaries(
    {},
    optional={
        "accept_threshold": st.one_of(st.floats(allow_nan=True), st.integers(-2, 3)),
        "target_accept_threshold": st.floats(-1, 2),
        "max_tokens": st.integers(-3, 40),
        "max_step_tokens": st.integers(-1, 10),
        "temperature": st.floats(-1, 3),
        "top_p": st.floats(-0.5, 1.5),
        "stop": st.lists(_text, max_size=2),
        "mode": st.sampled_from(["confspec", "target_only", "draft_only", "always_verify", "fastest"]),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=st.lists(_message, max_size=4), options=_settings)
def test_fuzzed_input_answers_or_raises_a_documented_error(
    model: ConfSpecChatModel, messages: list[Any], options: dict[str, Any]
) -> None:
    try:
        reply = model.invoke(messages, **options)
    except ConfSpecError:
        return
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str)
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


# -- limits -------------------------------------------------------------------------------------------


def test_max_tokens_reached_mid_step_ends_with_length(model: ConfSpecChatModel) -> None:
    message = model.invoke(QUESTION, max_tokens=5, max_step_tokens=4, step_delimiters=["@@never@@"])
    steps = message.response_metadata["confspec"]["steps"]
    assert message.response_metadata["finish_reason"] == "length"
    assert sum(s["n_tokens"] for s in steps) == 5
    assert steps[-1]["end"] == StepEnd.LENGTH.value


def test_a_step_that_never_meets_a_delimiter_is_cut_and_the_answer_goes_on(model: ConfSpecChatModel) -> None:
    message = model.invoke(QUESTION, max_tokens=20, max_step_tokens=3, step_delimiters=["@@never@@"])
    steps = message.response_metadata["confspec"]["steps"]
    assert len(steps) >= 2 and all(s["n_tokens"] <= 3 for s in steps)
    assert message.response_metadata["finish_reason"] in ("length", "stop")


def test_a_prompt_longer_than_the_context_is_refused_before_any_work(model: ConfSpecChatModel) -> None:
    with pytest.raises(ContextLengthError, match="context window"):
        model.invoke("word " * 3000)


def test_dropping_the_model_releases_its_weights(tmp_path: Path) -> None:
    draft, target = build_tiny_pair(tmp_path)  # a pair of its own: other models share the usual one
    model = ConfSpecChatModel(draft_model=str(draft), target_model=str(target), max_tokens=8)
    model.invoke(QUESTION)
    engine = model._get_engine()
    refs = [weakref.ref(engine.draft.model), weakref.ref(engine.target.model)]
    del model, engine
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_models_naming_the_same_weights_share_them_until_the_last_is_dropped(tmp_path: Path) -> None:
    draft, target = build_tiny_pair(tmp_path)
    first = ConfSpecChatModel(draft_model=str(draft), target_model=str(target), max_tokens=8)
    second = first.model_copy(update={"mode": "target_only"})
    other = ConfSpecChatModel(draft_model=str(draft), target_model=str(target), max_tokens=8, max_context=256)
    assert first._get_engine() is second._get_engine()  # same models, same limit: one engine, one lock
    assert other._get_engine().target is first._get_engine().target  # another limit: the same weights
    ref = weakref.ref(first._get_engine().target.model)
    del first, second
    gc.collect()
    assert ref() is not None and other.invoke(QUESTION).content is not None
    del other
    gc.collect()
    assert ref() is None
