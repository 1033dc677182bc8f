"""Arithmetic problems with reasoning steps of graded difficulty, and what lies outside them.

The demo pair is trained and evaluated on these. A problem is either a short story about a
quantity (below 200) changing one to four times, or a bare expression with `+ - *` and
parentheses, evaluated with the usual precedence. Each reasoning step is one line separated
from the next by a blank line, and the answer ends with `Answer: N`. Step difficulty ranges
from copying a number, through small sums, to two-digit sums with carries and products (hard
for the small draft). Anything else (a greeting, a world question, another language) gets
`OFF_DOMAIN_ANSWER`, one short step, so that the pair says what it can do instead of guessing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

STEP_SEPARATOR = "\n\n"
_NAMES = ("Tom", "Ann", "Sam", "Mia", "Leo", "Zoe", "Ben", "Eva", "Max", "Ivy")
_ITEMS = ("apples", "books", "coins", "cards", "stamps", "shells", "pens", "cups", "eggs", "nuts")
_LIMIT = 199  # every quantity stays below 200
_REST = ", so "  # between a step's operation and the rest of its expression
OFF_DOMAIN_ANSWER = "I only do arithmetic, like 3 + 5 * 3."


@dataclass(frozen=True)
class Problem:
    """A question, its reasoning steps (each ending in a blank line but the last) and answer."""

    question: str
    steps: tuple[str, ...]
    answer: int | None  # None: outside the domain, answered with OFF_DOMAIN_ANSWER

    @property
    def solution(self) -> str:
        return "".join(self.steps)

    def turns(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}]


Operation = tuple[str, str, int]  # the sentence, the reasoning step, the new quantity


def _add(rng: random.Random, name: str, value: int) -> Operation | None:
    if value >= _LIMIT:
        return None
    amount = rng.randint(1, min(49, _LIMIT - value))
    result = value + amount
    verb = rng.choice(("gets", "finds", "buys"))
    return f"{name} {verb} {amount} more.", f"{value} + {amount} = {result}.", result


def _subtract(rng: random.Random, name: str, value: int) -> Operation | None:
    if value < 3:
        return None
    amount = rng.randint(1, value - 1)
    verb = rng.choice(("gives away", "loses", "sells"))
    return f"{name} {verb} {amount}.", f"{value} - {amount} = {value - amount}.", value - amount


def _multiply(rng: random.Random, name: str, value: int) -> Operation | None:
    top = min(9, _LIMIT // max(value, 1))
    if top < 2:
        return None
    factor = rng.randint(2, top)
    word = {2: "twice", 3: "three times"}.get(factor, f"{factor} times")
    return f"Then {name} has {word} as many.", f"{value} * {factor} = {value * factor}.", value * factor


_OPERATIONS: tuple[Callable[[random.Random, str, int], Operation | None], ...] = (
    _add,
    _subtract,
    _multiply,
)


EXPRESSION_SHARE = 0.3
"""The share of bare expressions among the problems `make_problem` draws."""


def make_problem(rng: random.Random, expression_share: float = EXPRESSION_SHARE, *, with_rest: bool = False) -> Problem:
    """One random problem: a bare expression (`expression_share` of them) or a story."""
    return make_expression(rng, with_rest=with_rest) if rng.random() < expression_share else make_story(rng)


def make_story(rng: random.Random, n_operations: int | None = None) -> Problem:
    """A story about a quantity changing one to four times (`n_operations` to choose)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(2, 60)
    sentences = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    n_operations = n_operations or rng.randint(1, 4)
    while len(steps) - 1 < n_operations:
        made = rng.choice(_OPERATIONS)(rng, name, value)
        if made is None:
            continue
        sentence, step, value = made
        sentences.append(sentence)
        steps.append(step)
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), _with_answer(steps, value), value)


def _with_answer(steps: list[str], value: int) -> tuple[str, ...]:
    lines = [*steps, f"Answer: {value}"]
    return tuple(line + STEP_SEPARATOR for line in lines[:-1]) + (lines[-1],)


@dataclass(frozen=True)
class _Expression:
    """A node of an expression tree: a number, or an operation on two subtrees."""

    value: int
    text: str
    precedence: int  # 1 for + and -, 2 for *, 3 for a number or a parenthesised group
    steps: tuple[str, ...] = ()
    operation: tuple[_Expression, str, _Expression] | None = None  # None for a number


def _number(rng: random.Random) -> _Expression:
    value = rng.randint(1, 9) if rng.random() < 0.4 else rng.randint(10, 99)
    return _literal(value)


def _literal(value: int) -> _Expression:
    return _Expression(value, str(value), 3)


