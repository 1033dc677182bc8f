"""Concurrent calls answered together: every answer inside a batch is the answer alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_confspec import (
    ConfSpecChatModel,
    ConfSpecEngine,
    ContextLengthError,
    GenerationError,
    RunResult,
    StepRecord,
)
from langchain_confspec.config import build_config
from langchain_confspec.models.cuda_graphs import EagerRehearsal

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "Hello world",
    "What is 12 * 12? Think step by step and give the final answer.",
    "A train travels 60 miles in 2 hours. What is its speed?",
    "The quick brown fox",
    "24 + 36 - 10",
    "You are a helpful assistant. Hello world, what is the weather like?",
    "Is the last step above correct?",
]
SETTINGS: list[dict[str, Any]] = [
    {"mode": "target_only"},
    {"mode": "draft_only"},
    {"mode": "confspec", "accept_threshold": 0.6, "verdict_mass_floor": 0.0},
    {"mode": "always_verify"},
    {"mode": "confspec", "accept_threshold": 1.5, "target_accept_threshold": 2.0},
    {"mode": "target_only", "token_speculation": True, "speculation_depth": 4},  # rounds read back once
    {"mode": "confspec", "token_speculation": True},
    {"mode": "target_only", "stop": ["e"]},
]


@pytest.fixture(params=["static", "graphs"])
def batched(request: pytest.FixtureRequest, tiny_engine: ConfSpecEngine) -> tuple[ConfSpecEngine, str]:
    """An engine of its own (its own caches and scheduler) over the tiny pair, and its path."""
    capture = EagerRehearsal() if request.param == "graphs" else None
    return ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_batch=8, graph_capture=capture), str(request.param)


def turns(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def config(path: str, **settings: Any) -> Any:
    return build_config(**{"max_tokens": 36, "max_step_tokens": 7, "fast_path": path, **settings})


def together(calls: list[Any]) -> list[Any]:
    """Run the callables at once (released by one barrier); their results or exceptions."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as error:  # noqa: BLE001 - compared by the test
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_mixed_requests_in_a_batch_answer_as_they_do_alone(batched: tuple[ConfSpecEngine, str]) -> None:
    engine, path = batched
    alone = [engine.generate(turns(q), config(path, **s)).text for q, s in zip(QUESTIONS, SETTINGS)]
    results = together([lambda q=q, s=s: engine.generate(turns(q), config(path, **s)) for q, s in zip(QUESTIONS, SETTINGS)])
    assert [r.text for r in results] == alone
    assert max(r.summary.mean_batch_size for r in results) > 1.5  # passes really ran together
    assert any(max(rec.batch_sizes.model_dump().values()) > 1 for r in results for rec in r.records)


def test_seeded_sampling_answers_alike_batched_or_alone(batched: tuple[ConfSpecEngine, str]) -> None:
    engine, path = batched
    depths = {0: None, 2: None, 4: 3}  # speculating calls: the depth rule, or fixed-depth rounds
    sampled = [
        config(path, temperature=0.9, top_p=0.9, seed=n, token_speculation=n in depths, speculation_depth=depths.get(n))
        for n in range(6)
    ]
    alone = [engine.generate(turns(QUESTIONS[n]), c).text for n, c in enumerate(sampled)]
    results = together([lambda n=n, c=c: engine.generate(turns(QUESTIONS[n]), c) for n, c in enumerate(sampled)])
    assert [r.text for r in results] == alone


def run_until(engine: ConfSpecEngine, question: str, settings: Any, reached: threading.Event, steps: int) -> RunResult:
    """Generate, setting `reached` once `steps` steps are done."""
    done = 0
    for item in engine.run(turns(question), settings):
        if isinstance(item, StepRecord):
            done += 1
            if done == steps:
                reached.set()
        elif isinstance(item, RunResult):
            return item
    raise AssertionError("no result")


