"""Writing one reasoning step with one model.

`write_step` decodes token by token over a `ModelSession` until a step delimiter, an
end-of-sequence token, a stop string or its token budget. Delimiters and stop strings are
matched on the decoded text, so they are found even when they straddle token boundaries.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from langchain_confspec.config import SpecConfig
from langchain_confspec.engine.answer_text import UNFINISHED, AnswerText
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import StepEnd

T = TypeVar("T")


class TokenChooser:
    """Greedy choice, or temperature / top-p sampling, on the device the logits are on.

    Nothing vocabulary-sized crosses to the host: the choice is made on the device and only
    the chosen id is read back (one synchronisation per token). Sampling works in buffers
    allocated once per device, from a generator per device seeded with `seed`.
    """

    def __init__(self, config: SpecConfig) -> None:
        self.temperature = config.temperature
        self.top_p = config.top_p
        self.seed = config.seed if config.seed is not None else secrets.randbits(63)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._work: dict[tuple[torch.device, int], _SamplingBuffers] = {}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def choose(self, logits: torch.Tensor) -> int:
        return int(self.pick(logits))

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The chosen token as a 0-d tensor on the logits' device (not read back yet)."""
        if self.greedy:
            return torch.argmax(logits)
        return self.draw(self.distribution(logits))

    def choose_among(self, logits: torch.Tensor, allowed: torch.Tensor | Sequence[int]) -> int:
        """The choice when only `allowed` token ids may be written."""
        masked = self._buffers(logits).masked
        masked.fill_(float("-inf"))
        index = torch.as_tensor(allowed, dtype=torch.long).to(logits.device, non_blocking=True)
        masked[index] = logits[index]
        return self.choose(masked)

    def distribution(self, logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling distribution: temperature, then top-p truncation, renormalised. Written
        into `out`, or into a buffer that the next call reuses."""
        work = self._buffers(logits)
        probs = work.probs if out is None else out
        torch.div(logits, self.temperature, out=probs)
        probs.sub_(probs.max()).exp_()
        probs.div_(probs.sum())
        if self.top_p < 1.0:
            torch.sort(probs, descending=True, out=(work.sorted, work.order))
            torch.cumsum(work.sorted, 0, out=work.before)
            work.before.sub_(work.sorted)  # mass of the likelier tokens before each one
            torch.ge(work.before, self.top_p, out=work.outside)
            work.sorted.masked_fill_(work.outside, 0.0)
            probs.scatter_(0, work.order, work.sorted)
            probs.div_(probs.sum())
        return probs

    def sample(self, probs: torch.Tensor) -> int:
        return int(self.draw(probs))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self._generator(torch.device("cpu"))))

    def uniforms(self, n: int, device: torch.device) -> torch.Tensor:
        """`n` uniform draws on `device`, from the generator that draws its tokens."""
        return torch.rand(n, generator=self._generator(device), device=device)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """A token drawn from `probs`, as a 0-d tensor on their device (not read back yet)."""
        return torch.multinomial(probs, 1, generator=self._generator(probs.device))[0]

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _buffers(self, logits: torch.Tensor) -> _SamplingBuffers:
        key = (logits.device, logits.shape[-1])
        if key not in self._work:
            self._work[key] = _SamplingBuffers(logits.shape[-1], logits.device)
        return self._work[key]


class _SamplingBuffers:
    """Vocabulary-sized work space for one device, allocated once per generation."""

    def __init__(self, vocab: int, device: torch.device) -> None:
        self.probs = torch.empty(vocab, device=device)
        self.masked = torch.empty(vocab, device=device)
        self.sorted = torch.empty(vocab, device=device)
        self.before = torch.empty(vocab, device=device)
        self.order = torch.empty(vocab, dtype=torch.long, device=device)
        self.outside = torch.empty(vocab, dtype=torch.bool, device=device)


@dataclass(frozen=True)
class WrittenStep:
    """A step as one model wrote it."""

    ids: list[int]
    text: str
    end: StepEnd
    stop_at: int | None = None  # index in `text` where a stop string begins
    tokens_before_stop: int | None = None  # with a stop: the tokens whose text begins before it
    reused: int = 0  # leading tokens taken from a seed (a rejected step) rather than decoded

    @property
    def n_tokens(self) -> int:
        """Tokens the answer counts for this step: none that only write a stop string or follow it."""
        return len(self.ids) if self.tokens_before_stop is None else self.tokens_before_stop


class StopScanner:
    """Finds stop strings in the answer, including across step and token boundaries."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._tail_len = max((len(s) for s in self.stops), default=1) - 1
        self._tail = ""

    def find(self, step_text: str) -> int | None:
        """Index in `step_text` where the first stop string begins (negative: it began earlier)."""
        if not self.stops:
            return None
        window = self._tail + step_text
        hits = [i for i in (window.find(s) for s in self.stops) if i >= 0]
        return min(hits) - len(self._tail) if hits else None

    def advance(self, step_text: str) -> None:
        """Remember the end of an accepted step, where the next stop string may begin."""
        if self._tail_len:
            self._tail = (self._tail + step_text)[-self._tail_len :]


def ends_step(text: str, delimiters: Sequence[str]) -> bool:
    """True once a delimiter follows some non-blank text (leading blank lines belong to the step)."""
    content_start = len(text) - len(text.lstrip())
    return any(text.find(d, content_start) > content_start for d in delimiters)


_TOKEN_TEXTS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, list[str]] = weakref.WeakKeyDictionary()
_QUIET: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[frozenset[str], frozenset[int]]] = (
    weakref.WeakKeyDictionary()
)