def _combine(left: _Expression, op: str, right: _Expression) -> _Expression | None:
    """`left op right`, parenthesised where precedence needs it; None outside the domain."""
    value = {"+": left.value + right.value, "-": left.value - right.value, "*": left.value * right.value}[op]
    if not 0 <= value <= _LIMIT or (op == "*" and min(left.value, right.value) > 9):
        return None
    precedence = 2 if op == "*" else 1
    left_text = left.text if left.precedence >= precedence else f"({left.text})"
    # an operand on the right of the same precedence is grouped: `a - (b + c)`, `a * (b * c)`
    right_text = right.text if right.precedence > precedence else f"({right.text})"
    step = f"{left.value} {op} {right.value} = {value}."
    return _Expression(value, f"{left_text} {op} {right_text}", precedence, (*left.steps, *right.steps, step), (left, op, right))


def _reduce_first(tree: _Expression) -> tuple[_Expression, str]:
    """The tree with its first operation due (left operand first) replaced by its value, and
    that operation as `a op b = c`."""
    assert tree.operation is not None
    left, op, right = tree.operation
    if left.operation is not None:
        reduced, done = _reduce_first(left)
        return _combine(reduced, op, right), done  # type: ignore[return-value]  # values are unchanged
    if right.operation is not None:
        reduced, done = _reduce_first(right)
        return _combine(left, op, reduced), done  # type: ignore[return-value]
    return _literal(tree.value), f"{left.value} {op} {right.value} = {tree.value}"


def _steps_with_rest(tree: _Expression) -> list[str]:
    """The tree's steps, each followed by the expression left to compute (`7 * 3 = 21, so
    21 * (15 - 6).`): the next operation due is then read from the step before, not from a
    tree kept in mind across steps."""
    steps = []
    while tree.operation is not None:
        tree, done = _reduce_first(tree)
        steps.append(f"{done}{_REST}{tree.text}." if tree.operation is not None else f"{done}.")
    return steps


def _expression(rng: random.Random, n_operations: int) -> _Expression | None:
    if n_operations == 0:
        return _number(rng)
    on_left = rng.randint(0, n_operations - 1)
    left, right = _expression(rng, on_left), _expression(rng, n_operations - 1 - on_left)
    if left is None or right is None:
        return None
    return _combine(left, rng.choice("+-*"), right)


_EXPRESSION_QUESTIONS = ("What is {}?", "{}", "{} = ?", "Compute {}.", "Calculate {}.", "What is {} ?")


def make_expression(rng: random.Random, n_operations: int | None = None, *, with_rest: bool = False) -> Problem:
    """A bare expression with one to three operations, solved one operation a step as
    precedence and parentheses group them (left operand first); every value stays in 0..199.
    `with_rest`: each step but the last also writes the expression left to compute."""
    n_operations = n_operations or rng.randint(1, 3)
    while (tree := _expression(rng, n_operations)) is None:
        pass
    question = rng.choice(_EXPRESSION_QUESTIONS).format(tree.text)
    steps = _steps_with_rest(tree) if with_rest else list(tree.steps)
    return Problem(question, _with_answer(steps, tree.value), tree.value)


_NEWCOMER_QUESTIONS = ("what is {}", "what is {}?", "What is {}", "what's {}?", "What's {}?", "whats {}",
                       "{}?", "{} =", "{}=?", "calculate {}", "compute {}", "solve {}")
_OPERATOR_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_NEWCOMER_VERBS = {"gets": ("wins", "collects", "receives"), "finds": ("wins", "collects"), "buys": ("collects", "receives"),
                   "gives away": ("uses", "eats", "drops", "spends"), "loses": ("uses", "drops"), "sells": ("eats", "spends")}


def _in_words(operator: str, rng: random.Random) -> str:
    """`plus` or `minus`; `times` or `x` for a product."""
    return rng.choice((_OPERATOR_WORDS[operator], "x")) if operator == "*" else _OPERATOR_WORDS[operator]


