"""How well each demo model answers the verification prompt, on two kinds of wrong steps.

    python benchmarks/verifier_probe.py [--problems 40]

1. Synthetic corruptions, like the training data: every arithmetic step of held-out problems,
   once as written and once with its last number changed by `corrupt_step`.
2. The draft's own steps: the draft answers held-out problems alone; each arithmetic step it
   writes is labelled by `check_step` and judged by the target in the draft's context.

Prints the mean acceptance probability for right and wrong steps, and how many wrong draft
steps the target would keep (p_accept >= 0.5).
"""

from __future__ import annotations

import argparse
import random
import statistics

from transformers.utils import logging as hf_logging

from langchain_confspec import ConfSpecEngine, load_model
from langchain_confspec.config import build_config
from langchain_confspec.demo.problems import check_step, corrupt_step, make_problems
from langchain_confspec.engine.verification import VerdictReader, judge
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.session import ModelSession


def p_accept(model: LoadedModel, context: list[int]) -> float:
    return judge(ModelSession(model, context), VerdictReader(model.tokenizer, build_config())).p_accept


def encode(model: LoadedModel, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=40)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    draft = load_model("confspec-demo-draft", role="draft")
    target = load_model("confspec-demo-target", role="target")

    rng = random.Random(0)
    for model in (draft, target):
        scores: dict[bool, list[float]] = {True: [], False: []}
        for problem in make_problems(args.problems, seed=777):
            prompt = model.render_prompt(problem.turns())
            for k, step in enumerate(problem.steps):
                if check_step(step) is None:
                    continue
                before = prompt + encode(model, "".join(problem.steps[:k]))
                scores[True].append(p_accept(model, before + encode(model, step)))
                scores[False].append(p_accept(model, before + encode(model, corrupt_step(step, rng))))
        print(
            f"{model.name}, synthetic corruptions: mean p_accept {statistics.mean(scores[True]):.3f} on right steps, "
            f"{statistics.mean(scores[False]):.3f} on corrupted ones ({len(scores[True])} each)"
        )

    engine = ConfSpecEngine(draft, target)
    judged: dict[bool, list[float]] = {True: [], False: []}
    for problem in make_problems(args.problems, seed=4242):
        answer = engine.generate(problem.turns(), build_config(mode="draft_only", max_tokens=96))
        context = target.render_prompt(problem.turns())
        for record in answer.records:
            step = encode(target, record.text)
            right = check_step(record.text)
            if right is not None:
                judged[right].append(p_accept(target, context + step))
            context += step
    kept_wrong = sum(p >= 0.5 for p in judged[False])
    print(
        f"target judging the draft's own arithmetic steps: mean p_accept {statistics.mean(judged[True]):.3f} on "
        f"{len(judged[True])} right steps, {statistics.mean(judged[False]):.3f} on {len(judged[False])} wrong ones; "
        f"it would keep {kept_wrong} of the {len(judged[False])} wrong steps"
    )


if __name__ == "__main__":
    main()
