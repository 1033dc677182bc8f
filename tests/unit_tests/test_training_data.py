"""The demo pair's training data (`scripts/train_demo_pair.py`): the verdicts it teaches inside
calculator conversations say the truth about what they judge."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from langchain_confspec.demo import DEMO_PAIR_DIR
from langchain_confspec.demo.problems import (
    OFF_DOMAIN_ANSWER,
    check_step,
    make_off_domain,
    make_problems,
    make_reworded,
    make_story,
)
from langchain_confspec.demo.tools import evaluate
from langchain_confspec.models.tiny import build_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_pair.py"


@pytest.fixture(scope="module")
def training() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_demo_pair", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def maker(training: ModuleType):  # type: ignore[no-untyped-def]
    return training.ExampleMaker(AutoTokenizer.from_pretrained(DEMO_PAIR_DIR / "target"))


def test_a_wrong_call_is_never_the_right_one_and_always_runs(training: ModuleType) -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        story = make_story(rng)
        for index, step in enumerate(story.steps[1:-1]):
            right = step.split(" = ")[0]
            wrong = training.wrong_call(story, index, rng)
            assert wrong != right
            assert wrong.split()[0] == right.split()[0], "the call starts from the current value"
            evaluate(wrong)  # the calculator accepts it
            seen.add("same amount" if wrong.split()[2] == right.split()[2] else "other amount")
    assert seen == {"same amount", "other amount"}  # other operators and other sentences both occur


def test_a_plausible_wrong_step_is_wrong_yet_computes_right(training: ModuleType) -> None:
    rng = random.Random(2)
    kinds = set()
    for problem in make_problems(300, seed=3):
        for index, step in enumerate(problem.steps):
            wrong = training.plausible_wrong_step(problem, index, rng)
            if check_step(step.strip()) is None:  # the opening line of a story, the answer
                assert wrong is None
                continue
            assert wrong is not None and wrong != step
            if wrong.startswith("Answer: "):
                kinds.add("early answer")
                assert wrong == f"Answer: {step.split()[0]}", "the value before the operation"
            else:
                kinds.add("misread operand")
                left, operator, right, _, value = wrong.rstrip(".\n").split()
                assert int(value) == evaluate(f"{left} {operator} {right}") and operator == step.split()[1]
    assert kinds == {"early answer", "misread operand"}


def test_verdicts_inside_a_calculator_conversation_are_labelled_by_what_they_judge(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    story = make_story(rng, n_operations=3)
    turns = maker.tool_turns(story)
    assert [t.step for t in turns] == list(story.steps[:-1])
    examples = maker.tool_checks(story, rng)
    assert len(examples) == 4 * len(turns)
    tokenizer = maker.tokenizer
    for turn, group in zip(turns, [examples[i : i + 4] for i in range(0, len(examples), 4)]):
        right_step, wrong_step, right_after, wrong_after = (
            tokenizer.decode(e.ids[len(turn.prompt) : -1 - len(maker.suffix)]) for e in group
        )
        assert [e.ids[-1] for e in group] == [maker.yes, maker.no, maker.yes, maker.no]
        assert right_step == turn.step and wrong_step != turn.step
        assert right_after == turn.step + turn.after and wrong_after != right_after
        assert all(e.learn_from == len(e.ids) - 1 for e in group)  # only the verdict is learned


def test_a_refusal_with_a_tool_bound_shows_the_tool_and_learns_only_the_refusal(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    names = {tool["function"]["name"] for tool in training.REFUSAL_TOOLS}
    assert "calculator" in names and "multiply" not in names  # the benchmark's tool stays unseen
    tokenizer = maker.tokenizer
    for tool in training.REFUSAL_TOOLS:
        message = make_off_domain(random.Random(len(tool["function"]["name"])))
        written, judged = maker.refusal_with_tool(message, tool)
        prompt = tokenizer.decode(written.ids[: written.learn_from])
        assert tool["function"]["name"] in prompt and message.question in prompt
        assert tokenizer.decode(written.ids[written.learn_from : -1]) == OFF_DOMAIN_ANSWER
        assert written.ids[-1] == tokenizer.eos_token_id
        assert judged.ids[-1] == maker.yes and judged.learn_from == len(judged.ids) - 1


def test_the_tool_verdicts_benchmark_runs_on_the_bundled_pair() -> None:
    """`benchmarks/tool_verdicts.py` on two stories: it counts every turn, twice per judge."""
    script = SCRIPT.parents[1] / "benchmarks" / "tool_verdicts.py"
    done = subprocess.run([sys.executable, str(script), "--stories", "2"], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| draft", "| target"))]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        right_turns = int(cells[0].split(" of ")[1])
        assert right_turns > 0 and cells[1].endswith(f" of {right_turns}")  # one right and one wrong per turn


def test_the_expression_reading_benchmark_counts_every_step_of_each_model() -> None:
    """`benchmarks/expression_reading.py` on two expressions of each length: a row per model and
    step, every step counted, no more right steps than right operands."""
    script = SCRIPT.parents[1] / "benchmarks" / "expression_reading.py"
    done = subprocess.run([sys.executable, str(script), "--per-kind", "2"], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith(("| draft", "| target"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [(m, n, s) for m in ("target", "draft") for n, s in (("2", "1"), ("2", "2"), ("3", "1"), ("3", "2"), ("3", "3"))]
    for _, _, _, read, right in rows:
        (n_read, of), (n_right, of_too) = read.split(" of "), right.split(" of ")
        assert of == of_too == "2" and int(n_right) <= int(n_read) <= 2


@pytest.mark.parametrize("step_format", ["plain", "rest"])
def test_the_expression_steps_probe_trains_and_scores_every_length(step_format: str) -> None:
    """`scripts/expression_steps_probe.py` for one batch: a row per length, each count in range."""
    script = SCRIPT.with_name("expression_steps_probe.py")
    command = [sys.executable, str(script), "--format", step_format, "--steps", "1", "--per-kind", "2"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(line.startswith(f"format {step_format}, 1 batches") for line in done.stdout.splitlines())
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in done.stdout.splitlines() if line[:3] in ("| 1", "| 2", "| 3")]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(0 <= int(row[1]) <= 2 for row in rows)


def test_rest_steps_change_only_the_steps_of_bare_expressions() -> None:
    """What `--expression-steps rest` asks of `make_problems`: the same problems (stories, every
    question and answer) as before; only an expression's steps go on with the rest."""
    plain, with_rest = make_problems(200, seed=2), make_problems(200, seed=2, with_rest=True)
    assert [(p.question, p.answer) for p in plain] == [(p.question, p.answer) for p in with_rest]
    stories = [(a, b) for a, b in zip(plain, with_rest) if " starts with " in a.steps[0]]
    assert stories and all(a == b for a, b in stories)
    longer = [(a, b) for a, b in zip(plain, with_rest) if len(a.steps) > 2 and " starts with " not in a.steps[0]]
    assert longer and all(a.steps != b.steps and ", so " in b.steps[0] for a, b in longer)


