"""A served target's failures, each named: against a small HTTP server on loopback that answers
as a broken or foreign server would (the real llama-server is in tests/integration_tests)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.errors import ConfigurationError, RemoteModelError
from langchain_confspec.models.remote import RemoteModel
from langchain_confspec.models.tiny import build_tokenizer

pytest.importorskip("openai")
pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

SECRET = "sk-never-shown-4c1d"
Reply = Callable[[BaseHTTPRequestHandler], None]


def json_reply(status: int, body: object) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return reply


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a client that gave up (the timeout test) leaves a broken pipe behind


@pytest.fixture
def fake_server() -> Iterator[Callable[[dict[str, Reply]], str]]:
    """`fake_server({path: reply})`: a server on loopback answering GETs and POSTs by path; its URL."""
    servers: list[QuietServer] = []

    def start(replies: dict[str, Reply]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                replies.get(self.path, json_reply(404, {"error": "not found"}))(self)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                return None

        server = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


PROPS = json_reply(200, {"default_generation_settings": {"n_ctx": 512}, "build_info": "b1-test"})


def remote(url: str, **options: Any) -> RemoteModel:
    return RemoteModel(url, build_tokenizer(), api_key=SECRET, max_retries=0, **{"engine": "llama.cpp", **options})


def test_a_server_that_is_not_there_is_named() -> None:
    with pytest.raises(RemoteModelError, match=r"llama.cpp server at http://127.0.0.1:9/props could not be reached") as failed:
        remote("http://127.0.0.1:9")
    assert SECRET not in str(failed.value)


def test_the_engine_is_asked_of_the_server_by_the_endpoint_only_it_has(fake_server: Callable[[dict[str, Reply]], str]) -> None:
    models = json_reply(200, {"data": [{"id": "m", "max_model_len": 4096}]})
    sglang = fake_server({"/model_info": json_reply(200, {}), "/v1/models": models, "/server_info": json_reply(200, {"version": "0.5"})})
    vllm = fake_server({"/version": json_reply(200, {"version": "0.33"}), "/v1/models": models})
    found = {url: remote(url, engine="auto") for url in (sglang, vllm, fake_server({"/props": PROPS}))}
    assert [(m.engine, m.version, m.context_length) for m in found.values()] == [("sglang", "0.5", 4096), ("vllm", "0.33", 4096), ("llama.cpp", "b1-test", 512)]
    with pytest.raises(RemoteModelError, match=r"answers none of /props \(llama.cpp\), /model_info \(sglang\), /version \(vllm\): name its engine"):
        remote(fake_server({}), engine="auto")
    with pytest.raises(RemoteModelError, match=r"^The server at http://127.0.0.1:9/props could not be reached"):
        remote("http://127.0.0.1:9", engine="auto")


def test_a_server_that_is_not_llama_server_is_named(fake_server: Callable[[dict[str, Reply]], str]) -> None:
    url = fake_server({})
    with pytest.raises(RemoteModelError, match=rf"{url} has no /props, so it is not a llama.cpp server \(engine='llama.cpp'; this version drives llama.cpp, sglang, vllm\)"):
        remote(url)


def test_an_unreadable_reply_is_shown(fake_server: Callable[[dict[str, Reply]], str]) -> None:
    url = fake_server({"/props": json_reply(200, {"unexpected": True})})
    with pytest.raises(RemoteModelError, match=r"server at .* describes itself in a way this library cannot read \(KeyError\('default_generation_settings'\)\)"):
        remote(url)


def test_an_http_error_is_named_with_what_came_back(fake_server: Callable[[dict[str, Reply]], str]) -> None:
    url = fake_server({"/props": PROPS, "/tokenize": json_reply(500, {"error": "tokenizer exploded"})})
    with pytest.raises(RemoteModelError, match=r"/tokenize answered HTTP 500: .*tokenizer exploded") as failed:
        remote(url).tokenize("hello")
    assert SECRET not in str(failed.value)


def test_a_slow_server_times_out_naming_the_limit(fake_server: Callable[[dict[str, Reply]], str]) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(2)
        json_reply(200, {"tokens": [1]})(handler)

    url = fake_server({"/props": PROPS, "/tokenize": slow})
    with pytest.raises(RemoteModelError, match=r"/tokenize did not answer within 0.5 s \(after 0 retries\)"):
        remote(url, timeout=0.5).tokenize("hello")


def test_the_key_stays_in_the_client(fake_server: Callable[[dict[str, Reply]], str]) -> None:
    seen: list[str] = []

    def props(handler: BaseHTTPRequestHandler) -> None:
        seen.append(handler.headers.get("Authorization", ""))
        PROPS(handler)

    served = remote(fake_server({"/props": props}))
    assert seen == [f"Bearer {SECRET}"]  # sent
    assert SECRET not in repr(served) and served.api_key is None and served.context_length == 512 and served.version == "b1-test"


def test_what_cannot_be_served_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="Unknown server engine 'tgi': this version drives llama.cpp, sglang, vllm"):
        RemoteModel("http://127.0.0.1:9", build_tokenizer(), engine="tgi")
    with pytest.raises(ConfigurationError, match="A served target \\(target_url\\) needs its tokenizer"):
        ConfSpecChatModel(draft_model="confspec-demo-draft", target_url="http://127.0.0.1:9")
    chat = ConfSpecChatModel(draft_model="confspec-demo-draft", target_model="confspec-demo-target", target_url="http://x", target_api_key=SECRET)
    assert SECRET not in repr(chat) and SECRET not in str(chat.model_dump())
