"""Train the bundled demo pair (draft and target) from a seed, on the CPU or a GPU.

    python scripts/train_demo_pair.py --out OUT --seed 0 [--solve-steps D,T --grow-target 20 ...]

docs/model-card.md has the two commands that train the shipped pair from scratch in about an
hour, and what each gives. Both models learn to solve the problems of
`langchain_confspec.demo.problems` step by step (stories and bare
expressions), to answer anything else with its one-line refusal, to solve stories with the
calculator tool, and to answer the engine's verification prompt about a step (right steps and
corrupted ones). From scratch, `--solve-steps` first trains on solutions alone: arithmetic is
what a model from scratch learns slowest, and it learns it several times faster alone than
inside the whole mix. Phase one mixes everything; in phase two the draft writes steps itself
and both models learn to judge those too: the draft's own mistakes are what the gate must
catch at run time. Training sequences are token-for-token what the engine builds: the chat
template, each step encoded on its own, and the verification suffix after a step.

The target is deep and the draft shallow: on a CPU the cost of a token of a model this small
grows with its layer count, and the target must cost several times the draft per token for
speculation to pay, as a 7B target does against a 0.5B draft on a GPU. A deep target of the
same width costs several times more a training step, so the target starts with 4 layers and
`--grow-target 20` deepens it (each new layer starting as the identity): from scratch after
phase one, with `--resume PAIR` before training on. `--target-shape 20x64` starts it deep and
narrow instead, every layer trained from the first step (on solutions alone it learned about
as much a step as the 4-layer one, each step costing more: docs/model-card.md).
`--pack` lays each batch's examples end to end instead of padding each to the longest: the
same training in about two thirds of the time.

`--resume PAIR --tool-judging STORIES` trains a pair on for one phase of verdicts inside
calculator conversations, where the agent's mistakes are: every step and call of STORIES
stories judged right or plausibly wrong (another sentence's operation, another operator, a
wrong number), and what the draft itself writes there judged by whether it is right.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import AutoModelForCausalLM, AutoTokenizer

from langchain_confspec.config import DEFAULT_BINARY_PROMPT
from langchain_confspec.demo.problems import (
    EXPRESSION_SHARE,
    OFF_DOMAIN_ANSWER,
    STEP_SEPARATOR,
    Problem,
    corrupt_step,
    extract_answer,
    make_off_domain,
    make_problems,
    make_reworded,
    make_story,
)
from langchain_confspec.demo.tools import calculator, evaluate
from langchain_confspec.models.prompting import format_tool_call, render_prompt
from langchain_confspec.models.tiny import (
    TOOLS_CHAT_TEMPLATE,
    build_model,
    grow_depth,
    train_tokenizer,
)

SHAPES = {
    "draft": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "ffn_multiple": 3},
    "target": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "ffn_multiple": 3},  # grown by --grow-target
}
LEARNING_RATES = {"draft": 3e-3, "target": 1.5e-3}
NUMBER_KEYS = ("value", "answer", "result", "total", "count", "number")
TEXT_KEYS = ("item", "unit", "label", "things")
TUNING_SEED = 20000  # the tuning problems of scripts/from_scratch_probe.py and docs/model-card.md
CONTEXT = 2048  # room for a tool-calling agent's prompt with a structured-output tool
CALCULATOR_SCHEMA = convert_to_openai_tool(calculator)
# Tools shown beside an off-domain message (`--off-domain-tools`), so that a bound tool does not
# unlearn the refusal; `multiply`, which benchmarks/domain_accuracy.py binds, is left out.
REFUSAL_TOOLS = [CALCULATOR_SCHEMA] + [
    convert_to_openai_tool({"title": name, "description": description, "type": "object",
                            "properties": {arg: {"type": kind} for arg, kind in parameters.items()},
                            "required": list(parameters)})
    for name, description, parameters in (
        ("get_weather", "The weather in a city today.", {"city": "string"}),
        ("search", "Search the web.", {"query": "string"}),
        ("add", "Add two integers.", {"a": "integer", "b": "integer"}),
        ("send_message", "Send a text message.", {"to": "string", "text": "string"}),
        ("convert_units", "Convert an amount to another unit.", {"amount": "number", "unit": "string"}),
    )
]
# Whole-word tokens for the words of tool definitions and calls, which the arithmetic corpus
# never had: without them a tool prompt is spelled letter by letter (twice as long).
TOOL_WORDS = [
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "calculator", "expression",
    "arguments", "description", "parameters", "properties", "required", "object", "string", "name",
    "type", "tools", "tool", "call", "write", "JSON", "difference", "product",
]


@dataclass(frozen=True)
class Example:
    ids: list[int]
    learn_from: int  # loss on ids[learn_from:]


@dataclass(frozen=True)
class ToolTurn:
    """One assistant turn of a problem solved with the calculator: the conversation so far
    (rendered with the tool), the step, and what follows it (the call, or the answer)."""

    problem: Problem
    index: int
    prompt: list[int]
    step: str
    expression: str  # the call's argument; "" on the last turn
    after: str


def wrong_call(problem: Problem, index: int, rng: random.Random) -> str:
    """A call the draft could plausibly make instead of the right one at turn `index`: the
    current value with another sentence's operation (the one before, most often: a sentence
    read twice), the right amount with another operator, or a wrong number."""
    operations = [step.split(" = ")[0].split(" ", 1)[1] for step in problem.steps[1:-1]]  # "+ 12"
    value = problem.steps[index].split(" = ")[-1].rstrip(".\n") if index else problem.steps[0].split()[-2]
    right = f"{value} {operations[index]}"
    others = [f"{value} {op}" for k, op in enumerate(operations) if k != index and f"{value} {op}" != right]
    operator, amount = operations[index].split(" ")
    others += [f"{value} {other} {amount}" for other in "+-*" if other != operator]
    if index:
        others.append(f"{value} {operations[index - 1]}")  # the last operation again
    wrong = rng.choice([o for o in others if o != right] or [corrupt_step(right, rng)])
    return wrong if rng.random() < 0.75 else corrupt_step(right, rng)


_OPERATION = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)\.")


def plausible_wrong_step(problem: Problem, index: int, rng: random.Random) -> str | None:
    """A wrong step whose arithmetic is right, the mistakes a corrupted result never shows: the
    answer given before the last operation is done, or an operation on a number read wrong from
    the question (another of its numbers, or the other operand twice). None where step `index`
    is not an operation."""
    match = _OPERATION.match(problem.steps[index])
    if match is None:
        return None
    left, operator, right = int(match[1]), match[2], int(match[3])
    if rng.random() < 0.5:
        return f"Answer: {left}"
    misread = {int(n) for n in re.findall(r"\d+", problem.question)} | {left, right}
    if rng.random() < 0.5:
        left = rng.choice(sorted(misread - {left}) or [right])
    else:
        right = rng.choice(sorted(misread - {right}) or [left])
    value = {"+": left + right, "-": left - right, "*": left * right}[operator]
    wrong = f"{left} {operator} {right} = {value}.{STEP_SEPARATOR}"
    return wrong if wrong != problem.steps[index] else f"Answer: {left}"


@dataclass(frozen=True)
class Attempt:
    """A step the draft wrote itself after the right steps before it, and whether it is right."""

    problem: Problem
    index: int
    text: str
    correct: bool


def tokenizer_corpus(problems: list[Problem]) -> list[str]:
    texts = []
    for problem in problems:
        texts.append(problem.question)
        texts.extend(problem.steps)
    texts += [DEFAULT_BINARY_PROMPT + " Yes", DEFAULT_BINARY_PROMPT + " No", "system user assistant"]
    return texts + [OFF_DOMAIN_ANSWER] * (len(problems) // 20)


class ExampleMaker:
    """Builds training sequences exactly as the engine builds its contexts: chat template, each
    step encoded on its own, the verification suffix after the judged step."""

    def __init__(self, tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.suffix = self.encode(DEFAULT_BINARY_PROMPT)
        self.yes, self.no = self.encode(" Yes")[0], self.encode(" No")[0]
        self._encoded: dict[Problem, tuple[list[int], list[list[int]]]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encoded(self, problem: Problem) -> tuple[list[int], list[list[int]]]:
        """The problem's prompt and steps as ids, rendered once (the chat template is slow)."""
        if problem not in self._encoded:
            self._encoded[problem] = (render_prompt(self.tokenizer, problem.turns()), [self.encode(s) for s in problem.steps])
        return self._encoded[problem]

    def before(self, problem: Problem, index: int) -> list[int]:
        prompt, steps = self.encoded(problem)
        return prompt + [i for step in steps[:index] for i in step]

    def solving(self, problem: Problem) -> Example:
        ids = self.before(problem, len(problem.steps)) + [self.tokenizer.eos_token_id]
        return Example(ids, len(self.encoded(problem)[0]))

    def verdict(self, problem: Problem, index: int, step: str, correct: bool) -> Example:
        return self.judged(self.before(problem, index), step, correct)

    def tool_turns(self, problem: Problem) -> list[ToolTurn]:
        """The problem solved with the calculator, turn by turn: each operation is a tool call,
        each result copied into the next step, the last turn the answer."""
        turns: list[dict[str, Any]] = list(problem.turns())
        solved = []
        n_operations = len(problem.steps) - 2
        for k in range(n_operations + 1):
            prompt = render_prompt(self.tokenizer, turns, [CALCULATOR_SCHEMA])
            if k == n_operations:
                solved.append(ToolTurn(problem, k, prompt, problem.steps[k], "", problem.steps[-1]))
                break
            expression = problem.steps[k + 1].split(" = ")[0]
            call = {"id": f"call_{k}", "name": "calculator", "args": {"expression": expression}}
            solved.append(ToolTurn(problem, k, prompt, problem.steps[k], expression, format_tool_call("calculator", call["args"])))
            turns.append({"role": "assistant", "content": problem.steps[k], "tool_calls": [call]})
            turns.append({"role": "tool", "content": str(evaluate(expression)), "tool_call_id": call["id"]})
        return solved

    def tool_use(self, problem: Problem, rng: random.Random) -> list[Example]:
        """One example per assistant turn of the problem solved with the calculator, plus a
        verdict on a call (right, or with a wrong number)."""
        examples = []
        solved = self.tool_turns(problem)
        verdict_turn = rng.randrange(len(solved) - 1)
        for turn in solved:
            examples.append(self.tool_turn(turn))
            if turn.index == verdict_turn:
                correct = rng.random() < 0.5
                shown = turn.after if correct else format_tool_call("calculator", {"expression": corrupt_step(turn.expression, rng)})
                examples.append(self.judged(turn.prompt + self.encode(turn.step), shown, correct))
        return examples

    def tool_turn(self, turn: ToolTurn) -> Example:
        """One assistant turn of a calculator conversation, learned after its prompt."""
        ids = turn.prompt + self.encode(turn.step) + self.encode(turn.after) + [self.tokenizer.eos_token_id]
        return Example(ids, len(turn.prompt))

    def judged(self, context: list[int], step: str, correct: bool) -> Example:
        """The verification question about `step` after `context`, answered."""
        ids = context + self.encode(step) + self.suffix + [self.yes if correct else self.no]
        return Example(ids, len(ids) - 1)

    def tool_checks(self, problem: Problem, rng: random.Random) -> list[Example]:
        """Verdicts inside a calculator conversation, on every turn: its step right or with a
        wrong number, its call right or plausibly wrong (`wrong_call`). Run-time checks judge
        these in this very context; the first training only judged one call per conversation,
        and only with a wrong number."""
        examples = []
        for turn in self.tool_turns(problem):
            examples.append(self.judged(turn.prompt, turn.step, True))
            examples.append(self.judged(turn.prompt, corrupt_step(turn.step, rng), False))
            after = turn.prompt + self.encode(turn.step)
            if turn.expression:
                examples.append(self.judged(after, turn.after, True))
                wrong = wrong_call(problem, turn.index, rng)
                examples.append(self.judged(after, format_tool_call("calculator", {"expression": wrong}), False))
            else:  # the answer after the last result
                examples.append(self.judged(after, turn.after, True))
                examples.append(self.judged(after, corrupt_step(turn.after, rng), False))
        return examples

    def structured(self, problem: Problem, rng: random.Random) -> Example:
        """The solution, then the answer as a JSON object (as `with_structured_output` asks for
        it after the steps): a number field, and for a story sometimes a text field."""
        assert problem.answer is not None
        fields: dict[str, Any] = {rng.choice(NUMBER_KEYS): problem.answer}
        item = problem.steps[0].split(" starts with ")[-1].split(" ")[-1].rstrip(".\n")
        if " starts with " in problem.steps[0] and rng.random() < 0.5:
            key = rng.choice(TEXT_KEYS)
            fields = {key: item, **fields} if rng.random() < 0.3 else {**fields, key: item}
        before = self.before(problem, len(problem.steps)) + self.encode(STEP_SEPARATOR)
        return Example(before + self.encode(json.dumps(fields)) + [self.tokenizer.eos_token_id], len(before))

    def off_domain(self, problem: Problem, rng: random.Random, elsewhere: Problem) -> list[Example]:
        """The refusal written and judged right, and a step of another problem judged wrong."""
        step = rng.choice(elsewhere.steps)
        return [self.solving(problem), self.verdict(problem, 0, OFF_DOMAIN_ANSWER, True), self.verdict(problem, 0, step, False)]

    def refusal_with_tool(self, problem: Problem, tool: dict[str, Any]) -> list[Example]:
        """The refusal written, and judged right, with a tool bound: without these a bound
        tool's prompt led the target into verdict words instead of the refusal."""
        prompt = render_prompt(self.tokenizer, problem.turns(), [tool])
        answer = self.encode(OFF_DOMAIN_ANSWER)
        return [Example(prompt + answer + [self.tokenizer.eos_token_id], len(prompt)), self.judged(prompt, OFF_DOMAIN_ANSWER, True)]

    def checks(self, problem: Problem, rng: random.Random, n_verify: int, plausible_share: float = 0.0) -> list[Example]:
        """`n_verify` verdicts on steps of `problem`, half of them on a wrong step: a corrupted
        result, or (`plausible_share` of them) a `plausible_wrong_step`."""
        examples = []
        for _ in range(n_verify):
            k = rng.randrange(len(problem.steps))
            correct = rng.random() < 0.5
            step = problem.steps[k]
            if not correct:
                plausible = plausible_wrong_step(problem, k, rng) if plausible_share and rng.random() < plausible_share else None
                step = plausible or corrupt_step(step, rng)
            examples.append(self.verdict(problem, k, step, correct))
        return examples


