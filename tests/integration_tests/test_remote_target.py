"""A target served by a real llama.cpp `llama-server`: the demo target converted to GGUF (fp32),
on loopback, against the same target loaded here.

The server is built from the llama.cpp vendored in the pinned `llama-cpp-python` sdist the
first time (scripts/llama_server.py, cached outside the repository by version); only where cmake,
ninja or a C++ compiler is missing do these tests skip, saying which.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_confspec import (
    ConfSpecChatModel,
    ConfSpecEngine,
    StepRecord,
    Writer,
    load_model,
)
from langchain_confspec.config import build_config
from langchain_confspec.demo import DEMO_PAIR_DIR, DEMO_SETTINGS
from langchain_confspec.demo.problems import make_problems
from langchain_confspec.engine.verification import VerdictReader
from langchain_confspec.errors import (
    ConfigurationError,
    RemoteModelError,
    TokenizerMismatchError,
)
from langchain_confspec.models.remote import RemoteModel, ServerCounters
from langchain_confspec.models.session import ModelSession
from langchain_confspec.models.tiny import build_tokenizer

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

ROOT = Path(__file__).resolve().parents[2]
SLOTS = 4
WINDOW = 2048  # the demo target's, per slot


@functools.cache
def tools() -> Any:
    """scripts/llama_server.py: building, converting, serving."""
    spec = importlib.util.spec_from_file_location("llama_server", ROOT / "scripts" / "llama_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gguf_and_binary() -> tuple[Path, Path]:
    missing = tools().missing_build_tools()
    if missing:
        pytest.skip(f"building llama-server needs {', '.join(missing)}, not installed here")
    return tools().convert(DEMO_PAIR_DIR / "target"), tools().build()


@pytest.fixture(scope="module")
def server(gguf_and_binary: tuple[Path, Path]) -> Iterator[Any]:
    gguf, binary = gguf_and_binary
    running = tools().Server(binary, gguf, slots=SLOTS, window=WINDOW)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def local_engine() -> ConfSpecEngine:
    return ConfSpecEngine(load_model("confspec-demo-draft", role="draft"), load_model("confspec-demo-target", role="target"))


@pytest.fixture(scope="module")
def remote(server: Any, local_engine: ConfSpecEngine) -> RemoteModel:
    return RemoteModel(server.url, local_engine.target.tokenizer, name="served-demo-target")


@pytest.fixture(scope="module")
def served_engine(local_engine: ConfSpecEngine, remote: RemoteModel) -> ConfSpecEngine:
    return ConfSpecEngine(local_engine.draft, remote)


def settings(mode: str, **extra: Any) -> Any:
    """The demo's settings, checked by verdict: llama-server cannot score a proposed step."""
    return build_config(**{**DEMO_SETTINGS, "target_check": "verdict", **extra}, mode=mode, max_tokens=96, fast_path="off")


def test_the_server_reads_texts_as_the_local_tokenizer_and_a_different_one_is_refused(remote: RemoteModel, server: Any) -> None:
    remote.check_tokenizer()
    assert remote.context_length == WINDOW and remote.version != "unknown"
    other = RemoteModel(server.url, build_tokenizer())
    with pytest.raises(TokenizerMismatchError, match=rf"server at {server.url} tokenizes .* but the local tokenizer"):
        other.check_tokenizer()


@pytest.mark.parametrize("mode", ["target_only", "confspec"])
def test_a_served_target_answers_as_the_local_one(mode: str, local_engine: ConfSpecEngine, served_engine: ConfSpecEngine) -> None:
    """Greedy, fp32 GGUF: the same steps, verdicts and rewrites as the target loaded here."""
    escalated = 0
    for problem in make_problems(20, seed=30_000):
        local = local_engine.generate(problem.turns(), settings(mode))
        served = served_engine.generate(problem.turns(), settings(mode))
        assert served.text == local.text, problem.question
        assert [r.decision for r in served.records] == [r.decision for r in local.records]
        escalated += sum(r.escalated for r in served.records)
        target = served.summary.target  # one request per verdict asked and per step written
        requests = sum(r.escalated for r in served.records) + sum(r.writer is Writer.TARGET for r in served.records)
        assert target.fast_path == "remote" and target.forward_passes == requests
        assert target.server_work is not None and target.server_work.requests == requests
        assert sum(r.target_server.requests for r in served.records if r.target_server) == requests
    assert mode == "target_only" or escalated > 0  # the server judged steps too


def test_served_verdicts_equal_the_local_ones(local_engine: ConfSpecEngine, remote: RemoteModel) -> None:
    reader = VerdictReader(local_engine.target.tokenizer, settings("confspec"))
    for problem in make_problems(10, seed=30_100):
        prompt = local_engine.target.render_prompt(problem.turns())
        step = local_engine.target.tokenizer.encode("Step: 3 + 4 = 7.", add_special_tokens=False)
        session = ModelSession(local_engine.target, [*prompt, *step, *reader.suffix_ids])
        local = reader.read(session.next_logits())
        served = reader.read_probs(remote.next_token_probs([*prompt, *step, *reader.suffix_ids], ServerCounters()))
        assert served.p_accept == pytest.approx(local.p_accept, abs=1e-5)
        assert served.mass == pytest.approx(local.mass, abs=1e-5)


