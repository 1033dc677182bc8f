"""Train the bundled demo pair (draft and target) from a seed, on the CPU or a GPU.

    python scripts/train_demo_pair.py --out langchain_confspec/demo/pair --seed 0

Both models learn to solve the arithmetic word problems of `langchain_confspec.demo.problems`
step by step and to answer the engine's verification prompt about a step (correct steps and
corrupted ones). Training sequences are token-for-token what the engine builds at run time:
the chat template, each step encoded on its own, and the verification suffix appended after
a step. The draft is small and trained briefly; the target is several times larger.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import AutoModelForCausalLM, AutoTokenizer

from langchain_confspec.config import DEFAULT_BINARY_PROMPT
from langchain_confspec.demo.problems import (
    STEP_SEPARATOR,
    Problem,
    corrupt_step,
    make_problems,
)
from langchain_confspec.demo.tools import calculator, evaluate
from langchain_confspec.prompting import render_prompt
from langchain_confspec.tiny import (
    TOOLS_CHAT_TEMPLATE,
    build_model,
    train_tokenizer,
    with_ascii_alphabet,
)
from langchain_confspec.tool_calls import format_tool_call

SHAPES = {
    "draft": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_multiple": 3},
    "target": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "ffn_multiple": 3},
}
LEARNING_RATES = {"draft": 3e-3, "target": 2e-3}
CALCULATOR_SCHEMA = convert_to_openai_tool(calculator)
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
    return texts


class ExampleMaker:
    """Builds training sequences exactly as the engine builds its contexts: chat template, each
    step encoded on its own, the verification suffix after the judged step."""

    def __init__(self, tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.suffix = self.encode(DEFAULT_BINARY_PROMPT)
        self.yes, self.no = self.encode(" Yes")[0], self.encode(" No")[0]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def before(self, problem: Problem, index: int) -> list[int]:
        prompt = render_prompt(self.tokenizer, problem.turns())
        return prompt + [i for step in problem.steps[:index] for i in self.encode(step)]

    def solving(self, problem: Problem) -> Example:
        prompt = render_prompt(self.tokenizer, problem.turns())
        ids = self.before(problem, len(problem.steps)) + [self.tokenizer.eos_token_id]
        return Example(ids, len(prompt))

    def verdict(self, problem: Problem, index: int, step: str, correct: bool) -> Example:
        ids = self.before(problem, index) + self.encode(step) + self.suffix + [self.yes if correct else self.no]
        return Example(ids, len(ids) - 1)

    def tool_use(self, problem: Problem, rng: random.Random) -> list[Example]:
        """The problem solved with the calculator: each operation is a tool call, each result
        is copied into the next step. One example per assistant turn, plus a verdict on a
        call (right, or with a wrong number)."""
        tools = [CALCULATOR_SCHEMA]
        turns: list[dict[str, Any]] = list(problem.turns())
        examples = []
        n_operations = len(problem.steps) - 2
        verdict_turn = rng.randrange(n_operations)
        for k in range(n_operations + 1):
            last = k == n_operations
            written = [problem.steps[k]]
            call = None
            if not last:
                expression = problem.steps[k + 1].split(" = ")[0]
                call = {"id": f"call_{k}", "name": "calculator", "args": {"expression": expression}}
                written.append(format_tool_call("calculator", call["args"]))
            else:
                written.append(problem.steps[-1])
            prompt = render_prompt(self.tokenizer, turns, tools)
            ids = prompt + [i for text in written for i in self.encode(text)] + [self.tokenizer.eos_token_id]
            examples.append(Example(ids, len(prompt)))
            if k == verdict_turn and call is not None:
                correct = rng.random() < 0.5
                shown = written[1] if correct else format_tool_call(
                    "calculator", {"expression": corrupt_step(call["args"]["expression"], rng)}
                )
                judged = prompt + self.encode(written[0]) + self.encode(shown) + self.suffix
                examples.append(Example([*judged, self.yes if correct else self.no], len(judged)))
            if call is not None:
                turns.append({"role": "assistant", "content": problem.steps[k], "tool_calls": [call]})
                turns.append({"role": "tool", "content": str(evaluate(call["args"]["expression"])), "tool_call_id": call["id"]})
        return examples

    def checks(self, problem: Problem, rng: random.Random, n_verify: int) -> list[Example]:
        """`n_verify` verdicts on steps of `problem`, half of them on a corrupted step."""
        examples = []
        for _ in range(n_verify):
            k = rng.randrange(len(problem.steps))
            correct = rng.random() < 0.5
            step = problem.steps[k] if correct else corrupt_step(problem.steps[k], rng)
            examples.append(self.verdict(problem, k, step, correct))
        return examples


@torch.no_grad()
def draft_attempts(model, maker: ExampleMaker, problems: list[Problem], batch_size: int = 256) -> list[Attempt]:  # type: ignore[no-untyped-def]
    """Let `model` write every step of `problems` after the right steps before it (greedy)."""
    tokenizer = maker.tokenizer
    cases = [(p, k) for p in problems for k in range(len(p.steps))]
    attempts = []
    model.eval()
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        contexts = [maker.before(p, k) for p, k in chunk]
        width = max(map(len, contexts))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, context in enumerate(contexts):  # left padding
            ids[row, width - len(context) :] = torch.tensor(context)
            mask[row, width - len(context) :] = 1
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        for (problem, k), row in zip(chunk, out[:, width:]):
            text = tokenizer.decode(row, skip_special_tokens=True)
            cut = text.find(STEP_SEPARATOR)
            text = text[: cut + len(STEP_SEPARATOR)] if cut >= 0 else text
            attempts.append(Attempt(problem, k, text, text == problem.steps[k]))
    return attempts


def batches(examples: list[Example], batch_size: int, pad_id: int, rng: random.Random):  # type: ignore[no-untyped-def]
    """Random batches from one length bucket at a time (short or long, in proportion to their
    sizes), so that a few long tool conversations do not pad every batch to their length."""
    buckets = [b for b in ([e for e in examples if len(e.ids) <= 160], [e for e in examples if len(e.ids) > 160]) if b]
    weights = [len(b) for b in buckets]
    while True:
        bucket = rng.choices(buckets, weights)[0]
        chosen = rng.sample(bucket, min(batch_size, len(bucket)))
        width = max(len(e.ids) for e in chosen)
        ids = torch.full((len(chosen), width), pad_id)
        labels = torch.full((len(chosen), width), -100)
        for row, example in enumerate(chosen):
            ids[row, : len(example.ids)] = torch.tensor(example.ids)
            labels[row, example.learn_from : len(example.ids)] = torch.tensor(example.ids[example.learn_from :])
        yield ids, labels


def example_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged per example, then over the batch: a one-token verdict weighs as
    much as a whole solution (averaged over tokens, verdicts would be a few percent of the loss
    and the models would barely learn to verify)."""
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
    ).view(labels.shape)
    counted = (labels != -100).float()
    return ((per_token * counted).sum(1) / counted.sum(1).clamp(min=1)).mean()