def test_requests_joining_mid_answer_change_nobody_s_answer(batched: tuple[ConfSpecEngine, str]) -> None:
    engine, path = batched
    long = config(path, mode="target_only", max_tokens=60)
    alone = [engine.generate(turns(q), long).text for q in QUESTIONS[:6]]
    started = threading.Event()
    first = [lambda q=q: run_until(engine, q, long, started, steps=2) for q in QUESTIONS[:3]]

    def later(question: str) -> RunResult:
        started.wait(timeout=60)
        return engine.generate(turns(question), long)

    results = together([*first, *(lambda q=q: later(q) for q in QUESTIONS[3:6])])
    assert [r.text for r in results] == alone


def test_a_cancelled_request_frees_its_slot_and_the_others_are_unchanged(tiny_engine: ConfSpecEngine) -> None:
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_batch=3)
    long = config("static", mode="target_only", max_tokens=60)
    alone = [engine.generate(turns(q), long).text for q in QUESTIONS[:4]]

    def cancelled() -> str:
        run = engine.run(turns(QUESTIONS[4]), long)
        next(item for item in run if isinstance(item, StepRecord))
        run.close()  # the caller went away mid-answer
        return "cancelled"

    # Three slots: the fourth answer can only start once the cancelled one has let its slot go.
    results = together([cancelled, *(lambda q=q: engine.generate(turns(q), long) for q in QUESTIONS[:4])])
    assert results[0] == "cancelled"
    assert [r.text for r in results[1:]] == alone
    assert max(r.summary.lock_wait for r in results[1:]) > 0


def test_a_failing_request_fails_alone(tiny_engine: ConfSpecEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_batch=8)
    settings = config("static", mode="target_only", max_tokens=40)
    poison = tiny_engine.target.tokenizer.convert_tokens_to_ids("?")  # only in the failing question
    questions = [q for q in QUESTIONS if "?" not in q][:4]
    alone = [engine.generate(turns(q), settings).text for q in questions]
    model = type(tiny_engine.target.model)
    forward = model.forward

    def poisoned(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        if self is tiny_engine.target.model and bool((input_ids == poison).any()):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", poisoned)
    results = together([*(lambda q=q: engine.generate(turns(q), settings) for q in questions), lambda: engine.generate(turns(QUESTIONS[0]), settings)])
    assert isinstance(results[-1], GenerationError) and "shapes cannot be multiplied" in str(results[-1])
    assert [r.text for r in results[:-1]] == alone


def test_a_request_that_cannot_fit_is_refused_at_once_while_the_slots_are_full(tiny_engine: ConfSpecEngine) -> None:
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_batch=2, max_context=96)
    settings = config("static", mode="target_only", max_tokens=40)
    alone = [engine.generate(turns(q), settings).text for q in QUESTIONS[:2]]
    running = [engine.run(turns(q), settings) for q in QUESTIONS[:2]]
    for run in running:  # both slots taken, both answers under way
        next(item for item in run if isinstance(item, StepRecord))
    refused: list[BaseException] = []
    caller = threading.Thread(target=lambda: refused.extend(_error_of(lambda: engine.generate(turns("word " * 200), settings))))
    caller.start()
    caller.join(timeout=30)  # a stall would wait here for a slot that never frees
    assert not caller.is_alive() and isinstance(refused[0], ContextLengthError)
    assert "max_context" in str(refused[0])
    texts = [next(item for item in run if isinstance(item, RunResult)).text for run in running]
    assert texts == alone


def _error_of(call: Any) -> list[BaseException]:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - compared by the test
        return [error]
    return []


def test_max_batch_bounds_how_many_answer_at_once(tiny_engine: ConfSpecEngine) -> None:
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_batch=2)
    rows_seen: set[int] = set()
    run_batch = engine._run_batch

    def watching(role: str, jobs: list[Any]) -> list[torch.Tensor]:
        rows_seen.update(job.row for job in jobs)
        assert len(jobs) <= 2
        return run_batch(role, jobs)

    engine.scheduler._run_batch = lambda: watching  # type: ignore[assignment]
    settings = config("static", mode="target_only", max_tokens=24)
    results = together([lambda q=q: engine.generate(turns(q), settings) for q in QUESTIONS[:5]])
    assert rows_seen <= {0, 1}
    assert sum(r.summary.lock_wait > 0 for r in results) >= 3  # three of five waited for a slot


