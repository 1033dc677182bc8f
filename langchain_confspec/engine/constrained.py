"""Writing JSON that matches a schema, whatever the model would rather write.

A schema compiles to a plan of nodes. Fixed text (braces, keys, commas, a tool's name when
it is forced) is appended as it is; the model chooses only values, and only among tokens
that keep them valid: digits for a number, no quote, backslash or control character inside
a string, one of the allowed literals for an enum, a boolean or a tool name. A string, a
number or an array ends where the model prefers a token that cannot continue it. Forcing the
structure and masking the choices makes the output well-formed with any tokenizer that can
spell JSON, at the price of a fixed key order with every declared property present.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from langchain_confspec.engine.decoding import TokenChooser, WrittenStep
from langchain_confspec.errors import UnsupportedSchemaError
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.session import ModelSession
from langchain_confspec.records import Span, StepEnd

MAX_STRING_TOKENS = 64
MAX_NUMBER_DIGITS = 15
MAX_ARRAY_ITEMS = 16
_MAX_DEPTH = 12


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """Text written as it is."""

    text: str


@dataclass(frozen=True)
class Choice:
    """One of a few JSON literals (enum, const, boolean, null, a tool's name)."""

    options: tuple[str, ...]


@dataclass(frozen=True)
class String:
    pass


@dataclass(frozen=True)
class Number:
    integer: bool


@dataclass(frozen=True)
class Array:
    item: Node


@dataclass(frozen=True)
class Object:
    properties: tuple[tuple[str, Node], ...]


@dataclass(frozen=True)
class Sequence_:
    """Nodes written one after another."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class ToolCall:
    """`{"name": <one of the tools>, "arguments": <that tool's arguments>}`."""

    tools: tuple[tuple[str, Node], ...]


Node = Literal | Choice | String | Number | Array | Object | Sequence_ | ToolCall


# Keywords the plan does not enforce: ignored, unless the caller asks for strict adherence.
UNENFORCED_KEYWORDS = (
    "pattern", "format", "patternProperties", "not", "if", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems",
)


def compile_schema(schema: Mapping[str, Any], *, strict: bool = False) -> Node:
    """The plan for a JSON schema; `UnsupportedSchemaError` names what cannot be enforced.

    With `strict`, a keyword the plan would not enforce (a pattern, a range) is an error
    rather than ignored.
    """
    defs = schema.get("$defs", schema.get("definitions", {}))
    return _Compiler(defs, strict).node(schema, "$", 0)


def tool_call_plan(
    tools: Mapping[str, Mapping[str, Any]], *, open_tag: str, close_tag: str, strict: bool = False
) -> Node:
    """A whole tool call: the tag, the call object with one of `tools` (name -> parameter
    schema), the closing tag."""
    if not tools:
        raise UnsupportedSchemaError("No tools to call.")
    compiled = tuple((name, compile_schema(schema, strict=strict)) for name, schema in tools.items())
    return Sequence_((Literal(open_tag), ToolCall(compiled), Literal(close_tag)))


@dataclass(frozen=True)
class _Compiler:
    defs: Mapping[str, Any]
    strict: bool

    def node(self, schema: Mapping[str, Any], where: str, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise UnsupportedSchemaError(f"The schema nests deeper than {_MAX_DEPTH} levels at {where} (recursive?).")
        if "$ref" in schema:
            name = str(schema["$ref"]).rsplit("/", 1)[-1]
            if name not in self.defs:
                raise UnsupportedSchemaError(f"Unresolved reference {schema['$ref']!r} at {where}.")
            return self.node(self.defs[name], where, depth + 1)
        if self.strict:
            for keyword in UNENFORCED_KEYWORDS:
                if keyword in schema:
                    raise UnsupportedSchemaError(
                        f"strict=True, but the constrained decoder cannot enforce {keyword!r} (at {where})."
                    )
        return self._by_type(schema, where, depth)

    def _by_type(self, schema: Mapping[str, Any], where: str, depth: int) -> Node:
        if "const" in schema:
            return Choice((json.dumps(schema["const"]),))
        if "enum" in schema:
            return Choice(tuple(json.dumps(value) for value in schema["enum"]))
        branches = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
        if branches is not None:
            kept = [b for b in branches if b.get("type") != "null"]
            if len(kept) != 1:
                raise UnsupportedSchemaError(
                    f"The constrained decoder handles unions only of one type and null; {where} has {len(kept)} choices."
                )
            return self.node(kept[0], where, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            if len(kinds) != 1:
                raise UnsupportedSchemaError(f"The constrained decoder cannot choose between types {kind} at {where}.")
            kind = kinds[0]
        if kind == "string":
            return String()
        if kind in ("integer", "number"):
            return Number(integer=kind == "integer")
        if kind == "boolean":
            return Choice(("true", "false"))
        if kind == "null":
            return Choice(("null",))
        if kind == "array":
            if "items" not in schema or not isinstance(schema["items"], Mapping):
                raise UnsupportedSchemaError(f"The array at {where} needs one `items` schema.")
            return Array(self.node(schema["items"], where + "[]", depth + 1))
        if kind == "object" or "properties" in schema:
            properties = schema.get("properties") or {}  # none declared: `{}` is the one safe object
            return Object(
                tuple((key, self.node(sub, f"{where}.{key}", depth + 1)) for key, sub in properties.items())
            )
        raise UnsupportedSchemaError(f"Unsupported or missing type {kind!r} at {where}.")


# -- the tokenizer's view of JSON ----------------------------------------------------------------


class TokenClasses:
    """Which tokens may continue a string or a number, computed once per tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        special = set(tokenizer.all_special_ids)
        string_body, digits, leading_digits, single = [], [], [], {}
        comma_led: list[int] = []
        for token_id in range(len(tokenizer)):
            if token_id in special:
                continue
            text = tokenizer.decode([token_id])
            if not text or "\ufffd" in text:
                continue
            if all(c.isascii() and c.isdigit() for c in text):
                digits.append(token_id)
                if text == "0" or not text.startswith("0"):
                    leading_digits.append(token_id)
            if '"' not in text and "\\" not in text and all(ord(c) >= 32 for c in text):
                string_body.append(token_id)
            if len(text) == 1:
                single.setdefault(text, token_id)
            if text.startswith(","):
                comma_led.append(token_id)
        self.string_body = set(string_body)  # tokens that may stand inside a JSON string
        self.digits = torch.tensor(digits, dtype=torch.long)
        self.leading_digits = torch.tensor(leading_digits, dtype=torch.long)  # no leading zero
        self.single = single
        self.comma_led = set(comma_led)  # choosing one of these continues an array
        for char in '{}[]",:.-':
            if char not in single or tokenizer.decode(self.encode(char)) != char:
                raise UnsupportedSchemaError(
                    f"This tokenizer cannot spell JSON (no token for {char!r}), so it cannot write tool calls "
                    "or structured output."
                )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


_CLASSES: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, TokenClasses] = weakref.WeakKeyDictionary()


