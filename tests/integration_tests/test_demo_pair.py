"""The bundled demo pair: it loads by name, answers its own domain, and shows the mechanism."""

from __future__ import annotations

import pytest

from langchain_confspec import ConfSpecChatModel, ConfSpecEngine, Decision, load_model
from langchain_confspec.config import build_config
from langchain_confspec.demo.problems import extract_answer, make_problems
from langchain_confspec.loading import DEMO_PAIR_DIR


@pytest.fixture(scope="module")
def demo_engine() -> ConfSpecEngine:
    return ConfSpecEngine(load_model("confspec-demo-draft", role="draft"), load_model("confspec-demo-target", role="target"))


def test_the_pair_ships_small_in_safetensors() -> None:
    files = [p for p in DEMO_PAIR_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40 * 2**20
    assert {p.parent.name for p in files if p.name == "model.safetensors"} == {"draft", "target"}


def test_the_target_solves_what_the_draft_gets_wrong(demo_engine: ConfSpecEngine) -> None:
    problems = make_problems(40, seed=20_000)
    right = {"target_only": 0, "draft_only": 0}
    for problem in problems:
        for mode in right:
            result = demo_engine.generate(problem.turns(), build_config(mode=mode, max_tokens=96))
            right[mode] += extract_answer(result.text) == str(problem.answer)
    assert right["target_only"] >= 34  # the model card reports the full held-out figure
    assert right["draft_only"] < right["target_only"]


def test_confspec_keeps_easy_steps_and_escalates_hard_ones(demo_engine: ConfSpecEngine) -> None:
    decisions: dict[Decision, int] = {}
    for problem in make_problems(20, seed=20_001):
        result = demo_engine.generate(problem.turns(), build_config(max_tokens=96))
        for record in result.records:
            decisions[record.decision] = decisions.get(record.decision, 0) + 1
    total = sum(decisions.values())
    assert decisions.get(Decision.ACCEPTED_BY_DRAFT, 0) >= total / 3
    assert decisions.get(Decision.ACCEPTED_BY_TARGET, 0) + decisions.get(Decision.REJECTED_BY_TARGET, 0) > 0


def test_demo_constructor_answers_through_langchain() -> None:
    model = ConfSpecChatModel.demo(max_tokens=96)
    problem = make_problems(1, seed=20_002)[0]
    message = model.invoke(problem.question)
    assert message.response_metadata["confspec"]["target_model"] == "confspec-demo-target"
    assert extract_answer(str(message.content)) is not None
