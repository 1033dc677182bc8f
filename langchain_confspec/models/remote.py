"""A model behind an inference server, reached over HTTP with token ids in and out.

Users who serve a large target with llama.cpp's `llama-server`, vLLM or SGLang keep it out of
their Python process. The method needs two things from such a model, one request each: a step
written from token ids (streamed, so that the engine's own step rules decide where it ends and
the stream is closed there), and the next-token probabilities after a context (a verdict).
Token speculation needs a third where the engine has it: the greedy choice at every position
of a proposal. Prompts are rendered and tokenized locally and sent as ids, so nothing is
re-tokenized on the way; a start-up check makes sure the server's tokenizer reads texts as the
local one does.

What each engine calls these requests is in `server_apis`. Requests go through the `openai`
client (the `remote` extra) for its retries with backoff and its timeouts; every failure
becomes a `RemoteModelError` that names the server and what came back. The API key stays
inside the client: never in `repr`, errors or records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from transformers import PreTrainedTokenizerBase

from langchain_confspec.errors import (
    ConfigurationError,
    RemoteModelError,
    TokenizerMismatchError,
)
from langchain_confspec.models.prompting import render_prompt
from langchain_confspec.models.server_apis import APIS, ServerAPI
from langchain_confspec.records import ServerWork

T = TypeVar("T")

PARITY_TEXTS = (
    "Tom has 3 apples and buys 45 more. How many apples does he have?",
    "What is 3 + 5 * 3?\n\nStep 1: 5 * 3 = 15.",
    "  leading spaces, trailing ones  ",
    "Naïve café: 12,345.67 € — ok?",
    "<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"12 * 3\"}}</tool_call>",
    "Is the last step above correct? Answer Yes or No.\nAnswer: Yes",
)
"""Texts the server's tokenizer must read as the local one does before the model is used."""
AUTO = "auto"
"""`engine=` for a server identified by the endpoint only its engine has (`server_apis`)."""
VERDICT_TOP_N = 100
"""Most likely next tokens a verdict request asks for by default: the verdict words are among
them whenever they carry weight, and a word left out lowers the recorded mass."""


class ServerCounters:
    """What the server reported doing for one generation, summed over its replies."""

    def __init__(self) -> None:
        self.work = ServerWork()

    def add(self, work: ServerWork) -> None:
        self.work = self.work + work