def train(model, examples, *, steps: int, batch_size: int, lr: float, seed: int, device: str, log_every: int = 100):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    started = time.time()
    stream = batches(examples, batch_size, model.config.pad_token_id, rng)
    for step in range(steps):
        ids, labels = next(stream)
        ids, labels = ids.to(device), labels.to(device)
        loss = example_mean_loss(model(input_ids=ids).logits[:, :-1], labels[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - started:7.1f}s", flush=True)
    return model.to("cpu").eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("langchain_confspec/demo/pair"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=60000)
    parser.add_argument("--draft-steps", type=int, default=1600)
    parser.add_argument("--target-steps", type=int, default=3600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["draft", "target"], help="train one model (the tokenizer must exist)")
    parser.add_argument("--resume", action="store_true", help="continue training the saved model(s) in --out")
    parser.add_argument("--lr", type=float, help="learning rate (default: per model)")
    parser.add_argument("--focus-op", choices=["+", "-", "*"], help="train only on problems with this operation")
    parser.add_argument("--n-verify", type=int, default=2, help="verdicts on right/corrupted steps per problem")
    parser.add_argument(
        "--draft-attempts", type=int, default=0,
        help="problems whose steps the saved draft writes itself; each step becomes a verdict example",
    )
    parser.add_argument("--verify-only", action="store_true", help="train on verdict examples only")
    parser.add_argument("--solve-repeats", type=int, default=1, help="copies of each solving example")
    parser.add_argument("--tool-use", type=int, default=0, help="problems also solved with the calculator tool")
    parser.add_argument(
        "--tool-vocabulary", action="store_true",
        help="add printable ASCII and the words of tool calls to the tokenizer (and the embeddings)",
    )
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    problems = make_problems(args.problems, seed=args.seed)
    tokenizer_dir = args.out / "target"
    if args.only and (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(problems), vocab_size=400)
    if args.tool_vocabulary:
        tokenizer = with_ascii_alphabet(tokenizer)
        tokenizer.add_tokens(TOOL_WORDS)
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE  # renders plain chats as before, tools compactly
    if args.focus_op:
        problems = [p for p in problems if any(f" {args.focus_op} " in step for step in p.steps)]
    rng = random.Random(args.seed)
    maker = ExampleMaker(tokenizer)
    examples = [e for p in problems for e in maker.checks(p, rng, args.n_verify)]
    if not args.verify_only:
        examples += [maker.solving(p) for p in problems] * args.solve_repeats
    if args.tool_use:
        examples += [e for p in make_problems(args.tool_use, seed=args.seed + 2000) for e in maker.tool_use(p, rng)]
    if args.draft_attempts:
        draft = AutoModelForCausalLM.from_pretrained(args.out / "draft")
        attempts = draft_attempts(draft, maker, make_problems(args.draft_attempts, seed=args.seed + 1000))
        wrong = sum(not a.correct for a in attempts)
        print(f"draft attempts: {len(attempts)} steps, {wrong} wrong", flush=True)
        examples += [maker.verdict(a.problem, a.index, a.text, a.correct) for a in attempts]
    print(f"{len(problems)} problems, {len(examples)} examples, vocabulary {len(tokenizer)}", flush=True)

    for role in ("draft", "target"):
        if args.only and args.only != role:
            continue
        path = args.out / role
        if args.resume:
            model = AutoModelForCausalLM.from_pretrained(path)
            if model.get_input_embeddings().num_embeddings < len(tokenizer):
                model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        else:
            model = build_model(tokenizer, seed=args.seed + (role == "target"), **SHAPES[role])
        n_params = sum(p.numel() for p in model.parameters())
        print(f"training the {role}: {n_params / 1e6:.2f}M parameters", flush=True)
        steps = args.draft_steps if role == "draft" else args.target_steps
        started = time.time()
        lr = args.lr or LEARNING_RATES[role]
        if steps:  # 0 steps: only take the tokenizer (e.g. --tool-vocabulary) and resize
            train(model, examples, steps=steps, batch_size=args.batch_size, lr=lr, seed=args.seed, device=args.device)
        history = json.loads((path / "training.json").read_text())["phases"] if args.resume else []
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        phase = {
            "seed": args.seed, "problems": args.problems, "focus_op": args.focus_op, "steps": steps,
            "batch_size": args.batch_size, "lr": lr, "n_verify": args.n_verify,
            "draft_attempts": args.draft_attempts, "verify_only": args.verify_only, "solve_repeats": args.solve_repeats,
            "tool_use": args.tool_use, "tool_vocabulary": args.tool_vocabulary,
            "loss": "per-example mean", "seconds": round(time.time() - started, 1),
        }
        (path / "training.json").write_text(
            json.dumps({"parameters": n_params, "shape": SHAPES[role], "phases": [*history, phase]}, indent=2)
        )


if __name__ == "__main__":
    main()
