"""ConfSpecChatModel as a LangChain chat model: outputs, events, concurrency, bad input."""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_confspec import (
    STEP_EVENT,
    SUMMARY_EVENT,
    ChatConfSpec,
    ConfigurationError,
    ConfSpecChatModel,
    ContextLengthError,
    InvalidMessagesError,
    ModelLoadError,
    TokenizerMismatchError,
    wrap_model,
)
from langchain_confspec.cli import _settings as cli_settings
from langchain_confspec.demo import DEMO_DRAFT, DEMO_SETTINGS, DEMO_TARGET
from langchain_confspec.models.tiny import build_model, build_tokenizer

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class EventLog(BaseCallbackHandler):
    """Collects custom events and the run id of the chat model run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], UUID]] = []
        self.model_run_ids: list[UUID] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.model_run_ids.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data, _ in self.events if event == name]


@pytest.fixture(scope="module")
def chat(tiny_model_params: dict[str, str]) -> ConfSpecChatModel:
    return ConfSpecChatModel(**tiny_model_params, max_tokens=40, max_step_tokens=10)


def merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    return merged


def without_times(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in step.items() if k != "times"} for step in steps]


def assert_events_match(log: EventLog, message: AIMessage | AIMessageChunk) -> None:
    steps = message.response_metadata["confspec"]["steps"]
    assert log.named(STEP_EVENT) == steps
    assert len(log.named(SUMMARY_EVENT)) == 1
    assert log.named(SUMMARY_EVENT)[0] == message.response_metadata["confspec"]["summary"]
    assert {run_id for _, _, run_id in log.events} == set(log.model_run_ids)
    assert len(log.model_run_ids) == 1


def test_construction_loads_no_weights(tiny_model_params: dict[str, str]) -> None:
    model = ConfSpecChatModel(draft_model="/nonexistent/draft", target_model="/nonexistent/target")
    assert model._engine is None
    with pytest.raises(ModelLoadError, match="/nonexistent/draft"):
        model.invoke("hi")


def test_invoke_reports_answer_usage_and_audit(chat: ConfSpecChatModel) -> None:
    message = chat.invoke(QUESTION)
    meta = message.response_metadata
    steps = meta["confspec"]["steps"]
    assert meta["model_name"] == chat.target_model
    assert meta["finish_reason"] in {"stop", "length"}
    assert "".join(step["text"] for step in steps) == message.content
    assert meta["confspec"]["summary"]["n_steps"] == len(steps)
    usage = message.usage_metadata
    assert usage is not None
    assert usage["output_tokens"] == sum(step["n_tokens"] for step in steps)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens"] == chat.get_num_tokens_from_messages([HumanMessage(QUESTION)])
    details = usage["output_token_details"]
    assert details["draft"] + details["target"] == usage["output_tokens"]  # type: ignore[typeddict-item]


def test_stream_yields_the_answer_with_metadata_on_the_last_chunk(chat: ConfSpecChatModel) -> None:
    chunks = list(chat.stream(QUESTION))
    invoked = chat.invoke(QUESTION)
    steps = invoked.response_metadata["confspec"]["steps"]
    assert "".join(str(c.content) for c in chunks) == invoked.content
    for chunk in chunks[:-1]:
        assert chunk.usage_metadata is None and "confspec" not in chunk.response_metadata
    assert chunks[-1].chunk_position == "last"
    merged = merge(chunks)
    assert merged.content == invoked.content
    assert merged.usage_metadata == invoked.usage_metadata
    assert without_times(merged.response_metadata["confspec"]["steps"]) == without_times(steps)


def test_invoke_sends_one_event_per_step_to_the_model_run(chat: ConfSpecChatModel) -> None:
    log = EventLog()
    message = chat.invoke(QUESTION, config={"callbacks": [log]})
    assert_events_match(log, message)


def test_stream_sends_one_event_per_step_to_the_model_run(chat: ConfSpecChatModel) -> None:
    log = EventLog()
    message = merge(list(chat.stream(QUESTION, config={"callbacks": [log]})))
    assert_events_match(log, message)


async def test_ainvoke_sends_one_event_per_step_to_the_model_run(chat: ConfSpecChatModel) -> None:
    log = EventLog()
    message = await chat.ainvoke(QUESTION, config={"callbacks": [log]})
    assert_events_match(log, message)


async def test_astream_sends_one_event_per_step_to_the_model_run(chat: ConfSpecChatModel) -> None:
    log = EventLog()
    message = merge([chunk async for chunk in chat.astream(QUESTION, config={"callbacks": [log]})])
    assert_events_match(log, message)


async def test_astream_events_in_a_chain_shows_step_events(chat: ConfSpecChatModel) -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat | StrOutputParser()
    events = [event async for event in chain.astream_events({"question": QUESTION}, version="v2")]
    model_runs = {e["run_id"] for e in events if e["event"] == "on_chat_model_start"}
    steps = [e for e in events if e["event"] == "on_custom_event" and e["name"] == STEP_EVENT]
    summaries = [e for e in events if e["event"] == "on_custom_event" and e["name"] == SUMMARY_EVENT]
    answer = next(e for e in events if e["event"] == "on_chain_end" and e["name"] == "RunnableSequence")
    assert len(model_runs) == 1
    assert steps and {e["run_id"] for e in steps + summaries} == model_runs
    assert len(summaries) == 1 and summaries[0]["data"]["n_steps"] == len(steps)
    assert "".join(e["data"]["text"] for e in steps) == answer["data"]["output"]


async def test_astream_events_on_invoke_inside_a_function_shows_step_events(chat: ConfSpecChatModel) -> None:
    from langchain_core.runnables import RunnableLambda

    async def ask(question: str) -> str:
        return str((await chat.ainvoke(question)).content)

    events = [event async for event in RunnableLambda(ask).astream_events(QUESTION, version="v2")]
    steps = [e for e in events if e["event"] == "on_custom_event" and e["name"] == STEP_EVENT]
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    model_runs = {e["run_id"] for e in events if e["event"] == "on_chat_model_start"}
    assert steps and {e["run_id"] for e in steps} == model_runs
    assert "".join(e["data"]["chunk"].content for e in streamed) == "".join(e["data"]["text"] for e in steps)


async def test_concurrent_abatch_matches_sequential_calls(chat: ConfSpecChatModel) -> None:
    questions = [QUESTION, "What is 12 * 12?", "Hello world", "A train travels 60 miles in 2 hours."]
    sequential = [chat.invoke(q).content for q in questions]
    concurrent = await chat.abatch(questions)
    assert [m.content for m in concurrent] == sequential
    gathered = await asyncio.gather(*(chat.ainvoke(q) for q in questions))
    assert [m.content for m in gathered] == sequential


def test_threaded_invokes_match_sequential_calls(chat: ConfSpecChatModel) -> None:
    questions = [QUESTION, "What is 12 * 12?", "Hello world", "The quick brown fox"] * 2
    sequential = [chat.invoke(q).content for q in questions]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda q: chat.invoke(q).content, questions))
    assert threaded == sequential
    assert [m.content for m in chat.batch(questions, config={"max_concurrency": 4})] == sequential


def test_event_loop_stays_free_during_generation(chat: ConfSpecChatModel) -> None:
    async def scenario() -> int:
        ticks = 0
        task = asyncio.create_task(chat.ainvoke(QUESTION))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.001)
        await task
        return ticks

    assert asyncio.run(scenario()) > 1


def test_call_options_override_settings(chat: ConfSpecChatModel) -> None:
    message = chat.invoke(QUESTION, mode="target_only", max_tokens=12)
    summary = message.response_metadata["confspec"]["summary"]
    assert summary["mode"] == "target_only"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 12
    assert summary["finish_reason"] == "length"


def test_identifying_params_cover_models_and_settings(chat: ConfSpecChatModel, tiny_model_params: dict[str, str]) -> None:
    params = chat._identifying_params
    assert params["draft_model"] == tiny_model_params["draft_model"]
    assert params["target_model"] == tiny_model_params["target_model"]
    for setting in ("mode", "accept_threshold", "reject_threshold", "target_accept_threshold", "temperature",
                    "top_p", "seed", "max_tokens", "max_step_tokens", "step_delimiters", "stop", "verification"):
        assert setting in params
    other = ConfSpecChatModel(**tiny_model_params, max_tokens=40, max_step_tokens=10, accept_threshold=0.95)
    assert other._identifying_params != params


def test_the_demo_pair_comes_with_its_tuned_settings_and_a_callers_win(tiny_model_params: dict[str, str]) -> None:
    tuned = DEMO_SETTINGS["target_accept_threshold"]
    assert tuned != ConfSpecChatModel.model_fields["target_accept_threshold"].default
    assert ConfSpecChatModel.demo()._identifying_params["target_accept_threshold"] == tuned
    by_name = ConfSpecChatModel(draft_model=DEMO_DRAFT, target_model=DEMO_TARGET)
    assert by_name._identifying_params["target_accept_threshold"] == tuned
    assert ConfSpecChatModel.demo(target_accept_threshold=0.6)._identifying_params["target_accept_threshold"] == 0.6
    other_pair = ConfSpecChatModel(**tiny_model_params)
    assert other_pair._identifying_params["target_accept_threshold"] == 0.5


def test_the_command_line_takes_the_demo_settings_under_its_own(tiny_model_params: dict[str, str]) -> None:
    demo = argparse.Namespace(draft=DEMO_DRAFT, target=DEMO_TARGET, set=["max_tokens=9"])
    assert cli_settings(demo) == {**DEMO_SETTINGS, "max_tokens": 9}
    overridden = argparse.Namespace(draft=DEMO_DRAFT, target=DEMO_TARGET, set=["target_accept_threshold=0.7"])
    assert cli_settings(overridden) == {**DEMO_SETTINGS, "target_accept_threshold": 0.7}
    other = argparse.Namespace(draft=tiny_model_params["draft_model"], target=DEMO_TARGET, set=[])
    assert cli_settings(other) == {}


def test_ls_params_are_clean(chat: ConfSpecChatModel) -> None:
    params = chat._get_ls_params(stop=["END"])
    assert params["ls_provider"] == "confspec"
    assert params["ls_model_name"] == chat.target_model
    assert params["ls_model_type"] == "chat"
    assert params["ls_stop"] == ["END"]
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


def test_token_counts_use_the_real_tokenizer(tiny_model_params: dict[str, str]) -> None:
    model = ConfSpecChatModel(**tiny_model_params)
    tokenizer = build_tokenizer()
    assert model.get_token_ids("Hello world") == tokenizer.encode("Hello world", add_special_tokens=False)
    assert model._engine is None  # counting tokens loads the tokenizer, not the weights
    assert model.get_num_tokens_from_messages([SystemMessage("Be brief."), HumanMessage("Hello world")]) == len(
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


def test_preloaded_models_are_accepted() -> None:
    tokenizer = build_tokenizer()
    model = ChatConfSpec(
        draft=build_model(tokenizer, seed=1),
        draft_tokenizer=tokenizer,
        target=build_model(tokenizer, num_layers=3, hidden_size=64, seed=2),
        target_tokenizer=tokenizer,
        max_tokens=20,
    )
    message = model.invoke(QUESTION)
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    assert message.response_metadata["model_name"] == "LlamaForCausalLM"


# -- bad input: a clear error, and the next call is unaffected -------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"accept_threshold": -0.1}, "accept_threshold"),
        ({"reject_threshold": float("nan")}, "reject_threshold"),
        ({"target_accept_threshold": -1}, "target_accept_threshold"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"step_delimiters": [""]}, "step_delimiters"),
        ({"mode": "fastest"}, "mode"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"speculation_depth": 0}, "speculation_depth"),
    ],
)
def test_impossible_settings_are_refused_at_construction(
    tiny_model_params: dict[str, str], settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        ConfSpecChatModel(**tiny_model_params, **settings)


def test_missing_models_are_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="draft"):
        ConfSpecChatModel(target_model="x/y")
    with pytest.raises(ConfigurationError, match="target"):
        ConfSpecChatModel(draft_model="x/y")


def test_standard_extras_are_ignored(tiny_model_params: dict[str, str]) -> None:
    with_extras = ConfSpecChatModel(**tiny_model_params, max_tokens=12, timeout=60, max_retries=2, api_key="unused")
    plain = ConfSpecChatModel(**tiny_model_params, max_tokens=12)
    assert with_extras._identifying_params == plain._identifying_params  # no setting came from them
    assert not {"timeout", "max_retries", "api_key"} & set(with_extras.model_dump())
    assert with_extras.invoke(QUESTION).content == plain.invoke(QUESTION).content


@pytest.mark.parametrize(
    ("call", "error", "named"),
    [
        (lambda m: m.invoke([]), InvalidMessagesError, "empty"),
        (lambda m: m.invoke([FunctionMessage(content="x", name="f")]), InvalidMessagesError, "FunctionMessage"),
        (lambda m: m.invoke([HumanMessage(content=[{"type": "image", "url": "x"}])]), InvalidMessagesError, "image"),
        (lambda m: m.invoke("word " * 1500), ContextLengthError, "context window"),
        (lambda m: m.invoke(QUESTION, accept_threshold=-2), ConfigurationError, "accept_threshold"),
        (lambda m: list(m.stream([])), InvalidMessagesError, "empty"),
        (lambda m: m.invoke(""), InvalidMessagesError, "last human message is empty"),
        (lambda m: m.invoke([SystemMessage("Be brief."), HumanMessage(" \n"), HumanMessage("")]), InvalidMessagesError, "no question"),
        (lambda m: asyncio.run(m.ainvoke("word " * 1500)), ContextLengthError, "context window"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_next_call_works(
    chat: ConfSpecChatModel, call: Any, error: type[Exception], named: str
) -> None:
    before = chat.invoke(QUESTION).content
    with pytest.raises(error, match=named):
        call(chat)
    assert chat.invoke(QUESTION).content == before


def test_tokenizer_that_does_not_fit_the_model_is_refused() -> None:
    big = build_tokenizer()
    small = build_tokenizer(vocab_size=120)
    with pytest.raises(TokenizerMismatchError, match="draft"):
        wrap_model(build_model(small), big, role="draft")


def test_an_abandoned_stream_releases_the_model(chat: ConfSpecChatModel) -> None:
    import threading

    expected = chat.invoke(QUESTION).content
    stream = chat.stream(QUESTION)
    next(stream)
    stream.close()
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(chat.invoke(QUESTION).content), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert results == [expected], "the next call did not get the model back"


async def test_a_cancelled_astream_releases_the_model(chat: ConfSpecChatModel) -> None:
    expected = chat.invoke(QUESTION).content

    async def consume() -> None:
        async for _ in chat.astream(QUESTION, max_tokens=400, max_step_tokens=4):
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    message = await asyncio.wait_for(chat.ainvoke(QUESTION), timeout=60)
    assert message.content == expected
