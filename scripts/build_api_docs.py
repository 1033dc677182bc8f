"""Write docs/api.md, the API reference, from the package's docstrings and signatures.

    python scripts/build_api_docs.py            # rewrite docs/api.md
    python scripts/build_api_docs.py --check    # exit 1 if docs/api.md is out of date

A test runs the check, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import langchain_confspec

OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"
# Public names beyond the package's __all__: module, names.
EXTRA = {
    "langchain_confspec.audit.log": ["RotatingJsonLines", "audit_files"],
    "langchain_confspec.audit.report": ["render_report", "estimated_time_saved"],
    "langchain_confspec.engine.constrained": ["compile_schema", "tool_call_plan", "write_json"],
    "langchain_confspec.chat_model.tool_calls": ["parse_tool_calls", "ToolCallHoldback"],
    "langchain_confspec.models.prompting": ["render_prompt", "template_abilities"],
    "langchain_confspec.evaluation.harness": ["evaluate", "load_jsonl", "builtin_items", "RunPlan", "EvalReport"],
    "langchain_confspec.demo.agent": ["run_tool_loop"],
    "langchain_confspec.demo.tools": ["calculator", "evaluate"],
}


def _signature(name: str, obj: Any) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _fields(model: type[BaseModel]) -> list[str]:
    """The fields the package declares (not those inherited from LangChain or pydantic)."""
    own = {name for cls in model.__mro__ if cls.__module__.startswith("langchain_confspec") for name in inspect.get_annotations(cls)}
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for field_name, field in model.model_fields.items():
        if field_name not in own:
            continue
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        description = " ".join((field.description or "").split())
        cells = [f"`{field_name}`", f"`{annotation}`", f"`{default}`", description]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return rows


def _entry(qualified: str, name: str, obj: Any) -> list[str]:
    lines = [f"### `{qualified}`", ""]
    if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__.startswith("langchain_confspec"):
        lines += [f"`class {name}`", "", (inspect.getdoc(obj) or ""), "", *_fields(obj), ""]
    elif inspect.isclass(obj):
        lines += [f"`class {_signature(name, obj)}`", "", (inspect.getdoc(obj) or ""), ""]
    elif callable(obj):
        lines += [f"`{_signature(name, obj)}`", "", (inspect.getdoc(obj) or ""), ""]
    else:
        lines += [f"`{name} = {obj!r}`", ""]
    return lines


def build() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from docstrings by `python scripts/build_api_docs.py`; do not edit by hand.",
        "",
        "## `langchain_confspec`",
        "",
    ]
    for name in sorted(langchain_confspec.__all__):
        obj = getattr(langchain_confspec, name)
        real_name = getattr(obj, "__name__", name)
        if inspect.isclass(obj) and real_name != name:
            lines += [f"### `langchain_confspec.{name}`", "", f"Another name for `{real_name}`.", ""]
            continue
        lines += _entry(f"langchain_confspec.{name}", name, obj)
    for module_name, names in EXTRA.items():
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", "", inspect.getdoc(module) or "", ""]
        for name in names:
            lines += _entry(f"{module_name}.{name}", name, getattr(module, name))
    text = "\n".join(lines).rstrip() + "\n"
    return re.sub(r"<(function|class) ([\w.]+)(?: at 0x[0-9a-f]+)?>", r"\2", text)  # no memory addresses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = build()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/build_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