def test_concurrent_calls_answer_as_they_do_alone(served_engine: ConfSpecEngine) -> None:
    problems = make_problems(2 * SLOTS, seed=30_200)
    alone = [served_engine.generate(p.turns(), settings("confspec")).text for p in problems]
    together: list[str | None] = [None] * len(problems)

    def answer(i: int) -> None:
        together[i] = served_engine.generate(problems[i].turns(), settings("confspec")).text

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(len(problems))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert together == alone


def test_what_a_served_target_cannot_do_is_refused_naming_the_server(served_engine: ConfSpecEngine, server: Any) -> None:
    problem = make_problems(1, seed=30_300)[0]
    with pytest.raises(ConfigurationError, match=rf"cannot do.*{server.url}|{server.url}.*cannot do"):
        served_engine.generate(problem.turns(), settings("target_only", token_speculation=True))


def test_agreement_falls_back_to_the_verdict_on_a_server_that_cannot_score_proposals_and_says_so(
    served_engine: ConfSpecEngine, server: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_confspec.engine import generation

    monkeypatch.setattr(generation, "_WARNED", set())  # as if no call had named this server yet
    problem = make_problems(1, seed=30_300)[0]
    with caplog.at_level(logging.WARNING, logger="langchain_confspec"):
        fallback = served_engine.generate(problem.turns(), settings("confspec", target_check="agreement"))
    assert fallback.text == served_engine.generate(problem.turns(), settings("confspec")).text
    assert all(r.target_confidence is not None for r in fallback.records if r.escalated)
    assert any("target_check='agreement'" in m and server.url in m for m in caplog.messages)


def test_a_server_killed_mid_answer_gives_an_error_naming_it_and_a_call_after_its_restart_works(
    gguf_and_binary: tuple[Path, Path], local_engine: ConfSpecEngine
) -> None:
    gguf, binary = gguf_and_binary
    problem = make_problems(1, seed=30_400)[0]
    expected = local_engine.generate(problem.turns(), settings("target_only")).text
    own = tools().Server(binary, gguf, slots=1, window=WINDOW)
    engine = ConfSpecEngine(local_engine.draft, RemoteModel(own.url, local_engine.target.tokenizer, max_retries=0, timeout=5))
    answer = engine.run(problem.turns(), settings("target_only"))
    try:
        assert isinstance(next(item for item in answer if isinstance(item, StepRecord)), StepRecord)  # one step written
        own.stop()
        with pytest.raises(RemoteModelError, match=rf"server at {own.url}/completion could not be reached"):
            list(answer)
        own = tools().Server(binary, gguf, slots=1, window=WINDOW, port=own.port)
        assert engine.generate(problem.turns(), settings("target_only")).text == expected
    finally:
        own.stop()


def test_an_api_key_is_sent_and_never_shown(gguf_and_binary: tuple[Path, Path], local_engine: ConfSpecEngine) -> None:
    gguf, binary = gguf_and_binary
    secret = "sk-confspec-test-9f8e7d"
    own = tools().Server(binary, gguf, "--api-key", secret, slots=SLOTS, window=WINDOW)
    try:
        with pytest.raises(RemoteModelError, match="answered HTTP 401") as refused:
            RemoteModel(own.url, local_engine.target.tokenizer, api_key="wrong-key", max_retries=0).tokenize("hi")
        assert "wrong-key" not in str(refused.value)
        chat = ConfSpecChatModel(
            draft_model="confspec-demo-draft", target_model="confspec-demo-target", target_url=own.url,
            target_api_key=secret, max_tokens=48,
        )  # fmt: skip
        message = chat.invoke(make_problems(1, seed=30_500)[0].question)
        assert message.content
        shown = " ".join([repr(chat), str(chat.model_dump()), str(message.response_metadata), repr(chat._get_engine().target)])
        assert secret not in shown
    finally:
        own.stop()


def test_the_chat_model_and_the_cli_take_a_served_target(server: Any, local_engine: ConfSpecEngine, capsys: pytest.CaptureFixture[str]) -> None:
    """`target_url` on the chat model (also after pickling and `model_copy`) and `--target-url`
    on the CLI answer as the local target does; the records name the server's engine."""
    import pickle

    from langchain_confspec.cli import main as cli_main

    problem = make_problems(1, seed=30_600)[0]
    expected = local_engine.generate(problem.turns(), settings("target_only")).text
    chat = ConfSpecChatModel(
        draft_model="confspec-demo-draft", target_model="confspec-demo-target", target_url=server.url,
        mode="target_only", max_tokens=96, fast_path="off",
    )  # fmt: skip
    for model in (chat, pickle.loads(pickle.dumps(chat)), chat.model_copy()):
        message = model.invoke(problem.question)
        assert message.content == expected
        target = message.response_metadata["confspec"]["summary"]["target"]
        assert target["fast_path"] == "remote" and target["server"].startswith("llama.cpp ")
    assert cli_main(["run", problem.question, "--target-url", server.url, "--mode", "target_only", "--no-compare"]) == 0
    assert expected in capsys.readouterr().out