@torch.no_grad()
def continuations(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, batch_size: int = 256) -> list[str]:  # type: ignore[no-untyped-def]
    """What `model` writes greedily after each context (left-padded batches), as text."""
    texts = []
    model.eval()
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, context in enumerate(chunk):
            ids[row, width - len(context) :] = torch.tensor(context)
            mask[row, width - len(context) :] = 1
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        texts += [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, width:]]
    return texts


def count_right(model, tokenizer, problems: list[Problem]) -> int:  # type: ignore[no-untyped-def]
    """How many of `problems` the model's greedy solution answers right: the target's accuracy
    is the goal training is slowest to reach, so every phase can be scored on it."""
    contexts = [render_prompt(tokenizer, problem.turns()) for problem in problems]
    texts = continuations(model, tokenizer, contexts, max_new_tokens=110, batch_size=100)
    return sum(extract_answer(text) == str(problem.answer) for text, problem in zip(texts, problems))


def first_step(text: str) -> str:
    cut = text.find(STEP_SEPARATOR)
    return text[: cut + len(STEP_SEPARATOR)] if cut >= 0 else text


def draft_attempts(model, maker: ExampleMaker, problems: list[Problem], max_new_tokens: int = 24) -> list[Attempt]:  # type: ignore[no-untyped-def]
    """Let `model` write every step of `problems` after the right steps before it (greedy)."""
    cases = [(p, k) for p in problems for k in range(len(p.steps))]
    written = continuations(model, maker.tokenizer, [maker.before(p, k) for p, k in cases], max_new_tokens=max_new_tokens)
    return [Attempt(p, k, first_step(text), first_step(text) == p.steps[k]) for (p, k), text in zip(cases, written)]