class Answer(BaseModel):
    value: int


@tool
def shout(text: str) -> str:
    """Say it louder."""
    return text.upper()


def test_tools_and_structured_output_batch_with_plain_calls(tiny_model_params: dict[str, str]) -> None:
    model = ConfSpecChatModel(**tiny_model_params, max_tokens=120, max_step_tokens=7, fast_path="static", max_batch=8)
    calls = [
        lambda: model.invoke(QUESTIONS[0]).content,
        lambda: model.bind_tools([shout], tool_choice="shout").invoke(QUESTIONS[1]).tool_calls[0]["args"],
        lambda: model.with_structured_output(Answer).invoke(QUESTIONS[2]).value,  # type: ignore[union-attr]
        lambda: model.invoke(QUESTIONS[3], mode="target_only", stop=["a"]).content,
        lambda: model.invoke(QUESTIONS[4], token_speculation=True).content,
    ]
    alone = [call() for call in calls]
    assert together(calls) == alone


def test_streams_stay_per_request(tiny_model_params: dict[str, str]) -> None:
    model = ConfSpecChatModel(**tiny_model_params, max_tokens=30, max_step_tokens=7, fast_path="static", max_batch=8)
    alone = [str(model.invoke(q, mode="target_only").content) for q in QUESTIONS[:4]]

    def streamed(question: str) -> Iterator[str]:
        return "".join(str(chunk.content) for chunk in model.stream(question, mode="target_only"))  # type: ignore[return-value]

    assert together([lambda q=q: streamed(q) for q in QUESTIONS[:4]]) == alone


def test_auto_on_the_cpu_batches_a_call_that_arrives_while_another_is_in_flight(tiny_engine: ConfSpecEngine) -> None:
    """A lone call takes `off` (the faster path there); one that finds others running takes
    `static`, where calls share batched passes instead of taking turns."""
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_batch=8)
    auto = config("auto", mode="target_only")
    first = engine.run(turns(QUESTIONS[0]), auto)
    next(first)  # in flight, suspended in this thread
    unprepared = engine.generate(turns(QUESTIONS[3]), auto)  # never waits for the suspended call
    assert unprepared.summary.target.fast_path == "off"
    list(first)
    engine.prepare_batching()
    lone = engine.generate(turns(QUESTIONS[0]), auto)
    first = engine.run(turns(QUESTIONS[0]), auto)
    next(first)  # in flight
    second = engine.generate(turns(QUESTIONS[3]), auto)
    rest = list(first)
    assert lone.summary.target.fast_path == "off" and rest[-1].summary.target.fast_path == "off"
    assert second.summary.target.fast_path == "static"
    assert second.text == engine.generate(turns(QUESTIONS[3]), config("off", mode="target_only")).text
    assert engine.generate(turns(QUESTIONS[0]), auto).summary.target.fast_path == "off"  # alone again


def test_batch_on_auto_answers_as_invoke_does_and_shares_passes(tiny_model_params: dict[str, str]) -> None:
    model = ConfSpecChatModel(**tiny_model_params, max_tokens=30, max_step_tokens=7, max_batch=8)
    alone = [model.invoke(q) for q in QUESTIONS[:4]]
    batched = model.batch(QUESTIONS[:4])
    assert [m.content for m in batched] == [m.content for m in alone]
    paths = [m.response_metadata["confspec"]["summary"]["target"]["fast_path"] for m in batched]
    assert paths == ["static"] * 4  # the first call too: it never has to run alone on `off`


async def test_abatch_on_auto_puts_every_call_on_the_batched_path_and_a_later_lone_call_on_off(
    tiny_model_params: dict[str, str],
) -> None:
    model = ConfSpecChatModel(**tiny_model_params, max_tokens=30, max_step_tokens=7, max_batch=8)
    batched = await model.abatch(QUESTIONS[:4])
    paths = [m.response_metadata["confspec"]["summary"]["target"]["fast_path"] for m in batched]
    assert paths == ["static"] * 4
    assert model.invoke(QUESTIONS[0]).response_metadata["confspec"]["summary"]["target"]["fast_path"] == "off"