def test_a_reworded_problem_asks_what_its_steps_solve() -> None:
    """Newcomer wordings (`what is 2+2`, `6 times 7`, `eats`) keep the usual steps: an
    expression read back with its operator words as symbols evaluates to the answer, and the
    steps check out one by one, so training on them teaches reading, not new arithmetic."""
    rng = random.Random(4)
    kinds = set()
    for _ in range(300):
        problem = make_reworded(rng)
        assert problem.steps[-1] == f"Answer: {problem.answer}"
        assert all(check_step(step) is not False for step in problem.steps)
        if " has " in problem.question:
            kinds.add("story" if re.search(r" (wins|collects|receives|uses|eats|drops|spends) ", problem.question) else "usual story")
            continue
        expression = problem.question.lower().removeprefix("what's ").removeprefix("whats ").removeprefix("what is ")
        for prefix in ("calculate ", "compute ", "solve "):
            expression = expression.removeprefix(prefix)
        expression = expression.rstrip("?=").strip()
        kinds.add("no spaces" if " " not in expression else "words" if any(w in expression for w in ("plus", "minus", "times", " x ")) else "spaced")
        symbols = expression.replace("plus", "+").replace("minus", "-").replace("times", "*").replace(" x ", " * ")
        assert evaluate(symbols) == problem.answer, problem.question
    assert kinds >= {"story", "no spaces", "words", "spaced"}