def draft_tool_judging(model, maker: ExampleMaker, problems: list[Problem]) -> tuple[list[Example], int, int]:  # type: ignore[no-untyped-def]
    """Verdicts on what `model` writes itself inside calculator conversations after the right
    turns before it: each step, and each call (or the answer) after the right step. Returns the
    examples, how many attempts there were and how many were wrong."""
    turns = [turn for problem in problems for turn in maker.tool_turns(problem)]
    steps = continuations(model, maker.tokenizer, [t.prompt for t in turns], max_new_tokens=24)
    afters = [t.prompt + maker.encode(t.step) for t in turns]
    calls = continuations(model, maker.tokenizer, afters, max_new_tokens=40)
    examples, wrong = [], 0
    for turn, step, call, after in zip(turns, steps, calls, afters):
        step = first_step(step)
        call = call.strip() if turn.expression else call
        for context, text, right in ((turn.prompt, step, turn.step), (after, call, turn.after)):
            wrong += text != right
            examples.append(maker.judged(context, text, text == right))
    return examples, 2 * len(turns), wrong


SHORT_TOKENS = 160  # the longest example of the short bucket


def length_buckets(examples: list[Example], bucket_width: int) -> list[list[Example]]:
    """The examples grouped by length: with `bucket_width` 0 (the pair's training) short (up to
    160 tokens) and long; else in spans of `bucket_width` tokens, which pad less but learn less a
    step (`scripts/from_scratch_probe.py --bucket-width`, docs/model-card.md)."""
    if not bucket_width:
        short = [e for e in examples if len(e.ids) <= SHORT_TOKENS]
        long = [e for e in examples if len(e.ids) > SHORT_TOKENS]
        return [b for b in (short, long) if b]
    spans: dict[int, list[Example]] = {}
    for example in examples:
        spans.setdefault((len(example.ids) - 1) // bucket_width, []).append(example)
    return [spans[key] for key in sorted(spans)]


@dataclass(frozen=True)
class Batch:
    """One training step's token ids and labels (-100: not learned). A packed batch also gives
    each token's position within its example and which example it belongs to (-1: padding)."""

    ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor | None = None
    example_of: torch.Tensor | None = None


def padded(chosen: list[Example], pad_id: int) -> Batch:
    """One example a row, each padded to the longest."""
    width = max(len(e.ids) for e in chosen)
    ids = torch.full((len(chosen), width), pad_id)
    labels = torch.full((len(chosen), width), -100)
    for row, example in enumerate(chosen):
        ids[row, : len(example.ids)] = torch.tensor(example.ids)
        labels[row, example.learn_from : len(example.ids)] = torch.tensor(example.ids[example.learn_from :])
    return Batch(ids, labels)


def packed(chosen: list[Example], pad_id: int) -> Batch:
    """The examples laid end to end in as few rows as the longest allows (longest first, each
    into the first row with room), positions restarting at 0 for each: the model keeps attention
    within an example by those positions, so each example's logits are those of its own padded
    row, and only the end of each row is padding."""
    width = max(len(e.ids) for e in chosen)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(chosen)), key=lambda i: -len(chosen[i].ids)):
        size = len(chosen[index].ids)
        row = next((r for r, free in enumerate(room) if size <= free), len(rows))
        if row == len(rows):
            rows.append([])
            room.append(width)
        rows[row].append(index)
        room[row] -= size
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full_like(ids, -100)
    positions = torch.zeros_like(ids)
    example_of = torch.full_like(ids, -1)
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            example = chosen[index]
            end = start + len(example.ids)
            ids[row, start:end] = torch.tensor(example.ids)
            learned = start + max(example.learn_from, 1)  # an example's first token follows another's last
            labels[row, learned:end] = ids[row, learned:end]
            positions[row, start:end] = torch.arange(len(example.ids))
            example_of[row, start:end] = index
            start = end
        positions[row, start:] = torch.arange(width - start)  # the padding, a sequence of its own
    return Batch(ids, labels, positions, example_of)


