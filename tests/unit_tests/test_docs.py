"""The documentation stays true: runnable examples run, the reference matches the code."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_confspec import ConfSpecChatModel

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
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
