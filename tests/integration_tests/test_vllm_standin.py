"""The vLLM adapter against a stand-in server: vLLM's `/v1/completions` request and response
shapes (as its protocol models define them), answered by the demo target loaded here.

No vLLM runs on a CPU machine, so this checks the adapter's reading of the protocol, and what
it asks for (the ids, the pinned sampling settings, the verdict words by id), not a live vLLM.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from langchain_confspec import ConfSpecEngine, LoadedModel, load_model
from langchain_confspec.config import build_config
from langchain_confspec.demo import DEMO_SETTINGS
from langchain_confspec.demo.problems import make_problems
from langchain_confspec.remote import RemoteModel
from langchain_confspec.verification import VerdictReader

pytest.importorskip("openai")
pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

PINNED = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


class StandIn(ThreadingHTTPServer):
    """Answers as vLLM's OpenAI-compatible server does, greedily, with `target`."""

    def __init__(self, target: LoadedModel) -> None:
        self.target = target
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # one forward at a time
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a stream the client closed at its step's end

    def log_probs(self, ids: list[int]) -> torch.Tensor:
        with self.lock, torch.inference_mode():
            return torch.log_softmax(self.target.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        replies = {"/v1/models": {"data": [{"id": "demo-target", "max_model_len": 2048}]}, "/version": {"version": "standin"}}
        self._json(replies[self.path])

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        tokenizer = self.server.target.tokenizer
        if self.path == "/tokenize":
            self._json({"tokens": tokenizer.encode(body["prompt"], add_special_tokens=body["add_special_tokens"])})
            return
        assert self.path == "/v1/completions" and body["model"] == "demo-target" and body["temperature"] == 0.0
        ids = list(body["prompt"])
        if not body.get("stream"):  # a verdict: one token's log-probabilities, keyed by id
            log_probs = self.server.log_probs(ids)
            wanted = body.get("logprob_token_ids") or torch.topk(log_probs, body["logprobs"]).indices.tolist()
            top = {f"token_id:{i}": float(log_probs[i]) for i in wanted}
            choice = {"index": 0, "text": "", "token_ids": [int(log_probs.argmax())], "finish_reason": "length",
                      "logprobs": {"tokens": [], "token_logprobs": [], "text_offset": [], "top_logprobs": [top]}}  # fmt: skip
            self._json({"choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 1}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        eos = tokenizer.eos_token_id
        for _ in range(body["max_tokens"]):
            token = int(self.server.log_probs(ids).argmax())
            ids.append(token)
            ended = token == eos
            choice = {"index": 0, "text": tokenizer.decode([token]), "token_ids": [token],
                      "finish_reason": "stop" if ended else None, "stop_reason": None}  # fmt: skip
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            self.wfile.flush()
            if ended:
                break
        self.wfile.write(b"data: [DONE]\n\n")

    def _json(self, reply: object) -> None:
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedModel, LoadedModel]:
    return load_model("confspec-demo-draft", role="draft"), load_model("confspec-demo-target", role="target")


@pytest.fixture(scope="module")
def standin(pair: tuple[LoadedModel, LoadedModel]) -> Iterator[StandIn]:
    server = StandIn(pair[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["target_only", "confspec"])
def test_the_vllm_adapter_answers_as_the_local_target(mode: str, pair: tuple[LoadedModel, LoadedModel], standin: StandIn) -> None:
    draft, target = pair
    remote = RemoteModel(f"http://127.0.0.1:{standin.server_address[1]}", target.tokenizer, engine="vllm")
    remote.check_tokenizer()
    assert (remote.context_length, remote.version) == (2048, "standin")
    local, served = ConfSpecEngine(draft, target), ConfSpecEngine(draft, remote)
    settings = build_config(**DEMO_SETTINGS, mode=mode, max_tokens=64, fast_path="off")
    for problem in make_problems(6, seed=31_000):
        expected = local.generate(problem.turns(), settings)
        answer = served.generate(problem.turns(), settings)
        assert answer.text == expected.text
        assert [r.target_confidence for r in answer.records] == pytest.approx([r.target_confidence for r in expected.records], abs=1e-5)
    completions = [b for b in standin.bodies if "max_tokens" in b]
    assert completions and all(b["return_token_ids"] and PINNED.items() <= b.items() for b in completions)
    verdicts = [b for b in completions if not b.get("stream")]
    assert mode == "target_only" or verdicts  # asked, and by the verdict words' own ids
    words = sorted(VerdictReader(target.tokenizer, settings).answer_ids)
    assert all(sorted(b["logprob_token_ids"]) == words and b["return_tokens_as_token_ids"] for b in verdicts)


def test_the_chat_model_takes_a_vllm_target(pair: tuple[LoadedModel, LoadedModel], standin: StandIn) -> None:
    from langchain_confspec import ConfSpecChatModel

    problem = make_problems(1, seed=31_100)[0]
    expected = ConfSpecEngine(*pair).generate(problem.turns(), build_config(mode="target_only", max_tokens=64, fast_path="off")).text
    chat = ConfSpecChatModel(
        draft_model="confspec-demo-draft", target_model="confspec-demo-target", mode="target_only", max_tokens=64,
        fast_path="off", target_url=f"http://127.0.0.1:{standin.server_address[1]}", target_engine="vllm",
    )  # fmt: skip
    message = chat.invoke(problem.question)
    assert message.content == expected
    assert message.response_metadata["confspec"]["summary"]["target"]["server"] == "vllm standin"