def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Each token's text decoded on its own, once per tokenizer."""
    if tokenizer not in _TOKEN_TEXTS:
        ids = [[i] for i in range(len(tokenizer))]
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            _TOKEN_TEXTS[tokenizer] = backend.decode_batch(ids, skip_special_tokens=True)
        else:
            _TOKEN_TEXTS[tokenizer] = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    return _TOKEN_TEXTS[tokenizer]


def quiet_tokens(tokenizer: PreTrainedTokenizerBase, needles: Sequence[str]) -> frozenset[int]:
    """Tokens after which none of `needles` (delimiters, stop strings) can newly appear in
    the text: a match ends in the token that brings its last character, so a token whose
    own text lacks every needle's last character cannot complete one. Tokens whose text
    cannot be read alone (empty, part of a character) are never quiet; nor is any token when
    a needle ends in a space, which some tokenizers drop from a token decoded alone."""
    last_chars = frozenset(needle[-1] for needle in needles if needle)
    if " " in last_chars:
        return frozenset()
    by_needles = _QUIET.setdefault(tokenizer, {})
    if last_chars not in by_needles:
        by_needles[last_chars] = frozenset(
            i
            for i, text in enumerate(token_texts(tokenizer))
            if text and UNFINISHED not in text and not any(c in text for c in last_chars)
        )
    return by_needles[last_chars]


class _Vocabulary(Protocol):
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: frozenset[int]


class _Writer(Protocol):
    """Whose step is built: a local session or a served model's (`remote_session`)."""

    @property
    def loaded(self) -> _Vocabulary: ...


class Checker(Protocol):
    """A session whose model can check tokens it holds as a proposal (`take_seed`): a local
    session, or a served model's where the server scores prompt tokens."""

    ids: list[int]
    tokens_written: int

    def __len__(self) -> int: ...
    def greedy_choices(self, start: int) -> list[int]: ...
    def truncate(self, length: int) -> None: ...
    def append(self, ids: Sequence[int]) -> None: ...


class StepBuilder:
    """Grows a step token by token and says when, and why, it ends.

    The step's text is what its ids add to the answer (`AnswerText`): as `tokenizer.decode`
    of all the answer's ids reads, with an unfinished last character held back for the next
    step unless this one ends the answer (`final`). Delimiters and stop strings are matched
    on whole characters. An `opener` (a tool call's opening tag) ends the step right after it,
    wherever it stands, so that what it opens can be written as a step of its own.

    The text is decoded only after a token that could complete a delimiter or stop string
    (its own text holds a needle's last character): no other token can change whether the
    step ends, so per-token host work stays a set lookup for most tokens.
    """

    def __init__(
        self,
        session: _Writer,
        *,
        budget: int,
        delimiters: Sequence[str],
        stops: StopScanner,
        answer: AnswerText | None = None,
        final: bool = False,
        opener: str = "",
    ) -> None:
        self.tokenizer = session.loaded.tokenizer
        self.eos = session.loaded.eos_token_ids
        self.budget = budget
        self.delimiters = delimiters
        self.stops = stops
        self.answer = answer or AnswerText(self.tokenizer)
        self.final = final
        self.opener = opener
        self.ids: list[int] = []
        self._quiet = quiet_tokens(self.tokenizer, [*delimiters, *stops.stops, *([opener] if opener else [])])
        self._text = ""
        self._decoded = 0  # how many of `ids` `_text` covers
        self._shown = 0  # characters of the text `new_text` has handed out

    def new_text(self, done: WrittenStep | None = None) -> str:
        """Settled text added since the last call (for streaming: decodes after every token),
        or, given the finished step, the rest of its kept text (up to a stop string). The
        settled text only ever grows, except while a byte run reopens; then nothing new."""
        text = self.text if done is None else done.text[: len(done.text) if done.stop_at is None else max(done.stop_at, 0)]
        new = text[self._shown :]
        self._shown = max(self._shown, len(text))
        return new

    @property
    def text(self) -> str:
        """The step's settled text so far."""
        if self._decoded != len(self.ids):
            self._text = self.answer.settled(self.ids)
            self._decoded = len(self.ids)
        return self._text

    def add(self, token: int) -> WrittenStep | None:
        """Take the next token; return the finished step if this token ends it.

        An end-of-sequence token ends the step without becoming part of it.
        """
        if token in self.eos:
            return self._finish(StepEnd.EOS)
        self.ids.append(token)
        if token not in self._quiet:
            text = self.text
            stop_at = self.stops.find(text)
            if stop_at is not None:
                return self._finish(StepEnd.STOP, stop_at)
            if ends_step(text, self.delimiters) or (self.opener and text.endswith(self.opener)):
                return self._finish(StepEnd.DELIMITER)
        if len(self.ids) >= self.budget:
            return self._finish(StepEnd.LENGTH)
        return None

    def _finish(self, end: StepEnd, stop_at: int | None = None) -> WrittenStep:
        ends_answer = end in (StepEnd.EOS, StepEnd.STOP) or (end is StepEnd.LENGTH and self.final)
        text = self.answer.final(self.ids) if ends_answer else self.text
        if stop_at is None:
            return WrittenStep(self.ids, text, end)
        before = 0
        while before < len(self.ids) and len(self.answer.settled(self.ids[:before])) < stop_at:
            before += 1
        return WrittenStep(self.ids, text, end, stop_at, tokens_before_stop=before)


