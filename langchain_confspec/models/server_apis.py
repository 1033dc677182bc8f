"""What each serving engine calls the three requests a served model answers, and how it replies.

`RemoteModel` does the transport, the errors and the flow; an API here builds each request's
path and body for one engine and reads its replies: the server's facts at start-up (context
window, version, model name), tokenizing a text, the probabilities after a context (a
verdict), a streamed step, and (vLLM, SGLang) the model's greedy choice at every position of a
proposal, scored in one request. Every sampling setting the method relies on is sent
explicitly, so a server's defaults (repetition penalties, min-p, top-k) never change what the
model writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_confspec.records import ServerWork


@dataclass(frozen=True)
class ServerInfo:
    context_length: int
    version: str
    model: str | None = None  # the name requests must carry, where the engine asks for one


@dataclass(frozen=True)
class Chunk:
    """What one streamed piece of a step says."""

    tokens: list[int] = field(default_factory=list)
    done: bool = False
    eos: bool = False  # the model ended the answer (its end-of-sequence token may not be among `tokens`)
    so_far: bool = False  # `tokens` are all the step's tokens until now, not only the new ones


Request = tuple[str, dict[str, Any]]


class ServerAPI(Protocol):
    engine: str
    identify_path: str  # an endpoint only this engine's server has
    probe_paths: tuple[str, ...]
    scores_proposals: bool  # `score` works: token speculation and seeded rewrites can use it

    def probe(self, get: Callable[[str], Any]) -> ServerInfo: ...
    def tokenize(self, text: str, model: str | None) -> Request: ...
    def read_tokens(self, reply: Any) -> list[int]: ...
    def verdict(self, ids: Sequence[int], top_n: int, wanted: Sequence[int], model: str | None) -> Request: ...
    def read_verdict(self, reply: Any) -> dict[int, float]: ...
    def step(self, ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None, model: str | None) -> Request: ...
    def read_chunk(self, chunk: Any) -> Chunk: ...
    def score(self, ids: Sequence[int], start: int, model: str | None) -> Request: ...
    def read_choices(self, reply: Any, start: int, length: int) -> list[int]: ...
    def work(self, reply: Any) -> ServerWork: ...


class LlamaCppAPI:
    """llama.cpp's `llama-server`: its native `/completion`, which takes and returns token ids
    (its `/v1/completions` returns none); top-n probabilities with their ids (`n_probs`, no cap)."""

    engine = "llama.cpp"
    identify_path = "/props"
    probe_paths = ("/props",)
    scores_proposals = False  # it returns probabilities of written tokens only, never of prompt ones

    def probe(self, get: Callable[[str], Any]) -> ServerInfo:
        props = get("/props")
        return ServerInfo(int(props["default_generation_settings"]["n_ctx"]), str(props.get("build_info", "unknown")))

    def tokenize(self, text: str, model: str | None) -> Request:
        return "/tokenize", {"content": text, "add_special": False, "parse_special": True}

    def read_tokens(self, reply: Any) -> list[int]:
        return [int(t) for t in reply["tokens"]]

    def verdict(self, ids: Sequence[int], top_n: int, wanted: Sequence[int], model: str | None) -> Request:
        return "/completion", {**self._completion(ids, 1, 0.0, 1.0, None), "n_probs": top_n}

    def read_verdict(self, reply: Any) -> dict[int, float]:
        top = reply["completion_probabilities"][0]["top_logprobs"]
        return {int(entry["id"]): math.exp(float(entry["logprob"])) for entry in top}

    def step(self, ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None, model: str | None) -> Request:
        # `timings_per_token`: every chunk carries the figures so far, so a stream closed at the
        # step's end still reports them.
        return "/completion", {**self._completion(ids, max_tokens, temperature, top_p, seed), "stream": True, "timings_per_token": True}

    def read_chunk(self, chunk: Any) -> Chunk:
        stopped = bool(chunk.get("stop"))
        return Chunk([int(t) for t in chunk.get("tokens", ())], stopped, stopped and chunk.get("stop_type") == "eos")

    def score(self, ids: Sequence[int], start: int, model: str | None) -> Request:
        raise NotImplementedError("llama-server cannot score prompt tokens")

    def read_choices(self, reply: Any, start: int, length: int) -> list[int]:
        raise NotImplementedError("llama-server cannot score prompt tokens")

    def work(self, reply: Any) -> ServerWork:
        timings = reply.get("timings") or {}
        return ServerWork(
            requests=1,
            prompt_tokens=int(timings.get("prompt_n", 0)),
            cached_prompt_tokens=int(timings.get("cache_n", 0)),
            seconds=(float(timings.get("prompt_ms", 0.0)) + float(timings.get("predicted_ms", 0.0))) / 1000,
        )

    @staticmethod
    def _completion(ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
        """The sampler chain named in full: top-p, then temperature (0 is greedy)."""
        return {
            "prompt": list(ids),
            "n_predict": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "samplers": ["top_p", "temperature"],
            "seed": seed if seed is not None else -1,
            "return_tokens": True,
            "cache_prompt": True,
        }


class VLLMAPI:
    """vLLM's OpenAI-compatible server: `/v1/completions` with a prompt of ids and
    `return_token_ids`; a verdict's probabilities for the verdict words exactly
    (`logprob_token_ids`, recent versions), else for the top-n (`logprobs`, capped by the
    server's `--max-logprobs`, 20 by default), keyed by id (`return_tokens_as_token_ids`); a
    proposal scored with `prompt_logprobs`, which makes vLLM read the whole prompt again (it
    skips its prefix cache for such requests). Written from vLLM's request and response models
    (0.33); not yet run against a live server."""

    engine = "vllm"
    identify_path = "/version"
    probe_paths = ("/v1/models", "/version")
    scores_proposals = True

    def probe(self, get: Callable[[str], Any]) -> ServerInfo:
        model = get("/v1/models")["data"][0]
        return ServerInfo(int(model["max_model_len"]), str(get("/version").get("version", "unknown")), str(model["id"]))

    def tokenize(self, text: str, model: str | None) -> Request:
        return "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False}

    def read_tokens(self, reply: Any) -> list[int]:
        return [int(t) for t in reply["tokens"]]

    def verdict(self, ids: Sequence[int], top_n: int, wanted: Sequence[int], model: str | None) -> Request:
        body = {**self._completion(ids, 1, 0.0, 1.0, None, model), "logprobs": min(top_n, 20), "return_tokens_as_token_ids": True}
        if wanted:
            body["logprob_token_ids"] = list(wanted)
        return "/v1/completions", body

    def read_verdict(self, reply: Any) -> dict[int, float]:
        top = reply["choices"][0]["logprobs"]["top_logprobs"][0]
        return {int(key.removeprefix("token_id:")): math.exp(float(value)) for key, value in top.items()}

    def step(self, ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None, model: str | None) -> Request:
        return "/v1/completions", {**self._completion(ids, max_tokens, temperature, top_p, seed, model), "stream": True}

    def read_chunk(self, chunk: Any) -> Chunk:
        if not chunk.get("choices"):  # the usage chunk
            return Chunk()
        choice = chunk["choices"][0]
        finished = choice.get("finish_reason") is not None
        # "stop" without a stop string or token of ours: the model's end-of-sequence token.
        eos = choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
        return Chunk([int(t) for t in choice.get("token_ids") or ()], finished, eos)

    def score(self, ids: Sequence[int], start: int, model: str | None) -> Request:
        return "/v1/completions", {**self._completion(ids, 1, 0.0, 1.0, None, model), "prompt_logprobs": 1}

    def read_choices(self, reply: Any, start: int, length: int) -> list[int]:
        """Each prompt position's rank-1 token (after the prompt's own token, which comes first
        with its true rank), then the token written after the prompt."""
        choice = reply["choices"][0]
        rows = choice["prompt_logprobs"][start:length]
        chosen = [int(next(token for token, entry in row.items() if entry["rank"] == 1)) for row in rows]
        return [*chosen, *[int(t) for t in choice["token_ids"][:1]]]

    def work(self, reply: Any) -> ServerWork:
        usage = reply.get("usage") or {}
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return ServerWork(requests=1, prompt_tokens=int(usage.get("prompt_tokens", 0)) - cached, cached_prompt_tokens=cached)

    @staticmethod
    def _completion(
        ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None, model: str | None
    ) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": list(ids),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": seed,
            "return_token_ids": True,
            "skip_special_tokens": False,
        }


class SGLangAPI:
    """SGLang's native `/generate`: `input_ids` in, `output_ids` out (a stream's chunks carry
    all of them so far, the server's default); a verdict's probabilities for the verdict words
    exactly (`token_ids_logprob`), else for the top-n (`top_logprobs_num`), and a proposal's
    greedy choices, both read from the prompt's log-probabilities from `logprob_start_len`
    (up to which the server's prefix cache is still read). Written from
    SGLang's request and response models (0.5.23); not yet run against a live server."""

    engine = "sglang"
    identify_path = "/model_info"
    probe_paths = ("/v1/models", "/server_info")
    scores_proposals = True

    def probe(self, get: Callable[[str], Any]) -> ServerInfo:
        model = get("/v1/models")["data"][0]
        return ServerInfo(int(model["max_model_len"]), str(get("/server_info").get("version", "unknown")))

    def tokenize(self, text: str, model: str | None) -> Request:
        return "/v1/tokenize", {"prompt": text, "add_special_tokens": False}

    def read_tokens(self, reply: Any) -> list[int]:
        return [int(t) for t in reply["tokens"]]

    def verdict(self, ids: Sequence[int], top_n: int, wanted: Sequence[int], model: str | None) -> Request:
        # Read from the prompt's log-probabilities, which are the model's own in any batch (a
        # written token's follow the sampler of the batch it ran in): one token more is sent,
        # and the row before it is the distribution after `ids`.
        body = {**self._generate([*ids, ids[-1]], 1, 0.0, 1.0, None), "return_logprob": True, "logprob_start_len": len(ids) - 1}
        return "/generate", {**body, **({"token_ids_logprob": list(wanted)} if wanted else {"top_logprobs_num": top_n})}

    def read_verdict(self, reply: Any) -> dict[int, float]:
        meta = reply["meta_info"]
        row = (meta.get("input_token_ids_logprobs") or meta["input_top_logprobs"])[1]
        return {int(token): math.exp(float(logprob)) for logprob, token, _ in row}

    def step(self, ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None, model: str | None) -> Request:
        return "/generate", {**self._generate(ids, max_tokens, temperature, top_p, seed), "stream": True}

    def read_chunk(self, chunk: Any) -> Chunk:
        finish = chunk["meta_info"].get("finish_reason")
        # The end-of-sequence token is among `output_ids` ("matched" names it).
        eos = bool(finish) and finish["type"] == "stop" and isinstance(finish.get("matched"), int)
        return Chunk([int(t) for t in chunk["output_ids"]], finish is not None, eos, so_far=True)

    def score(self, ids: Sequence[int], start: int, model: str | None) -> Request:
        # Input position j is scored from position `logprob_start_len + j`'s prefix, and its
        # first row is empty: start one early to score the token at `start`.
        body = {**self._generate(ids, 1, 0.0, 1.0, None), "return_logprob": True, "top_logprobs_num": 1}
        return "/generate", {**body, "logprob_start_len": start - 1}

    def read_choices(self, reply: Any, start: int, length: int) -> list[int]:
        rows = reply["meta_info"]["input_top_logprobs"][1:]
        return [*(int(row[0][1]) for row in rows), *(int(t) for t in reply["output_ids"][:1])]

    def work(self, reply: Any) -> ServerWork:
        meta = reply.get("meta_info") or {}
        cached = int(meta.get("cached_tokens") or 0)
        return ServerWork(
            requests=1,
            prompt_tokens=int(meta.get("prompt_tokens", 0)) - cached,
            cached_prompt_tokens=cached,
            seconds=float(meta.get("e2e_latency") or 0.0),
        )

    @staticmethod
    def _generate(ids: Sequence[int], max_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "skip_special_tokens": False,
        }
        if seed is not None:  # honoured where the server runs with --enable-deterministic-inference
            params["sampling_seed"] = seed
        return {"input_ids": list(ids), "sampling_params": params}


APIS: dict[str, ServerAPI] = {api.engine: api for api in (LlamaCppAPI(), SGLangAPI(), VLLMAPI())}
"""The engines `RemoteModel` drives, by the name `engine=` takes, in the order `engine="auto"`
asks for their `identify_path`."""
