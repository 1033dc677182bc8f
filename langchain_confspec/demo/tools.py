"""The calculator tool the demo pair learned to call, and a safe evaluator behind it."""

from __future__ import annotations

import ast
import operator

from langchain_core.tools import tool

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expression: str) -> int:
    """The value of an integer expression with +, - and * (no names, calls or other syntax)."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(f"Only integers with +, - and * are allowed, not {expression!r}.")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"Not an arithmetic expression: {expression!r}.") from None
    return value(tree.body)


@tool
def calculator(expression: str) -> str:
    """Work out a sum, difference or product, such as 23 * 8."""
    try:
        return str(evaluate(expression))
    except ValueError as error:
        return f"Error: {error}"
