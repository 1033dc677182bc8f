"""Arithmetic word problems with reasoning steps of graded difficulty.

The demo pair is trained and evaluated on these. Each problem is a short story about a
quantity (below 200) changing; each reasoning step is one line separated from the next by a blank line,
and the answer ends with `Answer: N`. Step difficulty ranges from copying a number, through
small sums, to two-digit sums with carries and products (hard for the small draft).
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


@dataclass(frozen=True)
class Problem:
    """A question, its reasoning steps (each ending in a blank line but the last) and answer."""

    question: str
    steps: tuple[str, ...]
    answer: int

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


def make_problem(rng: random.Random) -> Problem:
    """One random problem with two or three operations."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(2, 60)
    sentences = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    n_operations = rng.randint(2, 3)
    while len(steps) - 1 < n_operations:
        made = rng.choice(_OPERATIONS)(rng, name, value)
        if made is None:
            continue
        sentence, step, value = made
        sentences.append(sentence)
        steps.append(step)
    sentences.append(f"How many {item} does {name} have now?")
    steps.append(f"Answer: {value}")
    with_separators = tuple(s + STEP_SEPARATOR for s in steps[:-1]) + (steps[-1],)
    return Problem(" ".join(sentences), with_separators, value)


def make_problems(count: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(count)]


_NUMBER = re.compile(r"-?\d+")


def corrupt_step(step: str, rng: random.Random) -> str:
    """The step with its last number changed to a wrong one.

    Half the time by a typical slip (off by one, two, a ten or a hundred, a wrong carry), half
    the time to any other number of a similar size, so that a verifier trained on these cannot
    get by with recognising a few kinds of slip.
    """
    matches = list(_NUMBER.finditer(step))
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


_EQUATION = re.compile(r"^\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)\.?\s*$")


def check_step(step: str) -> bool | None:
    """Ground truth for an arithmetic step `a op b = c.`; None for steps it cannot check."""
    match = _EQUATION.match(step)
    if match is None:
        return None
    a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
    return {"+": a + b, "-": a - b, "*": a * b}[op] == c
