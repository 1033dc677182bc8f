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

import torch

from langchain_confspec.config import DEFAULT_BINARY_PROMPT
from langchain_confspec.demo.problems import Problem, corrupt_step, make_problems
from langchain_confspec.loading import render_prompt
from langchain_confspec.tiny import build_model, train_tokenizer

SHAPES = {
    "draft": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_multiple": 3},
    "target": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "ffn_multiple": 3},
}
LEARNING_RATES = {"draft": 3e-3, "target": 2e-3}


@dataclass(frozen=True)
class Example:
    ids: list[int]
    learn_from: int  # loss on ids[learn_from:]


def tokenizer_corpus(problems: list[Problem]) -> list[str]:
    texts = []
    for problem in problems:
        texts.append(problem.question)
        texts.extend(problem.steps)
    texts += [DEFAULT_BINARY_PROMPT + " Yes", DEFAULT_BINARY_PROMPT + " No", "system user assistant"]
    return texts


def examples_for(problem: Problem, tokenizer, rng: random.Random, n_verify: int) -> list[Example]:  # type: ignore[no-untyped-def]
    """One solving example and `n_verify` verification examples (half with a corrupted step)."""
    prompt = render_prompt(tokenizer, problem.turns())
    steps = [tokenizer.encode(step, add_special_tokens=False) for step in problem.steps]
    solved = prompt + [i for step in steps for i in step] + [tokenizer.eos_token_id]
    examples = [Example(solved, len(prompt))]
    suffix = tokenizer.encode(DEFAULT_BINARY_PROMPT, add_special_tokens=False)
    yes, no = tokenizer.encode(" Yes", add_special_tokens=False)[0], tokenizer.encode(" No", add_special_tokens=False)[0]
    for _ in range(n_verify):
        k = rng.randrange(len(steps))
        correct = rng.random() < 0.5
        step = steps[k] if correct else tokenizer.encode(corrupt_step(problem.steps[k], rng), add_special_tokens=False)
        ids = prompt + [i for s in steps[:k] for i in s] + step + suffix + [yes if correct else no]
        examples.append(Example(ids, len(ids) - 1))
    return examples


def batches(examples: list[Example], batch_size: int, pad_id: int, rng: random.Random):  # type: ignore[no-untyped-def]
    while True:
        chosen = rng.sample(examples, batch_size)
        width = max(len(e.ids) for e in chosen)
        ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), -100)
        for row, example in enumerate(chosen):
            ids[row, : len(example.ids)] = torch.tensor(example.ids)
            labels[row, example.learn_from : len(example.ids)] = torch.tensor(example.ids[example.learn_from :])
        yield ids, labels


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
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
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
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    problems = make_problems(args.problems, seed=args.seed)
    tokenizer_dir = args.out / "target"
    if args.only and (tokenizer_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(problems), vocab_size=400)
    if args.focus_op:
        problems = [p for p in problems if any(f" {args.focus_op} " in step for step in p.steps)]
    rng = random.Random(args.seed)
    examples = [e for p in problems for e in examples_for(p, tokenizer, rng, n_verify=2)]
    print(f"{len(problems)} problems, {len(examples)} examples, vocabulary {len(tokenizer)}", flush=True)

    for role in ("draft", "target"):
        if args.only and args.only != role:
            continue
        path = args.out / role
        if args.resume:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path)
        else:
            model = build_model(tokenizer, seed=args.seed + (role == "target"), **SHAPES[role])
        n_params = sum(p.numel() for p in model.parameters())
        print(f"training the {role}: {n_params / 1e6:.2f}M parameters", flush=True)
        steps = args.draft_steps if role == "draft" else args.target_steps
        started = time.time()
        lr = args.lr or LEARNING_RATES[role]
        train(model, examples, steps=steps, batch_size=args.batch_size, lr=lr, seed=args.seed, device=args.device)
        history = json.loads((path / "training.json").read_text())["phases"] if args.resume else []
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        phase = {"seed": args.seed, "problems": args.problems, "focus_op": args.focus_op, "steps": steps,
                 "batch_size": args.batch_size, "lr": lr, "seconds": round(time.time() - started, 1)}
        (path / "training.json").write_text(
            json.dumps({"parameters": n_params, "shape": SHAPES[role], "phases": [*history, phase]}, indent=2)
        )


if __name__ == "__main__":
    main()