def test_solving_examples_learn_only_the_solutions(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    """The solve phase's data: one solution per problem and per reworded question, each learned
    from its first step to the end of sequence, the question itself never learned."""
    problems = make_problems(30, seed=5)
    examples = training.solving_examples(maker, problems, argparse.Namespace(seed=0, reworded=10))
    reworded_rng = random.Random(6000)  # the seed phase one draws its reworded problems from
    reworded = [make_reworded(reworded_rng) for _ in range(10)]
    assert len(examples) == 40
    for problem, example in zip(problems + reworded, examples, strict=True):
        assert example.ids[-1] == maker.tokenizer.eos_token_id
        assert maker.tokenizer.decode(example.ids[example.learn_from : -1]) == "".join(problem.steps)
        assert example.ids[: example.learn_from] == maker.encoded(problem)[0]


def test_the_solve_phase_can_solve_stories_with_the_calculator_turn_by_turn(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    """`--solve-tool-use`: after the solutions, the assistant turns of calculator conversations
    that fit the short bucket, learned from the step on (the conversation before it never
    learned), and no verdict."""
    examples = training.solving_tool_turns(maker, argparse.Namespace(seed=0, solve_tool_use=3))
    stories = random.Random(7000)  # the seed the solve phase draws its stories from
    every_turn = [t for _ in range(3) for t in maker.tool_turns(make_story(stories))]
    turns = [t for t in every_turn if len(maker.tool_turn(t).ids) <= training.SHORT_TOKENS]
    assert len(examples) == len(turns) >= 3
    assert any(t.index >= 1 for t in turns)  # the second call, where the agent misreads, is kept
    for turn, example in zip(turns, examples, strict=True):
        assert example.ids[: example.learn_from] == turn.prompt
        assert maker.tokenizer.decode(example.ids[example.learn_from : -1]) == turn.step + turn.after
        assert example.ids[-1] == maker.tokenizer.eos_token_id  # a verdict ends with its Yes or No


def test_a_bucket_width_batches_examples_of_one_length_span_with_less_padding(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    """Batches of one span of lengths (the probe's `--bucket-width`): each example learned as
    before, less padding than the two buckets the shipped pair was trained with."""
    examples = [maker.solving(p) for p in make_problems(300, seed=7)]
    examples += [e for _ in range(5) for e in maker.tool_use(make_story(random.Random(3)), random.Random(4))]
    short, long = training.length_buckets(examples, 0)
    assert max(len(e.ids) for e in short) <= 160 < min(len(e.ids) for e in long)
    spans = training.length_buckets(examples, 8)
    assert sorted(map(id, examples)) == sorted(id(e) for bucket in spans for e in bucket)

    def real_share(width: int) -> float:
        stream = training.batches(examples, 16, maker.tokenizer.pad_token_id, random.Random(0), width)
        real = padded = 0
        for _ in range(40):
            batch = next(stream)
            ids, labels = batch.ids, batch.labels
            lengths = (ids != maker.tokenizer.pad_token_id).sum(1).tolist()
            if width:
                assert len({(n - 1) // width for n in lengths}) == 1, lengths
            learned = labels != -100
            assert learned.any(1).all() and torch.equal(labels[learned], ids[learned])
            real, padded = real + sum(lengths), padded + ids.numel()
        return real / padded

    assert real_share(8) > real_share(0) + 0.1


def test_a_packed_batch_learns_exactly_what_its_padded_batch_learns(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    """`--pack`: the same examples in fewer rows give the same loss and the same gradients, so a
    packed run learns what the padded run learns; attention leaking from one example into the
    next, or a label across their seam, would change both."""
    examples = [maker.solving(p) for p in make_problems(12, seed=5)]
    examples += list(maker.tool_use(make_story(random.Random(2)), random.Random(3)))[:4]
    examples.append(training.Example(examples[0].ids, learn_from=0))  # its first token is no label, packed or not
    pad_id = maker.tokenizer.pad_token_id
    model = build_model(maker.tokenizer, hidden_size=32, num_layers=2, seed=0).train()

    def loss_and_grads(batch):  # type: ignore[no-untyped-def]
        model.zero_grad()
        loss = training.batch_loss(model, batch, "cpu")
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    padded, packed = training.padded(examples, pad_id), training.packed(examples, pad_id)
    assert len(packed.ids) < len(padded.ids) and packed.ids.shape[1] == padded.ids.shape[1]
    assert sorted(packed.ids[packed.labels != -100].tolist()) == sorted(padded.labels[:, 1:][padded.labels[:, 1:] != -100].tolist())
    (padded_loss, padded_grads), (packed_loss, packed_grads) = loss_and_grads(padded), loss_and_grads(packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for a, b in zip(padded_grads, packed_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_from_scratch_the_script_solves_first_and_grows_the_target_before_phase_two(training: ModuleType, tmp_path: Path) -> None:
    """The one-hour recipe's shape at toy sizes: a solve phase for both models at its own rate
    (calculator turns in the target's only), phase one, the target grown, phase two at 0.4
    times phase one's rate."""
    shallow = training.SHAPES["target"]["num_layers"]
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--problems", "40", "--off-domain", "3",
               "--structured", "3", "--tool-use", "3", "--reworded", "3", "--draft-attempts", "3", "--n-verify", "1",
               "--solve-steps", "1,2", "--draft-steps", "1,1", "--target-steps", "1,1", "--grow-target", str(2 * shallow),
               "--solve-lr-scale", "2", "--lr-scale", "0.5", "--tuning-problems", "2", "--batch-size", "4", "--device", "cpu",
               "--solve-tool-use", "3", "--solve-tool-use-for", "target"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    target = json.loads((tmp_path / "target" / "training.json").read_text())
    assert target["shape"]["num_layers"] == 2 * shallow
    phases = [(p["phase"], p["steps"], p["layers"]) for p in target["phases"]]
    assert phases == [("solve", 2, shallow), ("solve, judge, refuse, call tools", 1, shallow),
                      ("judge the draft's own steps", 1, 2 * shallow)]
    rate = training.LEARNING_RATES["target"]
    assert [p["lr"] for p in target["phases"]] == pytest.approx([2 * rate, 0.5 * rate, 0.4 * 0.5 * rate])
    draft = json.loads((tmp_path / "draft" / "training.json").read_text())
    assert draft["shape"]["num_layers"] == training.SHAPES["draft"]["num_layers"]
    assert draft["phases"][0]["phase"] == "solve"
    assert draft["phases"][0]["examples"] == 40 + 3 < target["phases"][0]["examples"]  # problems and reworded ones
    for phase in target["phases"] + draft["phases"]:
        assert re.fullmatch(r"[012] of 2", phase["tuning_right"]), phase
        assert phase["scoring_seconds"] >= 0


def test_count_right_tells_a_trained_target_from_an_untrained_one(training: ModuleType, maker) -> None:  # type: ignore[no-untyped-def]
    """The score `--tuning-problems` logs after each phase: the bundled target answers nearly
    every tuning problem, a fresh model of the same shape none."""
    tuning = make_problems(20, seed=training.TUNING_SEED)
    trained = AutoModelForCausalLM.from_pretrained(DEMO_PAIR_DIR / "target")
    assert training.count_right(trained, maker.tokenizer, tuning) >= 18
    untrained = training.build_model(maker.tokenizer, seed=0, max_positions=training.CONTEXT, **training.SHAPES["target"])
    assert training.count_right(untrained, maker.tokenizer, tuning) == 0


def test_from_scratch_the_target_can_start_deep_and_narrow(training: ModuleType, tmp_path: Path) -> None:
    """`--target-shape`: the target built at that depth and width, and trained at it throughout."""
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--problems", "20", "--off-domain", "2",
               "--structured", "2", "--tool-use", "2", "--draft-attempts", "2", "--n-verify", "1",
               "--draft-steps", "1,0", "--target-steps", "1,1", "--batch-size", "4", "--device", "cpu", "--target-shape", "6x32"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    target = json.loads((tmp_path / "target" / "training.json").read_text())
    assert (target["shape"]["num_layers"], target["shape"]["hidden_size"]) == (6, 32)
    assert [p["layers"] for p in target["phases"]] == [6, 6]
    assert "--target-shape 6x32" in target["command"]  # the record reruns the run
    draft = json.loads((tmp_path / "draft" / "training.json").read_text())
    assert draft["shape"] == training.SHAPES["draft"]  # the draft's shape is not the target's


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--target-shape", "20x60"], "HIDDEN a multiple of 8"), (["--target-shape", "twenty"], "expects LAYERSxHIDDEN"),
     (["--target-shape", "5x64", "--grow-target", "12"], "multiple of the target's 5 layers"),
     (["--target-shape", "20x64", "--resume", "PAIR"], "leave out --resume")],
)
def test_a_target_shape_the_script_cannot_build_is_refused_at_once(tmp_path: Path, flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *flags], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())


def test_from_scratch_a_depth_the_target_cannot_grow_to_is_refused_at_once(tmp_path: Path) -> None:
    """Growing happens half an hour into the run: a bad depth must fail before any training."""
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--grow-target", "10"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--grow-target must be a multiple" in done.stderr
    assert not any(tmp_path.iterdir())