def token_classes(tokenizer: PreTrainedTokenizerBase) -> TokenClasses:
    if tokenizer not in _CLASSES:
        _CLASSES[tokenizer] = TokenClasses(tokenizer)
    return _CLASSES[tokenizer]


# -- writing -----------------------------------------------------------------------------------


class _OutOfBudget(Exception):
    pass


class _Writable(Protocol):
    """What `JsonWriter` uses of a session."""

    loaded: LoadedModel
    tokens_written: int

    def append(self, ids: Sequence[int]) -> None: ...

    def next_logits(self) -> torch.Tensor: ...


class _ProposalCheck:
    """A session as `JsonWriter` sees it while its model checks a proposal: the proposal is
    read in one pass with the logits after each of its tokens kept, and while the writer's
    tokens follow it, its logits come from that pass. At the writer's first other token the
    session is cut back there and writing goes on one pass a token."""

    def __init__(self, session: ModelSession, proposal: Sequence[int]) -> None:
        self.session = session
        self.loaded = session.loaded
        self._base = len(session)
        self._proposal = list(proposal)
        session.append(self._proposal)
        self._logits = session.logits_from(self._base)  # len(proposal) + 1 rows
        self._followed = 0  # proposal tokens the writer has written, while it follows it
        self._following = True

    @property
    def tokens_written(self) -> int:
        return self.session.tokens_written

    @tokens_written.setter
    def tokens_written(self, value: int) -> None:
        self.session.tokens_written = value

    def append(self, ids: Sequence[int]) -> None:
        for token in ids:
            if self._following and self._followed < len(self._proposal) and token == self._proposal[self._followed]:
                self._followed += 1
            else:
                self.leave()
                self.session.append((token,))

    def next_logits(self) -> torch.Tensor:
        return self._logits[self._followed] if self._following else self.session.next_logits()

    def leave(self) -> None:
        """Stop following the proposal: drop the part of it the writer did not write."""
        if self._following:
            self._following = False
            self.session.truncate(self._base + self._followed)


