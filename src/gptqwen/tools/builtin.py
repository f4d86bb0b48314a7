"""The built-in tools — `calculator` (exact arithmetic, no code execution) and `python` (the sandbox) — and
`load_toolbox`, which turns the CLI's `--tools calculator,python,my_tools.py` into a `Toolbox`.

    box = load_toolbox("calculator,python")
    box.call("calculator", {"expression": "4821 * 37"})    # ('178377', True)
    box.call("python", {"code": "import math; math.factorial(20)"})
"""

from __future__ import annotations

import ast
import math
import operator

from gptqwen.errors import UserError
from gptqwen.tools.registry import Tool, Toolbox, functions_from_file
from gptqwen.tools.sandbox import Limits, Session

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
          "floor": math.floor, "ceil": math.ceil, "sin": math.sin, "cos": math.cos, "tan": math.tan}
_CONSTS = {"pi": math.pi, "e": math.e}
_MAX_DIGITS = 4000  # results beyond this many digits are refused (10**10**10 would never finish)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) * math.log10(max(abs(a), 2)) > _MAX_DIGITS:
            raise ValueError(f"the result of {a} ** {b} would be too large")
        if isinstance(node.op, ast.Mult) and isinstance(a, int) and isinstance(b, int) and \
                len(str(abs(a))) + len(str(abs(b))) > _MAX_DIGITS:
            raise ValueError("the result would be too large")
        return _BINARY[type(node.op)](a, b)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise ValueError(f"unsupported expression element '{ast.unparse(node)}'; use numbers, + - * / // % **, "
                     f"parentheses and {', '.join(_FUNCS)}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: e.g. "4821 * 37 - 12" (+ - * / // % **, parentheses, sqrt, log, exp, abs, round)
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from e
    value = _eval(tree)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


class PythonTool:
    """The `python` tool: one sandbox session per toolbox, so variables persist across calls of a conversation."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.session = Session(limits or Limits(timeout_s=10))

    def __call__(self, code: str) -> str:
        return self.session.run(code).as_text() or "(no output)"

    def close(self) -> None:
        self.session.close()


def python_tool(limits: Limits | None = None) -> Tool:
    params = {"type": "object", "required": ["code"], "properties": {
        "code": {"type": "string", "description": "Python code; what it prints (and the last expression's value) "
                                                  "is returned; variables persist between calls"}}}  # fmt: skip
    return Tool("python", "Run Python code in a sandboxed interpreter (no network, private files).", params,
                PythonTool(limits))


BUILTIN = {"calculator": lambda: Tool.from_function(calculator), "python": python_tool}


def load_toolbox(spec: str | list[str]) -> Toolbox:
    """`calculator,python,tools.py` -> a Toolbox (built-in names, or .py files whose public functions become tools)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise UserError("no tools named; give e.g. --tools calculator,python or a .py file of functions")
    box = Toolbox()
    for name in names:
        if name.endswith(".py"):
            for t in functions_from_file(name):
                box.add(t)
        elif name in BUILTIN:
            box.add(BUILTIN[name]())
        else:
            raise UserError(f"unknown tool '{name}'; built-in tools are {', '.join(BUILTIN)}, or give a .py file")
    return box