def batches(examples: list[Example], batch_size: int, pad_id: int, rng: random.Random, bucket_width: int = 0,  # type: ignore[no-untyped-def]
            pack: bool = False):
    """Random batches from one length bucket at a time (`length_buckets`, drawn in proportion
    to their sizes), so that a few long tool conversations do not pad every batch to their length;
    with `pack`, the same examples `packed`."""
    buckets = length_buckets(examples, bucket_width)
    weights = [len(b) for b in buckets]
    lay_out = packed if pack else padded
    while True:
        bucket = rng.choices(buckets, weights)[0]
        yield lay_out(rng.sample(bucket, min(batch_size, len(bucket))), pad_id)


def example_mean_loss(logits: torch.Tensor, labels: torch.Tensor, example_of: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged per example, then over the batch: a one-token verdict weighs as
    much as a whole solution (averaged over tokens, verdicts would be a few percent of the loss
    and the models would barely learn to verify). `example_of` says which example each label
    belongs to in a packed batch; without it, each row is one example."""
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
    ).view(labels.shape)
    counted = (labels != -100).float()
    if example_of is None:
        return ((per_token * counted).sum(1) / counted.sum(1).clamp(min=1)).mean()
    owner = example_of.clamp(min=0).reshape(-1)  # padding counts nothing, wherever it is added
    examples = int(example_of.max()) + 1
    sums = per_token.new_zeros(examples).index_add(0, owner, (per_token * counted).reshape(-1))
    counts = per_token.new_zeros(examples).index_add(0, owner, counted.reshape(-1))
    return (sums / counts.clamp(min=1)).mean()


def batch_loss(model, batch: Batch, device: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The model's `example_mean_loss` on one batch (packed: by each token's position, no cache,
    so that attention stays within each example)."""
    ids, labels = batch.ids.to(device), batch.labels.to(device)
    if batch.positions is None:
        return example_mean_loss(model(input_ids=ids).logits[:, :-1], labels[:, 1:])
    logits = model(input_ids=ids, position_ids=batch.positions.to(device), use_cache=False).logits
    return example_mean_loss(logits[:, :-1], labels[:, 1:], batch.example_of[:, 1:].to(device))


def train(model, examples, *, steps: int, batch_size: int, lr: float, seed: int, device: str, log_every: int = 100,  # type: ignore[no-untyped-def]
          after_step: Callable[[int], None] | None = None, bucket_width: int = 0, pack: bool = False):
    """AdamW under one warmup-then-cosine schedule. `after_step(n)`, if given, runs after step n
    (from 1): a probe that measures the model mid-schedule must put it back in training mode.
    `pack` lays each batch out `packed`: the same examples and loss for less computation."""
    if not steps:
        return model
    rng = random.Random(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    started = time.time()
    stream = batches(examples, batch_size, model.config.pad_token_id, rng, bucket_width, pack)
    for step in range(steps):
        loss = batch_loss(model, next(stream), device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if after_step:
            after_step(step + 1)
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - started:7.1f}s", flush=True)
    return model.to("cpu").eval()


@dataclass(frozen=True)
class Phase:
    """One pass of training both models on one mix of examples."""

    name: str
    draft_steps: int
    target_steps: int
    lr_scale: float


def solving_examples(maker: ExampleMaker, problems: list[Problem], args: argparse.Namespace) -> list[Example]:
    """Only solutions, of the problems and of as many reworded ones as phase one asks: arithmetic
    is what a model from scratch learns slowest, and it learns it several times faster alone than
    inside the whole mix (docs/model-card.md)."""
    reworded_rng = random.Random(args.seed + 6000)
    return [maker.solving(p) for p in problems] + [maker.solving(make_reworded(reworded_rng)) for _ in range(args.reworded)]


def solving_tool_turns(maker: ExampleMaker, args: argparse.Namespace) -> list[Example]:
    """`--solve-tool-use N`: the turns of N stories solved with the calculator (no verdicts)
    that fit the short bucket, for the solve phase: copying a result into the next step and
    call is solving too, the agent is what the phases after it taught worst, and its misreadings
    start at the second call, whose turn is short; long turns would make the phase's batches
    several times dearer."""
    stories = random.Random(args.seed + 7000)
    turns = [maker.tool_turn(t) for _ in range(args.solve_tool_use) for t in maker.tool_turns(make_story(stories))]
    return [e for e in turns if len(e.ids) <= SHORT_TOKENS]


def both(examples: list[Example]) -> dict[str, list[Example]]:
    """The same examples for each model (`train_phase` takes them by role)."""
    return {"draft": examples, "target": examples}


def phase_one_examples(maker: ExampleMaker, problems: list[Problem], args: argparse.Namespace, rng: random.Random) -> list[Example]:
    """Solving (twice), verdicts on right and corrupted steps, the answer as JSON after the
    steps, the refusal, the tool loop, problems asked as newcomers type them (twice)."""
    examples = [e for p in problems for e in maker.checks(p, rng, args.n_verify, args.plausible_wrong)]
    examples += [maker.solving(p) for p in problems] * 2
    examples += [maker.structured(p, rng) for p in problems[: args.structured]]
    off_rng = random.Random(args.seed + 3000)
    examples += [e for _ in range(args.off_domain) for e in maker.off_domain(make_off_domain(off_rng), rng, rng.choice(problems))]
    tools_rng = random.Random(args.seed + 5000)
    examples += [e for _ in range(args.off_domain_tools)
                 for e in maker.refusal_with_tool(make_off_domain(tools_rng), tools_rng.choice(REFUSAL_TOOLS))]
    story_rng = random.Random(args.seed + 2000)
    examples += [e for _ in range(args.tool_use) for e in maker.tool_use(make_story(story_rng), rng)]
    reworded_rng = random.Random(args.seed + 6000)
    examples += [maker.solving(make_reworded(reworded_rng)) for _ in range(args.reworded)] * 2
    return examples


def train_phase(phase: Phase, examples: dict[str, list[Example]], maker: ExampleMaker, args: argparse.Namespace, models: dict,  # type: ignore[type-arg]
                log: dict) -> None:  # type: ignore[type-arg]
    """Train each model on its `examples`; with `--tuning-problems N`, then count its right
    answers on N tuning problems (seed `TUNING_SEED`), logged apart from the training time."""
    print(f"phase {phase.name}: " + ", ".join(f"{len(examples[role])} examples for the {role}" for role in models), flush=True)
    tuning = make_problems(args.tuning_problems, seed=TUNING_SEED) if args.tuning_problems else []
    for role, model in models.items():
        steps = phase.draft_steps if role == "draft" else phase.target_steps
        lr = LEARNING_RATES[role] * phase.lr_scale
        started = time.time()
        train(model, examples[role], steps=steps, batch_size=args.batch_size, lr=lr, seed=args.seed, device=args.device, pack=args.pack)
        entry = {"phase": phase.name, "examples": len(examples[role]), "steps": steps, "lr": lr,
                 "layers": model.config.num_hidden_layers, "seconds": round(time.time() - started, 1)}
        if tuning:
            scoring = time.time()
            entry["tuning_right"] = f"{count_right(model, maker.tokenizer, tuning)} of {len(tuning)}"
            entry["scoring_seconds"] = round(time.time() - scoring, 1)
            print(f"{role} after phase {phase.name}: {entry['tuning_right']} tuning problems right", flush=True)
        log[role].append(entry)


def two_phases(maker: ExampleMaker, first: list[Example], args: argparse.Namespace, rng: random.Random, models: dict,  # type: ignore[type-arg]
               draft_steps: list[int], target_steps: list[int], log: dict, grow_to: int | None = None) -> tuple[int, int]:  # type: ignore[type-arg]
    """Solve, judge, refuse and call tools; then (the target grown to `grow_to` layers, if
    given) judge the draft's own steps. Returns how many of the draft's attempts were wrong, of
    how many."""
    train_phase(Phase("solve, judge, refuse, call tools", draft_steps[0], target_steps[0], args.lr_scale), both(first), maker, args, models, log)
    if grow_to:
        grow_depth(models["target"], grow_to)
    with_rest = args.expression_steps == "rest"
    own = make_problems(args.draft_attempts, seed=args.seed + 1000, expression_share=args.expression_share, with_rest=with_rest)
    attempts = draft_attempts(models["draft"], maker, own, max_new_tokens=48 if with_rest else 24)  # a step with its rest is longer
    wrong = sum(not a.correct for a in attempts)
    print(f"draft attempts: {len(attempts)} steps, {wrong} wrong", flush=True)
    judged = [maker.verdict(a.problem, a.index, a.text, a.correct) for a in attempts]
    second = judged * 2 + rng.sample(first, min(len(first), 4 * len(judged)))
    train_phase(Phase("judge the draft's own steps", draft_steps[1], target_steps[1], 0.4 * args.lr_scale), both(second), maker, args, models, log)
    return wrong, len(attempts)


def tool_judging_phase(maker: ExampleMaker, first: list[Example], args: argparse.Namespace, rng: random.Random, models: dict,  # type: ignore[type-arg]
                       draft_steps: int, target_steps: int, log: dict) -> tuple[int, int]:  # type: ignore[type-arg]
    """Verdicts inside calculator conversations, where the agent's mistakes are: the draft
    picks another sentence's operation for its call, or writes an answer that ignores the last
    result, and both models had only learned to judge calls with a wrong number."""
    stories = random.Random(args.seed + 4000)
    checks = [e for _ in range(args.tool_judging) for e in maker.tool_checks(make_story(stories), rng)]
    own, attempts, wrong = draft_tool_judging(models["draft"], maker, [make_story(stories) for _ in range(args.tool_judging // 2)])
    print(f"draft attempts in calculator conversations: {attempts}, {wrong} wrong", flush=True)
    examples = checks + own * args.own_repeats
    examples += rng.sample(first, min(len(first), len(examples)))
    train_phase(Phase("judge inside calculator conversations", draft_steps, target_steps, args.lr_scale), both(examples), maker, args, models, log)
    return wrong, attempts


def target_shape(text: str) -> dict[str, int]:
    """`--target-shape LAYERSxHIDDEN`: the from-scratch target's depth and width (4 heads, FFN 3x)."""
    match = re.fullmatch(r"([1-9]\d*)x([1-9]\d*)", text)
    if not match or int(match[2]) % 8:
        raise ValueError(f"--target-shape expects LAYERSxHIDDEN, HIDDEN a multiple of 8 (4 heads of even size), got {text!r}")
    return {**SHAPES["target"], "num_layers": int(match[1]), "hidden_size": int(match[2])}


def shape_of(model) -> dict[str, int]:  # type: ignore[no-untyped-def]
    config = model.config
    return {"hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers,
            "num_heads": config.num_attention_heads, "ffn_multiple": config.intermediate_size // config.hidden_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("langchain_confspec/demo/pair"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=40000, help="problems of the solve phase and phase one (from scratch also the tokenizer's corpus)")
    parser.add_argument(
        "--expression-share", type=float, default=EXPRESSION_SHARE,
        help="share of bare expressions among the problems (the held-out set has 0.3)",
    )
    parser.add_argument(
        "--expression-steps", choices=("plain", "rest"), default="plain",
        help="rest: each step of a bare expression also writes the expression left to compute "
        "(scripts/expression_steps_probe.py measures what it changes)",
    )
    parser.add_argument("--off-domain", type=int, default=4000, help="messages outside the domain")
    parser.add_argument("--off-domain-tools", type=int, default=0, help="messages outside the domain with a tool bound")
    parser.add_argument("--structured", type=int, default=4000, help="problems also answered as JSON after the steps")
    parser.add_argument("--tool-use", type=int, default=6000, help="stories also solved with the calculator tool")
    parser.add_argument(
        "--reworded", type=int, default=0,
        help="problems asked as newcomers type them (`what is 2+2`, `6 times 7`, other story verbs), solved as usual",
    )
    parser.add_argument("--n-verify", type=int, default=2, help="verdicts on right/corrupted steps per problem")
    parser.add_argument(
        "--plausible-wrong", type=float, default=0.0,
        help="share of the wrong steps judged that read right: an early answer, a misread operand",
    )
    parser.add_argument("--draft-attempts", type=int, default=6000, help="problems whose steps the draft writes itself")
    parser.add_argument("--draft-steps", type=str, default="1800,500", help="steps of each phase for the draft")
    parser.add_argument("--target-steps", type=str, default="2400,600", help="steps of each phase for the target")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--pack", action="store_true",
        help="lay each batch's examples end to end in fewer rows: the same examples and loss, less padding computed "
        "(off: the layout every earlier command was trained with, bit for bit)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--resume", type=Path,
        help="go on training the pair in this folder (its tokenizer and shapes, learning rates scaled by --lr-scale)",
    )
    parser.add_argument("--lr-scale", type=float, default=1.0, help="scales both models' learning rates in phase one (phase two: 0.4 times that)")
    parser.add_argument(
        "--tool-judging", type=int, metavar="STORIES",
        help="with --resume: instead of the two phases, one phase of verdicts inside calculator conversations on "
        "STORIES stories (right and plausibly wrong steps and calls, and the draft's own attempts), with phase-one "
        "examples of --problems problems replayed beside them",
    )
    parser.add_argument("--own-repeats", type=int, default=2, help="with --tool-judging: copies of the draft's own attempts")
    parser.add_argument(
        "--grow-target", type=int, metavar="LAYERS",
        help="deepen the target to LAYERS layers, each new layer starting as the identity: with --resume first, "
        "from scratch after phase one",
    )
    parser.add_argument(
        "--target-shape", default="4x128", metavar="LAYERSxHIDDEN",
        help="from scratch: the target's layers and hidden size before any --grow-target",
    )
    parser.add_argument(
        "--solve-steps", type=str, default="0,0",
        help="from scratch: steps (draft,target) of a phase before the others that only solves problems",
    )
    parser.add_argument(
        "--solve-tool-use", type=int, default=0, metavar="STORIES",
        help="from scratch: the solve phase also solves STORIES stories with the calculator tool, turn by turn",
    )
    parser.add_argument(
        "--solve-tool-use-for", choices=("both", "target"), default="both",
        help="which models' solve phase gets the --solve-tool-use turns (the 2-layer draft lost its arithmetic beside them)",
    )
    parser.add_argument(
        "--tuning-problems", type=int, default=0,
        help="after each phase, count each model's right greedy answers on this many tuning problems (logged in training.json)",
    )
    parser.add_argument(
        "--solve-lr-scale", type=float, default=1.0,
        help="scales both models' learning rates in the solve phase (--lr-scale scales them in the phases after it)",
    )
    args = parser.parse_args()
    if args.tool_judging and not args.resume:
        parser.error("--tool-judging goes on from a trained pair: give --resume PAIR")
    solve_steps = [int(n) for n in args.solve_steps.split(",")]
    if args.resume and (any(solve_steps) or args.solve_lr_scale != 1.0 or args.solve_tool_use):
        parser.error("--solve-steps, --solve-lr-scale and --solve-tool-use start a pair from scratch: leave out --resume")
    if args.solve_tool_use and not any(solve_steps):
        parser.error("--solve-tool-use adds to the solve phase: give --solve-steps too")
    try:
        shapes = {"draft": SHAPES["draft"], "target": target_shape(args.target_shape)}
    except ValueError as error:
        parser.error(str(error))
    if args.resume and shapes["target"] != SHAPES["target"]:
        parser.error("--target-shape builds a target from scratch: leave out --resume")
    if not args.resume and args.grow_target and args.grow_target % shapes["target"]["num_layers"]:
        parser.error(f"--grow-target must be a multiple of the target's {shapes['target']['num_layers']} layers")

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    began = time.time()
    problems = make_problems(args.problems, seed=args.seed, expression_share=args.expression_share, with_rest=args.expression_steps == "rest")
    if args.resume:
        tokenizer = AutoTokenizer.from_pretrained(args.resume / "target")
        models = {role: AutoModelForCausalLM.from_pretrained(args.resume / role) for role in ("draft", "target")}
        for model in models.values():  # plain RoPE: a longer window is a setting, not new weights
            model.config.max_position_embeddings = CONTEXT
        history = {role: json.loads((args.resume / role / "training.json").read_text()) for role in models}
        if args.grow_target:
            grow_depth(models["target"], args.grow_target)
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(problems), vocab_size=400)
        tokenizer.add_tokens(TOOL_WORDS)
        models = {
            role: build_model(tokenizer, seed=args.seed + (role == "target"), max_positions=CONTEXT, **shapes[role])
            for role in ("draft", "target")
        }
        history = {}
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE  # renders plain chats as usual, tools compactly
    tokenizer.model_max_length = CONTEXT
    rng = random.Random(args.seed)
    maker = ExampleMaker(tokenizer)
    log: dict[str, list] = {"draft": [], "target": []}  # type: ignore[type-arg]
    draft_steps = [int(n) for n in args.draft_steps.split(",")]
    target_steps = [int(n) for n in args.target_steps.split(",")]

    print(f"vocabulary {len(tokenizer)}", flush=True)
    if any(solve_steps):
        solving = Phase("solve", solve_steps[0], solve_steps[1], args.solve_lr_scale)
        solutions = solving_examples(maker, problems, args)
        with_tools = solutions + solving_tool_turns(maker, args)
        draft_examples = solutions if args.solve_tool_use_for == "target" else with_tools
        train_phase(solving, {"draft": draft_examples, "target": with_tools}, maker, args, models, log)
    first = phase_one_examples(maker, problems, args, rng)
    if args.tool_judging:
        wrong, attempts = tool_judging_phase(maker, first, args, rng, models, draft_steps[0], target_steps[0], log)
    else:
        grow_to = None if args.resume else args.grow_target
        wrong, attempts = two_phases(maker, first, args, rng, models, draft_steps, target_steps, log, grow_to)

    for role, model in models.items():
        path = args.out / role
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        record = {
            "earlier": history.get(role),  # the training of the pair this run went on from
            "command": "python scripts/train_demo_pair.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "shape": shape_of(model), "phases": log[role], "draft_attempts_wrong": f"{wrong} of {attempts}",
            "total_seconds": round(time.time() - began, 1),
        }
        (path / "training.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