class JsonWriter:
    """Writes one plan over a session, choosing masked tokens with the call's chooser."""

    def __init__(self, session: _Writable, chooser: TokenChooser, *, budget: int) -> None:
        self.session = session
        self.chooser = chooser
        self.budget = budget
        self.classes = token_classes(session.loaded.tokenizer)
        self.ids: list[int] = []
        self._fixed_total = 0
        self._fixed_written = 0

    def write(self, plan: Node) -> WrittenStep:
        self._fixed_total = self._fixed_cost(plan)
        try:
            self._node(plan)
            end = StepEnd.EOS
        except _OutOfBudget:
            end = StepEnd.LENGTH
        text = self.classes.tokenizer.decode(self.ids, skip_special_tokens=True)
        return WrittenStep(list(self.ids), text, end)

    # appending and choosing

    def _append(self, ids: Sequence[int]) -> None:
        for token in ids:
            if len(self.ids) >= self.budget:
                raise _OutOfBudget
            self.session.append((token,))
            self.session.tokens_written += 1
            self.ids.append(token)

    def _emit(self, text: str) -> None:
        """Append fixed text (structure, not a choice of the model)."""
        ids = self.classes.encode(text)
        self._fixed_written += len(ids)
        self._append(ids)

    def _fixed_cost(self, node: Node) -> int:
        """Tokens of the plan's fixed text, plus a token or two per value: what must stay free
        for the answer to close."""
        encode = self.classes.encode
        if isinstance(node, Literal):
            return len(encode(node.text))
        if isinstance(node, Choice):
            return max(len(encode(option)) for option in node.options)
        if isinstance(node, String | Number):
            return 2
        if isinstance(node, Array):
            return 2 + self._fixed_cost(node.item)
        if isinstance(node, Object):
            return 2 + sum(len(encode(f', "{key}": ')) + self._fixed_cost(sub) for key, sub in node.properties)
        if isinstance(node, Sequence_):
            return sum(self._fixed_cost(part) for part in node.parts)
        arguments = max(self._fixed_cost(sub) for _, sub in node.tools)
        names = max(len(encode(json.dumps(name))) for name, _ in node.tools)
        return len(encode('{"name": , "arguments": }')) + names + arguments

    def _choose(self, allowed: torch.Tensor | Sequence[int] | None) -> int:
        """The model's choice among `allowed` tokens, or any token for None (not appended)."""
        logits = self.session.next_logits()
        if allowed is None:
            return self.chooser.choose(logits)
        return self.chooser.choose_among(logits, allowed)

    def _share(self) -> int:
        """Tokens one open string may still take: a quarter of what is left once the rest
        of the structure is set aside, so that it can close within the budget."""
        reserve = max(0, self._fixed_total - self._fixed_written)
        return max(1, (self.budget - len(self.ids) - reserve) // 4)

    def _char(self, char: str) -> int:
        return self.classes.single[char]

    # nodes

    def _node(self, node: Node) -> None:
        if isinstance(node, Literal):
            self._emit(node.text)
        elif isinstance(node, Choice):
            self._choice(node.options)
        elif isinstance(node, String):
            self._string()
        elif isinstance(node, Number):
            self._number(node.integer)
        elif isinstance(node, Array):
            self._array(node.item)
        elif isinstance(node, Object):
            self._object(node.properties)
        elif isinstance(node, Sequence_):
            for part in node.parts:
                self._node(part)
        else:
            self._tool_call(node)

    def _choice(self, options: Sequence[str]) -> int:
        """Write one of `options`, token by token among those still possible; its index."""
        encoded = [self.classes.encode(option) for option in options]
        live = list(range(len(options)))
        written: list[int] = []
        while True:
            finished = [i for i in live if len(encoded[i]) == len(written)]
            if finished or len(live) == 1:
                chosen = finished[0] if finished else live[0]
                self._append(encoded[chosen][len(written) :])
                return chosen
            token = self._choose(sorted({encoded[i][len(written)] for i in live}))
            self._append((token,))
            written.append(token)
            live = [i for i in live if encoded[i][len(written) - 1] == token]

    def _string(self) -> None:
        """A quoted string: the model may choose any token; one that may stand inside a
        JSON string continues it, anything else (a quote, a newline, the end) closes it."""
        quote = self._char('"')
        body = self.classes.string_body
        self._append((quote,))
        for _ in range(min(MAX_STRING_TOKENS, self._share())):
            token = self._choose(None)
            if token not in body:
                break
            self._append((token,))
        self._append((quote,))

    def _number(self, integer: bool) -> None:
        """A sign, digits and maybe a fraction. After the first digit the model may choose any
        token: a digit (or the point) continues the number, anything else ends it, so it
        ends where the model would end it rather than where JSON punctuation happens to win."""
        classes = self.classes
        minus, point = self._char("-"), self._char(".")
        digits = set(classes.digits.tolist())
        text = ""
        while len(text) < min(MAX_NUMBER_DIGITS, self._share()):
            body = text.lstrip("-")
            if not body:
                token = self._choose(classes.leading_digits.tolist() + ([minus] if not text else []))
            elif body.endswith("."):
                token = self._choose(classes.digits)
            else:
                token = self._choose(None)
                can_continue = (token in digits and body != "0") or (token == point and not integer and "." not in body)
                if not can_continue:
                    return  # the text that follows the number is written by the caller
            self._append((token,))
            text += classes.tokenizer.decode([token])
        if text.endswith((".", "-")) or not text:
            self._emit("0")

    def _array(self, item: Node) -> None:
        self._emit("[")
        for count in range(MAX_ARRAY_ITEMS):
            if count:  # another item only if the model would write a comma here
                if self._share() < 4 or self._choose(None) not in self.classes.comma_led:
                    break
                self._emit(", ")
            self._node(item)
        self._emit("]")

    def _object(self, properties: Sequence[tuple[str, Node]]) -> None:
        self._emit("{")
        for position, (key, node) in enumerate(properties):
            self._emit((", " if position else "") + json.dumps(key) + ": ")
            self._node(node)
        self._emit("}")

    def _tool_call(self, node: ToolCall) -> None:
        names = [name for name, _ in node.tools]
        self._emit('{"name": ')
        chosen = self._choice([json.dumps(name) for name in names])
        self._emit(', "arguments": ')
        self._node(node.tools[chosen][1])
        self._emit("}")


def write_json(session: ModelSession, chooser: TokenChooser, plan: Node, *, budget: int) -> WrittenStep:
    """Write `plan` over `session` (ends `EOS` when complete, `LENGTH` when out of budget)."""
    return JsonWriter(session, chooser, budget=budget).write(plan)


def write_json_checking(
    session: ModelSession, chooser: TokenChooser, plan: Node, *, budget: int, proposal: Sequence[int]
) -> WrittenStep:
    """`write_json` (greedy) that checks `proposal`, another model's object under the same
    plan, first: the same object the model writes alone, for one pass over the part it agrees
    with instead of one pass per chosen token."""
    assert chooser.greedy, "a proposal is checked greedily"
    check = _ProposalCheck(session, proposal)
    written = JsonWriter(check, chooser, budget=budget).write(plan)
    check.leave()
    return written


@dataclass(frozen=True)
class Constraint:
    """An answer that must follow a JSON plan, and what kind of span that makes it.

    `after_reasoning`: the steps are written first, unconstrained and speculated as for a
    plain answer, and the constrained span comes after them with the steps in context, so
    that a chain-of-thought model can reason before it commits to the object.
    `opened_by`: the constrained span is written only where the model itself writes this
    opener (a tool call's tag, under `tool_choice="auto"`), right after it; an answer that
    ends without it is a plain answer.
    """

    plan: Node
    span: Span
    after_reasoning: bool = False
    opened_by: str = ""