def make_reworded(rng: random.Random) -> Problem:
    """A problem of the domain as a newcomer types it rather than as the domain writes it: a
    bare expression in lower case, without spaces (`what is 2+2`, `(3+5)*3`) or with operators
    in words (`6 times 7`, `9 x 4`), or a story whose verbs the stories never use (`eats`,
    `wins`). The steps and the answer are the problem's own, written as usual."""
    if rng.random() < 0.25:
        story = make_story(rng)
        question = re.sub(rf"(?<= )({'|'.join(_NEWCOMER_VERBS)})(?= )",
                          lambda verb: rng.choice(_NEWCOMER_VERBS[verb[0]]), story.question)
        return Problem(question.replace(" now?", "?") if rng.random() < 0.5 else question, story.steps, story.answer)
    n_operations = rng.randint(1, 3)
    while (tree := _expression(rng, n_operations)) is None:
        pass
    spelling = rng.randrange(3)
    if spelling == 0:
        text = tree.text.replace(" ", "")
    elif spelling == 1:
        text = re.sub(r"[-+*]", lambda op: _in_words(op[0], rng), tree.text)
    else:
        text = tree.text
    return Problem(rng.choice(_NEWCOMER_QUESTIONS).format(text), _with_answer(list(tree.steps), tree.value), tree.value)


_GREETINGS = ("hello", "hi", "Hello!", "hey there", "good morning", "thanks", "Thank you!", "bye", "ok", "yes")
_FOREIGN = ("bonjour", "hola", "hallo", "ciao", "Wie geht es dir?", "Comment vas-tu ?", "Que tal?", "merci")
_TOPICS = ("the capital of France", "the weather today", "your name", "the meaning of life", "a cat",
           "the tallest mountain", "love", "Python", "the moon", "time")
_WORDS = ("tell", "me", "about", "please", "write", "a", "poem", "story", "why", "how", "do", "you", "know",
          "who", "are", "the", "best", "explain", "code", "help", "can", "I", "say", "something")


def make_off_domain(rng: random.Random) -> Problem:
    """A message outside the arithmetic domain, answered with `OFF_DOMAIN_ANSWER`."""
    kind = rng.randrange(6)
    if kind == 0:
        question = rng.choice(_GREETINGS)
    elif kind == 1:
        question = rng.choice(_FOREIGN)
    elif kind == 2:
        question = rng.choice(("What is {}?", "Who is {}?", "Tell me about {}.", "Where is {}?")).format(rng.choice(_TOPICS))
    elif kind == 3:
        question = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 8))) + rng.choice(("", "?", "."))
    elif kind == 4:
        question = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ?!.,") for _ in range(rng.randint(1, 20)))
    else:
        question = rng.choice(("?", ".", "!", "...", "help", "test", "what?", "huh"))
    return Problem(question.strip() or "?", (OFF_DOMAIN_ANSWER,), None)


def make_problems(count: int, seed: int, expression_share: float = EXPRESSION_SHARE, *, with_rest: bool = False) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(rng, expression_share, with_rest=with_rest) for _ in range(count)]


def make_stories(count: int, seed: int) -> list[Problem]:
    """Stories only: what the pair learned to solve with the calculator tool."""
    rng = random.Random(seed)
    return [make_story(rng) for _ in range(count)]


_NUMBER = re.compile(r"-?\d+")


def corrupt_step(step: str, rng: random.Random) -> str:
    """The step with its last number changed to a wrong one (its result, in a step that goes
    on with the rest of an expression).

    Half the time by a typical slip (off by one, two, a ten or a hundred, a wrong carry), half
    the time to any other number of a similar size, so that a verifier trained on these cannot
    get by with recognising a few kinds of slip.
    """
    rest = step.find(_REST)
    matches = list(_NUMBER.finditer(step, 0, rest if rest >= 0 else len(step)))
    last = matches[-1]
    value = int(last.group())
    if rng.random() < 0.5:
        delta = rng.choice((1, 2, 9, 10, 11, 20, 100)) * rng.choice((1, -1))
        wrong = value + delta if value + delta >= 0 else value + abs(delta)
    else:
        wrong = rng.choice([n for n in range(max(0, value // 2 - 10), value * 2 + 11) if n != value])
    return step[: last.start()] + str(wrong) + step[last.end() :]


_ANSWER_LINE = re.compile(r"(?:Answer:|####)\s*\$?\s*(-?[\d,]*\.?\d+)")


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: the number after the last `Answer:` or `####`.

    Commas and a trailing `.0` are dropped so that "1,200" and "1200.0" both read "1200".
    """
    found = _ANSWER_LINE.findall(text)
    if not found:
        return None
    number = found[-1].replace(",", "")
    if "." in number:
        whole, _, fraction = number.partition(".")
        number = whole if set(fraction) <= {"0"} else number
    return number


_EQUATION = re.compile(r"^\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)(?:" + re.escape(_REST) + r"[^\n]*)?\.?\s*$")


def check_step(step: str) -> bool | None:
    """Ground truth for an arithmetic step `a op b = c.`; None for steps it cannot check."""
    match = _EQUATION.match(step)
    if match is None:
        return None
    a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
    return {"+": a + b, "-": a - b, "*": a * b}[op] == c