@dataclass
class RemoteModel:
    """A causal LM served at `base_url` by `engine` (`llama.cpp`'s `llama-server`, `vllm` or
    `sglang`; `auto` asks the server), with its tokenizer loaded here.

    `name` labels it in records (default: the URL); `timeout` is per request, in seconds;
    `max_retries` is the client's (backoff on connection errors, 408, 429 and 5xx);
    `verdict_top_n` is how many of the likeliest next tokens a verdict reads where the engine
    cannot be asked for the verdict words themselves.
    """

    base_url: str
    tokenizer: PreTrainedTokenizerBase
    name: str = ""
    engine: str = "auto"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    max_retries: int = 2
    verdict_top_n: int = VERDICT_TOP_N
    eos_token_ids: frozenset[int] = field(init=False)
    context_length: int = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        if self.engine not in (AUTO, *APIS):
            raise ConfigurationError(f"Unknown server engine {self.engine!r}: this version drives {', '.join(APIS)} (or {AUTO!r}).")
        self.base_url = self.base_url.rstrip("/")
        self.name = self.name or self.base_url
        self._client = _client(self.base_url, self.api_key, self.timeout, self.max_retries)
        self.api_key = None  # the client holds it; nothing else does
        if self.engine == AUTO:
            self.engine = self._identify()
        self.api: ServerAPI = APIS[self.engine]
        self.eos_token_ids = frozenset({self.tokenizer.eos_token_id} - {None})
        paths = " and ".join(self.api.probe_paths)
        not_found = f"{self.base_url} has no {paths}, so it is not a {self.engine} server"
        try:
            info = self.api.probe(lambda path: self._request("GET", path, not_found=not_found))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise RemoteModelError(f"The {self.engine} server at {self.base_url} describes itself in a way this library cannot read ({error!r}).") from None
        self.context_length, self.version, self._model = info.context_length, info.version, info.model

    def _identify(self) -> str:
        """The engine serving `base_url`: the first whose own endpoint it answers."""
        import openai

        for api in APIS.values():
            try:
                self._client.get(api.identify_path, cast_to=object)
            except openai.NotFoundError:
                continue
            except Exception as error:  # the client's, named
                raise self._failure(api.identify_path, error) from error
            return api.engine
        paths = ", ".join(f"{api.identify_path} ({api.engine})" for api in APIS.values())
        raise RemoteModelError(f"{self.base_url} answers none of {paths}: name its engine (engine=...) if it is one of these.")

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def directory(self) -> Path | None:
        """The local folder the tokenizer was loaded from, if any: the model's side files (a
        token-speculation depth table fitted for it) live there, as beside a local model."""
        path = Path(str(self.tokenizer.name_or_path or ""))
        return path if str(path) and path.is_dir() else None

    @property
    def scores_proposals(self) -> bool:
        """Whether the server can score proposed tokens in one request (vLLM, SGLang), so that
        token speculation and seeded rewrites work against it."""
        return self.api.scores_proposals

    def render_prompt(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        return render_prompt(self.tokenizer, turns, tools)

    # -- requests ---------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        path, body = self.api.tokenize(text, self._model)
        reply = self._request("POST", path, body)
        return self._read(path, reply, self.api.read_tokens)

    def check_tokenizer(self, texts: Sequence[str] = PARITY_TEXTS) -> None:
        """Refuse a server whose tokenizer reads any of `texts` differently from the local one."""
        for text in texts:
            local = self.tokenizer.encode(text, add_special_tokens=False)
            served = self.tokenize(text)
            if served != local:
                raise TokenizerMismatchError(
                    f"The server at {self.base_url} tokenizes {text!r} as {served[:12]}... but the local tokenizer "
                    f"({self.tokenizer.name_or_path}) as {local[:12]}...: serve the same tokenizer, or load the one the "
                    "server uses."
                )

    def next_token_probs(self, ids: Sequence[int], counters: ServerCounters, wanted: Sequence[int] = ()) -> dict[int, float]:
        """Probabilities of next tokens after `ids` (before any sampler): of the `wanted` ones
        where the engine takes a list, else of the `verdict_top_n` likeliest."""
        path, body = self.api.verdict(ids, min(self.verdict_top_n, self.vocab_size), wanted, self._model)
        reply = self._request("POST", path, body)
        counters.add(self._read(path, reply, self.api.work))
        return self._read(path, reply, self.api.read_verdict)

    def greedy_choices(self, ids: Sequence[int], start: int, counters: ServerCounters) -> list[int]:
        """The model's greedy next token at every length of `ids` from `start` to the end: the
        tokens from `start` on checked as a proposal, in one request."""
        path, body = self.api.score(ids, start, self._model)
        reply = self._request("POST", path, body)
        counters.add(self._read(path, reply, self.api.work))
        choices = self._read(path, reply, lambda r: self.api.read_choices(r, start, len(ids)))
        if len(choices) != len(ids) - start + 1:
            raise self._unreadable(path, reply)
        return choices

    @contextmanager
    def stream(
        self, ids: Sequence[int], counters: ServerCounters, *, max_tokens: int, temperature: float, top_p: float,
        seed: int | None,
    ) -> Iterator[Iterator[int]]:
        """Tokens the model writes after `ids`, as the server streams them; an end-of-sequence
        token comes last where the model ended. Leaving the block closes the stream, which
        stops the server writing."""
        path, body = self.api.step(ids, max_tokens, temperature, top_p, seed, self._model)
        chunks = self._open_stream(path, body)
        tokens = self._tokens(path, chunks, counters)
        try:
            yield tokens
        finally:
            tokens.close()  # counts the request, however far it was read
            chunks.close()

    def _tokens(self, path: str, chunks: Any, counters: ServerCounters) -> Iterator[int]:
        last: Any = {}
        written: list[int] = []
        try:
            for reply in chunks:
                last = reply
                chunk = self._read(path, reply, self.api.read_chunk)
                new = chunk.tokens[len(written) :] if chunk.so_far else chunk.tokens
                written.extend(new)
                yield from new
                if chunk.done:
                    if chunk.eos and self.eos_token_ids and not (written and written[-1] in self.eos_token_ids):
                        yield min(self.eos_token_ids)
                    return
        except RemoteModelError:
            raise
        except Exception as error:  # the client's, named
            raise self._failure(path, error) from error
        finally:  # also when the step ends first and the stream is closed
            counters.add(self._read(path, last, self.api.work))

    def _read(self, path: str, reply: Any, reader: Callable[[Any], T]) -> T:
        try:
            return reader(reply)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise self._unreadable(path, reply) from None

    # -- transport ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *, not_found: str = "") -> Any:
        import openai

        try:
            if method == "GET":
                return self._client.get(path, cast_to=object)
            return self._client.post(path, body=body, cast_to=object)
        except openai.NotFoundError as error:
            if not not_found:
                raise self._failure(path, error) from error
            raise RemoteModelError(f"{not_found} (engine={self.engine!r}; this version drives {', '.join(APIS)}).") from error
        except Exception as error:  # the client's, named
            raise self._failure(path, error) from error

    def _open_stream(self, path: str, body: dict[str, Any]) -> Any:
        import openai

        try:
            return self._client.post(path, body=body, cast_to=object, stream=True, stream_cls=openai.Stream[object])
        except Exception as error:  # the client's, named
            raise self._failure(path, error) from error

    def _failure(self, path: str, error: BaseException) -> RemoteModelError:
        import openai

        server = "server" if self.engine == AUTO else f"{self.engine} server"
        where = f"The {server} at {self.base_url}{path}"
        if isinstance(error, openai.APITimeoutError):
            return RemoteModelError(f"{where} did not answer within {self.timeout:g} s (after {self.max_retries} retries).")
        if isinstance(error, openai.APIConnectionError):
            return RemoteModelError(f"{where} could not be reached (after {self.max_retries} retries): {error.__cause__ or error}.")
        if isinstance(error, openai.APIStatusError):
            return RemoteModelError(f"{where} answered HTTP {error.status_code}: {_short(error.response.text)}")
        return RemoteModelError(f"{where} failed: {type(error).__name__}: {_short(str(error))}")

    def _unreadable(self, path: str, reply: Any) -> RemoteModelError:
        return RemoteModelError(f"The {self.engine} server at {self.base_url}{path} sent a reply this library cannot read: {_short(repr(reply))}")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _client(base_url: str, api_key: str | None, timeout: float, max_retries: int) -> Any:
    try:
        import openai
    except ImportError:
        raise ConfigurationError(
            "A remote model needs the openai client: pip install 'langchain-confspec[remote]'."
        ) from None
    return openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries)
