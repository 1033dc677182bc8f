"""The documentation stays true: runnable examples run, the reference matches the code."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_confspec import ConfSpecChatModel
from langchain_confspec.demo.problems import extract_answer

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
_RUNNABLE = re.compile(r"```python runnable\n(.*?)```", re.DOTALL)


def _runnable_pages() -> list[Path]:
    return [page for page in PAGES if _RUNNABLE.search(page.read_text())]


def test_some_pages_have_runnable_examples() -> None:
    assert {p.name for p in _runnable_pages()} >= {"quickstart.md", "audit-records.md"}


@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: p.name)
def test_runnable_blocks_run(page: Path) -> None:
    """Every block marked `python runnable` runs, in order, sharing one namespace per page."""
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(_RUNNABLE.findall(page.read_text()), start=1):
        try:
            exec(compile(block, f"{page.name} block {number}", "exec"), namespace)  # noqa: S102 - the docs are ours
        except Exception as error:
            raise AssertionError(f"{page.name}, runnable block {number} failed: {error!r}") from error


def test_api_reference_is_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_api_docs.py"), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_configuration_page_names_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    own = inspect.get_annotations(ConfSpecChatModel)
    missing = [name for name in own if name in ConfSpecChatModel.model_fields and f"`{name}`" not in page]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES if p.parent.name == "docs" and f"docs/{p.name}" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_OUTSIDE = re.compile(r"(?<![\w.])\.\./[\w./-]+")


def test_the_docs_cite_only_what_a_clone_has() -> None:
    """Every relative link resolves inside the repository, and no page names a path above it:
    a fact the docs use lives in docs/ or benchmarks/, with the command that measured it."""
    for page in [*PAGES, *EXAMPLES, *(ROOT / "benchmarks").glob("*.py")]:
        text = page.read_text()
        assert not _OUTSIDE.findall(text), f"{page.name} names paths outside the repository: {_OUTSIDE.findall(text)}"
        for target in _LINK.findall(text) if page.suffix == ".md" else []:
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page.name} links {target}, which a clone lacks"


# A demo question as the pair was trained on them: a story (a start, operations, the question)
# or a bare expression.
_DEMO_QUESTION = re.compile(
    r"[A-Z][a-z]+ has \d+ [a-z]+\. [^\"'\n]*?How many [a-z]+ does [A-Z][a-z]+ have now\?|What is [\d +*()-]+\?"
)
_OPERATION = re.compile(
    r"(?:(?:gets|finds|buys) (?P<add>\d+) more|(?:gives away|loses|sells) (?P<sub>\d+)"
    r"|has (?P<mul>twice|three times|\d+ times) as many)\."
)


def _solve(question: str) -> tuple[int, int]:
    """The right answer to a demo question and how many operations it has."""
    if question.startswith("What is "):
        expression = question.removeprefix("What is ").removesuffix("?")
        return eval(expression, {"__builtins__": {}}), len(re.findall(r"[-+*]", expression))  # digits and + - * ( ) only
    value = int(re.match(r"[A-Z][a-z]+ has (\d+)", question)[1])  # type: ignore[index]
    operations = list(_OPERATION.finditer(question))
    for op in operations:
        if op["add"]:
            value += int(op["add"])
        elif op["sub"]:
            value -= int(op["sub"])
        else:
            value *= {"twice": 2, "three times": 3}.get(op["mul"]) or int(op["mul"].split()[0])
    return value, len(operations)


def test_every_demo_question_in_the_docs_and_examples_is_in_domain_and_answered_right() -> None:
    """Examples show the pair at work on what it was trained for (stories of one to four
    operations, expressions of one to three, docs/model-card.md), so every answer they show
    is right; they include a bare expression and the shortest and longest stories."""
    questions = {q: path.name for path in [*PAGES, *EXAMPLES] for q in _DEMO_QUESTION.findall(path.read_text())}
    solved = {q: _solve(q) for q in questions}
    kinds = {(q.startswith("What is "), operations) for q, (_, operations) in solved.items()}
    assert {(True, 1), (False, 1), (False, 4)} <= kinds and len(questions) >= 8
    model = ConfSpecChatModel.demo(max_tokens=128)
    for question, source in questions.items():
        expected, operations = solved[question]
        most = 3 if question.startswith("What is ") else 4
        assert 1 <= operations <= most, f"{source}: {question!r} has {operations} operation(s), outside the demo's domain"
        answer = extract_answer(str(model.invoke(question).content))
        assert answer == str(expected), f"{source}: {question!r} answered {answer}, not {expected}"