def write_step_texts(
    session: ModelSession,
    chooser: TokenChooser,
    *,
    budget: int,
    delimiters: Sequence[str],
    stops: StopScanner,
    answer: AnswerText | None = None,
    final: bool = False,
    stream: bool = False,
    seed: Sequence[int] = (),
    opener: str = "",
) -> Generator[str, None, WrittenStep]:
    """Decode one step of at most `budget` tokens, appending it to `session`; with `stream`,
    yield its settled text as it grows. Returns the step: its text is what it adds to
    `answer`, and `final` says that filling the budget ends the answer. With a `seed` (greedy
    decoding only: a rejected step in this model's vocabulary, which the session must end
    with), the step starts with as much of it as the model agrees with (`take_seed`)."""
    reused = 0
    step = StepBuilder(session, budget=budget, delimiters=delimiters, stops=stops, answer=answer, final=final, opener=opener)
    if seed:
        assert chooser.greedy, "a seed is checked greedily"
        done, reused = take_seed(session, step, seed)
        if stream and (text := step.new_text(done)):
            yield text
        if done is not None:
            return replace(done, reused=reused)
    while True:
        token = session.choose_next(chooser)
        done = step.add(token)
        if token not in step.eos:  # an end-of-sequence token never enters the context
            session.append((token,))
            session.tokens_written += 1
        if stream and (text := step.new_text(done)):
            yield text
        if done is not None:
            return replace(done, reused=reused) if seed else done


def take_seed(session: Checker, step: StepBuilder, seed: Sequence[int]) -> tuple[WrittenStep | None, int]:
    """Start `step` with the longest prefix of `seed` that `session`'s model would write itself
    (greedy), then its own next token: a rejected step checked as a token-level proposal, so an
    identical rewrite costs one pass instead of one per token. `session` ends with `seed`; one
    forward pass reads it (none when it was read already with its logits kept) and one read
    brings the choices back. Returns the step if it ended there, and the seed tokens it kept.
    """
    base = len(session) - len(seed)
    assert session.ids[base:] == list(seed), "the session must end with the seed"
    choices = session.greedy_choices(base)  # len(seed) + 1
    kept = kept_prefix(choices, seed)
    consumed: list[int] = []  # tokens that join the step
    done = None
    for token in [*seed[:kept], choices[kept]]:
        done = step.add(token)
        if token not in step.eos:
            consumed.append(token)
        if done is not None:
            break
    reused = min(kept, len(consumed))
    session.truncate(base + reused)
    session.append(consumed[reused:])
    session.tokens_written += len(consumed)
    return done, reused


def kept_prefix(choices: Sequence[int], proposal: Sequence[int]) -> int:
    """How many proposed tokens a greedy model keeps: those up to its first other choice.
    `choices[i]` is its token where `proposal[i]` stands."""
    return next((i for i, token in enumerate(proposal) if choices[i] != token), len(proposal))


def write_step(session: ModelSession, chooser: TokenChooser, **step: Any) -> WrittenStep:
    """`write_step_texts` run to its end: the written step."""
    return drain(write_step_texts(session, chooser, **step))


def drain(texts: Generator[Any, None, T]) -> T:
    """Run a text-yielding writer to its end and return what it returns."""
    while True:
        try:
            next(texts)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]


class StopHoldback:
    """Releases streamed text only once no stop string can still begin inside it.

    A stop string may straddle two steps; holding back the tail of each step that could be
    the start of one keeps the streamed text equal to the final, stop-trimmed answer.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._pending = ""
        self.released = 0

    def feed(self, text: str) -> str:
        """Add a step's text; return the part now safe to stream."""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:  # a whole stop string: nothing from it on is ever released
            cut = min(hits)
        else:
            cut = len(self._pending) - max(
                (n for s in self.stops for n in range(1, len(s)) if self._pending.endswith(s[:n])), default=0
            )
        safe, self._pending = self._pending[:cut], self._pending[cut:]
        self.released += len(safe)
        return safe

    def finish(self, final_text: str) -> str:
        """The rest of the final answer after what was already released."""
        rest = final_text[self.released :]
        self.released = len(final_text)
        return rest
