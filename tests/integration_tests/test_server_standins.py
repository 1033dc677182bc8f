"""The vLLM and SGLang adapters against stand-in servers: each engine's request and response
shapes (as its protocol models define them: vLLM 0.33, SGLang 0.5.23), answered by the demo
target loaded here.

Neither engine runs on a CPU machine, so this checks each adapter's reading of its protocol,
and what it asks for (the ids, the pinned sampling settings, the verdict words by id, the
prompt positions to score), not a live server.
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
from langchain_confspec.engine.verification import VerdictReader
from langchain_confspec.errors import ConfigurationError
from langchain_confspec.models.remote import RemoteModel
from langchain_confspec.records import Decision

pytest.importorskip("openai")
pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

VLLM_PINNED = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
SGLANG_PINNED = {**VLLM_PINNED, "top_k": -1, "skip_special_tokens": False}
WINDOW = 2048


class StandIn(ThreadingHTTPServer):
    """Answers as `engine`'s server does, greedily, with `target`."""

    def __init__(self, target: LoadedModel, engine: str) -> None:
        self.target = target
        self.engine = engine
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # one forward at a time
        super().__init__(("127.0.0.1", 0), _VLLM if engine == "vllm" else _SGLang)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a stream the client closed at its step's end

    def log_probs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities of the next token at every position of `ids`: (len(ids), vocab)."""
        with self.lock, torch.inference_mode():
            return torch.log_softmax(self.target.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)

    def written(self, ids: list[int], max_tokens: int) -> Iterator[int]:
        """Greedy tokens after `ids`, the end-of-sequence token included."""
        ids = list(ids)
        for _ in range(max_tokens):
            token = int(self.log_probs(ids)[-1].argmax())
            ids.append(token)
            yield token
            if token == self.target.tokenizer.eos_token_id:
                return


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: object) -> None:
        return None

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        return body

    def _get(self, replies: dict[str, object]) -> None:
        if self.path in replies:
            self._json(replies[self.path])
        else:
            self._json({"error": "Not Found"}, status=404)

    def _json(self, reply: object, status: int = 200) -> None:
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _events(self, events: Iterator[object]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


class _VLLM(_Handler):
    """vLLM's OpenAI-compatible server: `/v1/completions` with ids, `logprobs` keyed by
    `token_id:N`, `prompt_logprobs` as dicts keyed by id with each entry's rank."""

    def do_GET(self) -> None:
        self._get({"/v1/models": {"data": [{"id": "demo-target", "max_model_len": WINDOW}]}, "/version": {"version": "standin"}})

    def do_POST(self) -> None:
        body = self._body()
        tokenizer = self.server.target.tokenizer
        if self.path == "/tokenize":
            self._json({"tokens": tokenizer.encode(body["prompt"], add_special_tokens=body["add_special_tokens"])})
            return
        assert self.path == "/v1/completions" and body["model"] == "demo-target" and body["temperature"] == 0.0
        ids = list(body["prompt"])
        if body.get("stream"):
            assert "prompt_logprobs" not in body  # vLLM refuses prompt log-probabilities on a stream
            self._events(self._chunks(ids, body["max_tokens"]))
            return
        log_probs = self.server.log_probs(ids)
        choice: dict[str, Any] = {"index": 0, "text": "", "token_ids": [int(log_probs[-1].argmax())], "finish_reason": "length"}
        if body.get("logprobs"):  # a verdict: one token's log-probabilities, keyed by id
            wanted = body.get("logprob_token_ids") or torch.topk(log_probs[-1], body["logprobs"]).indices.tolist()
            top = {f"token_id:{i}": float(log_probs[-1, i]) for i in wanted}
            choice["logprobs"] = {"tokens": [], "token_logprobs": [], "text_offset": [], "top_logprobs": [top]}
        if body.get("prompt_logprobs"):
            choice["prompt_logprobs"] = [None, *(self._ranked(log_probs[k - 1], token) for k, token in enumerate(ids) if k)]
        self._json({"choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 1}})

    @staticmethod
    def _ranked(log_probs: torch.Tensor, token: int) -> dict[str, dict[str, float]]:
        """The prompt's own token with its rank, then the top one (vLLM's layout)."""
        rank = int((log_probs > log_probs[token]).sum()) + 1
        top = int(log_probs.argmax())
        return {str(token): {"logprob": float(log_probs[token]), "rank": rank}, str(top): {"logprob": float(log_probs[top]), "rank": 1}}

    def _chunks(self, ids: list[int], max_tokens: int) -> Iterator[object]:
        for token in self.server.written(ids, max_tokens):
            ended = token == self.server.target.tokenizer.eos_token_id
            choice = {"index": 0, "text": "", "token_ids": [token], "finish_reason": "stop" if ended else None, "stop_reason": None}
            yield {"choices": [choice]}


class _SGLang(_Handler):
    """SGLang's native `/generate`: `input_ids`, cumulative `output_ids` in a stream, log-probability
    rows of `[logprob, id, text]` from `logprob_start_len` (the first row empty)."""

    def do_GET(self) -> None:
        models = {"data": [{"id": "demo-target", "max_model_len": WINDOW}]}
        self._get({"/v1/models": models, "/model_info": {"model_path": "demo-target"}, "/server_info": {"version": "standin"}})

    def do_POST(self) -> None:
        body = self._body()
        tokenizer = self.server.target.tokenizer
        if self.path == "/v1/tokenize":
            self._json({"tokens": tokenizer.encode(body["prompt"], add_special_tokens=body["add_special_tokens"])})
            return
        assert self.path == "/generate"
        params, ids = body["sampling_params"], list(body["input_ids"])
        assert params["temperature"] == 0.0 and SGLANG_PINNED.items() <= params.items()
        if body.get("stream"):
            self._events(self._chunks(ids, params["max_new_tokens"]))
            return
        log_probs = self.server.log_probs(ids)
        token = int(log_probs[-1].argmax())
        meta: dict[str, Any] = {"prompt_tokens": len(ids), "cached_tokens": 0, "finish_reason": {"type": "length", "length": 1}}
        if body.get("return_logprob"):
            start = body.get("logprob_start_len", -1)
            rows = [log_probs[k - 1] for k in range(start + 1, len(ids))] if start >= 0 else []
            if body.get("top_logprobs_num"):
                n = body["top_logprobs_num"]
                meta["input_top_logprobs"] = [None, *([[float(row[i]), int(i), None] for i in torch.topk(row, n).indices] for row in rows)]
            if body.get("token_ids_logprob"):
                wanted = body["token_ids_logprob"]
                meta["input_token_ids_logprobs"] = [None, *([[float(row[i]), i, None] for i in wanted] for row in rows)]
        self._json({"text": "", "output_ids": [token], "meta_info": meta})

    def _chunks(self, ids: list[int], max_tokens: int) -> Iterator[object]:
        written: list[int] = []
        eos = self.server.target.tokenizer.eos_token_id
        for token in self.server.written(ids, max_tokens):
            written.append(token)
            finish = {"type": "stop", "matched": eos} if token == eos else {"type": "length", "length": max_tokens} if len(written) == max_tokens else None
            yield {"text": "", "output_ids": written, "meta_info": {"prompt_tokens": len(ids), "cached_tokens": 0, "finish_reason": finish}}


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedModel, LoadedModel]:
    return load_model("confspec-demo-draft", role="draft"), load_model("confspec-demo-target", role="target")


@pytest.fixture(scope="module", params=["vllm", "sglang"])
def standin(request: pytest.FixtureRequest, pair: tuple[LoadedModel, LoadedModel]) -> Iterator[StandIn]:
    server = StandIn(pair[1], request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def served(standin: StandIn, target: LoadedModel) -> RemoteModel:
    remote = RemoteModel(standin.url, target.tokenizer, engine=standin.engine)
    remote.check_tokenizer()
    assert (remote.context_length, remote.version) == (WINDOW, "standin")
    return remote


@pytest.mark.parametrize("mode", ["target_only", "confspec", "confspec:verdict"])
@pytest.mark.parametrize("token_speculation", [False, True], ids=["steps", "tokens"])
def test_a_served_target_answers_as_the_local_one(
    mode: str, token_speculation: bool, pair: tuple[LoadedModel, LoadedModel], standin: StandIn
) -> None:
    draft, target = pair
    local, remote = ConfSpecEngine(draft, target), ConfSpecEngine(draft, served(standin, target))
    mode, _, check = mode.partition(":")  # the demo's settings check by agreement
    demo = {**DEMO_SETTINGS, "target_check": check or DEMO_SETTINGS["target_check"]}
    settings = build_config(**demo, mode=mode, max_tokens=64, fast_path="off", token_speculation=token_speculation)
    standin.bodies.clear()
    rewrites = 0
    for problem in make_problems(6, seed=31_000):
        expected = local.generate(problem.turns(), settings)
        answer = remote.generate(problem.turns(), settings)
        assert answer.text == expected.text
        assert [r.target_confidence for r in answer.records] == pytest.approx([r.target_confidence for r in expected.records], abs=1e-5)
        # A rejected step is checked as a proposal on the server too: the same tokens kept.
        assert [r.rewrite_reused_tokens for r in answer.records] == [r.rewrite_reused_tokens for r in expected.records]
        rewrites += sum(r.decision in (Decision.REJECTED_BY_DRAFT, Decision.REJECTED_BY_TARGET) for r in answer.records)
        if token_speculation:
            assert [r.token_speculation for r in answer.records] == [r.token_speculation for r in expected.records]
    assert mode == "target_only" or rewrites  # the seeded rewrite was exercised
    verdicts = [b for b in standin.bodies if "logprob_token_ids" in b or "token_ids_logprob" in b]
    proposals = [b for b in standin.bodies if ("prompt_logprobs" in b or "logprob_start_len" in b) and b not in verdicts]
    assert bool(proposals) == (token_speculation or mode == "confspec")  # scored in one request each
    assert bool(verdicts) == (check == "verdict")  # agreement asks for no verdict, only a proposal's scores
    words = sorted(VerdictReader(target.tokenizer, settings).answer_ids)
    assert all(sorted(b.get("logprob_token_ids") or b.get("token_ids_logprob")) == words for b in verdicts)  # exact, by id
    if standin.engine == "vllm":
        completions = [b for b in standin.bodies if "max_tokens" in b]
        assert all(b["return_token_ids"] and VLLM_PINNED.items() <= b.items() for b in completions)
        assert all(b["return_tokens_as_token_ids"] for b in verdicts)
    else:  # scored from the prompt's log-probabilities, the cache read up to the first scored position
        assert all(b["logprob_start_len"] == len(b["input_ids"]) - 2 for b in verdicts)
        assert all(0 < b["logprob_start_len"] < len(b["input_ids"]) - 1 for b in proposals)


def test_what_a_served_target_cannot_score_is_refused_naming_it(pair: tuple[LoadedModel, LoadedModel], standin: StandIn) -> None:
    engine = ConfSpecEngine(pair[0], served(standin, pair[1]))
    turns = make_problems(1, seed=31_200)[0].turns()
    with pytest.raises(ConfigurationError, match=rf"Sampled token speculation .*{standin.url}"):
        engine.generate(turns, build_config(mode="target_only", token_speculation=True, temperature=0.7, seed=1))
    with pytest.raises(ConfigurationError, match=rf"speculation_depth .*{standin.url}"):
        engine.generate(turns, build_config(mode="target_only", token_speculation=True, speculation_depth=4))


def test_the_chat_model_takes_a_served_target(pair: tuple[LoadedModel, LoadedModel], standin: StandIn) -> None:
    from langchain_confspec import ConfSpecChatModel

    problem = make_problems(1, seed=31_100)[0]
    expected = ConfSpecEngine(*pair).generate(problem.turns(), build_config(mode="target_only", max_tokens=64, fast_path="off")).text
    # No target_engine: the server is asked which engine it is.
    chat = ConfSpecChatModel(
        draft_model="confspec-demo-draft", target_model="confspec-demo-target", mode="target_only", max_tokens=64,
        fast_path="off", target_url=standin.url, token_speculation=True,
    )  # fmt: skip
    message = chat.invoke(problem.question)
    assert message.content == expected
    summary = message.response_metadata["confspec"]["summary"]
    assert summary["target"]["server"] == f"{standin.engine} standin"
