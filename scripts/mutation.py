"""Mutation testing of the method's core: does a one-token bug in it fail a test?

    python scripts/mutation.py [--modules gate,records] [--budget 3600] [--per-module 40] [--seed 0] [--lines 47,110]

Each mutant changes one operator or constant in one core module (a comparison turned round,
`+` for `-`, `and` for `or`, `min` for `max`, `True` for `False`, a number off by one), is
written over the module, and the tests that cover that module run against it (`pytest -x`,
in a fresh process). A mutant is killed when they fail; it survives when they pass. The
original file is put back after each mutant, and on Ctrl-C.

Prints the score per module and every survivor (file, line, change), which docs/testing.md
keeps with the reason each remaining survivor is harmless (an equivalent mutant). Too slow
for CI: a full run takes about an hour on a 2-core CPU (`--budget` stops it in time, and
`--per-module` samples that many mutants per module with `--seed`).
"""

from __future__ import annotations

import argparse
import ast
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "langchain_confspec"
TESTS = ROOT / "tests" / "unit_tests"

# Each core module and the tests that state what it does.
COVERAGE = {
    "gate": ["test_method_core.py", "test_verification.py"],
    "verification": ["test_verification.py", "test_method_core.py"],
    "speculation": ["test_token_speculation.py", "test_method_core.py"],
    "decoding": ["test_decoding.py", "test_text_rules.py", "test_sampling.py", "test_seeded_rewrites.py", "test_real_tokenizers.py"],
    "answer_text": ["test_text_rules.py", "test_streaming.py", "test_real_tokenizers.py"],
    "records": ["test_method_core.py", "test_audit.py"],
    "session": ["test_session.py"],  # rollback
}

def source_of(module: str) -> Path:
    """The file of a core module, wherever its layer keeps it (`gate` is `engine/gate.py`)."""
    found = [path for path in PACKAGE.rglob(f"{module}.py") if "demo" not in path.parts]
    if len(found) != 1:
        raise SystemExit(f"no single module named {module!r} in the package: {found}")
    return found[0]


_SWAPS: dict[type, type] = {
    ast.GtE: ast.Lt, ast.Lt: ast.GtE, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.Div: ast.Mult,
    ast.And: ast.Or, ast.Or: ast.And,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    change: str
    source: str


class _Mutator(ast.NodeTransformer):
    """Applies the `target`-th possible change of a tree (counting them all when `target` is -1)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = 0
        self.change: tuple[int, str] | None = None

    def _hit(self, node: ast.AST, change: str) -> bool:
        hit = self.seen == self.target
        if hit:
            self.change = (getattr(node, "lineno", 0), change)
        self.seen += 1
        return hit

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            swap = _SWAPS.get(type(op))
            if swap and self._hit(node, f"{type(op).__name__} -> {swap.__name__}"):
                node.ops[i] = swap()
        return node

    def _swap_operator(self, node: ast.BinOp | ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        swap = _SWAPS.get(type(node.op))
        if swap and self._hit(node, f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()  # type: ignore[assignment]
        return node

    visit_BinOp = visit_BoolOp = _swap_operator

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._hit(node, "not dropped"):
            return node.operand
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            other = "max" if node.func.id == "min" else "min"
            if self._hit(node, f"{node.func.id} -> {other}"):
                node.func = ast.Name(other, ast.Load())
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, bool):
            if self._hit(node, f"{node.value} -> {not node.value}"):
                return ast.Constant(not node.value)
        elif isinstance(node.value, int) and self._hit(node, f"{node.value} -> {node.value + 1}"):
            return ast.Constant(node.value + 1)
        return node


def _functions_only(tree: ast.Module) -> list[ast.AST]:
    """Module-level functions and methods: where behaviour lives (not constants, defaults or
    docs); a function nested in one is mutated as part of it."""
    functions = ast.FunctionDef | ast.AsyncFunctionDef
    found = [n for n in tree.body if isinstance(n, functions)]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        found += [n for n in cls.body if isinstance(n, functions)]
    return found


def mutants(module: str) -> list[Mutant]:
    path = source_of(module)
    original = path.read_text()
    count = _Mutator(-1)
    for function in _functions_only(ast.parse(original)):
        for statement in function.body:  # type: ignore[attr-defined]
            count.visit(statement)
    found = []
    for target in range(count.seen):
        tree = ast.parse(original)
        mutator = _Mutator(target)
        for function in _functions_only(tree):
            function.body = [mutator.visit(s) for s in function.body]  # type: ignore[attr-defined]
        if mutator.change is not None:
            line, change = mutator.change
            found.append(Mutant(module, line, change, ast.unparse(tree)))
    return found


def killed(mutant: Mutant, timeout: float) -> bool:
    path = source_of(mutant.module)
    original = path.read_text()
    try:
        path.write_text(mutant.source)
        tests = [str(TESTS / name) for name in COVERAGE[mutant.module]]
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        try:
            return subprocess.run(command, check=False, cwd=ROOT, capture_output=True, timeout=timeout).returncode != 0
        except subprocess.TimeoutExpired:
            return True  # a mutant that hangs the tests is caught
    finally:
        path.write_text(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(COVERAGE), help="comma-separated, of: " + ", ".join(COVERAGE))
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds; modules not reached are reported as such")
    parser.add_argument("--per-module", type=int, default=0, help="sample this many mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for one mutant's tests")
    parser.add_argument("--lines", default="", help="only the mutants on these lines, e.g. 47,110: survivors re-run after new tests")
    args = parser.parse_args()
    started = time.monotonic()
    rows, survivors = [], []
    for module in args.modules.split(","):
        found = mutants(module)
        if args.lines:
            found = [m for m in found if str(m.line) in args.lines.split(",")]
        if args.per_module and len(found) > args.per_module:
            found = sorted(random.Random(args.seed).sample(found, args.per_module), key=lambda m: m.line)
        done = dead = 0
        for mutant in found:
            if time.monotonic() - started > args.budget:
                break
            done += 1
            if killed(mutant, args.timeout):
                dead += 1
            else:
                survivors.append(mutant)
                print(f"survived: {module}.py:{mutant.line}: {mutant.change}", flush=True)
        rows.append((module, len(found), done, dead))
        print(f"{module}: {dead} of {done} killed ({len(found)} mutants)", flush=True)
    print("\n| module | mutants | run | killed | score |\n|---|---|---|---|---|")
    for module, total, done, dead in rows:
        print(f"| {module} | {total} | {done} | {dead} | {dead / done:.0%} |" if done else f"| {module} | {total} | 0 | - | - |")
    print(f"\n{len(survivors)} survivors, {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
