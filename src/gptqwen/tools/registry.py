"""Tools from Python callables: OpenAI function schemas from type hints and docstrings, checked calls.

    from gptqwen.tools.registry import Tool, Toolbox

    def get_weather(city: str, unit: str = "celsius") -> str:
        '''Current weather of a city.

        Args:
            city: the city's name
            unit: "celsius" or "fahrenheit"
        '''
    box = Toolbox([get_weather])
    box.schemas()   # [{"type": "function", "function": {"name": "get_weather", "description": ..., "parameters": ...}}]
    box.call("get_weather", '{"city": "Oslo"}')   # the tool's result as text; errors come back as text too

Parameters map to JSON Schema (str, int, float, bool, list[...], dict, Literal[...], Optional[...]); their
descriptions come from a Google-style `Args:` section or `:param name:` lines. A call is checked against the
schema (unknown, missing and mistyped arguments) before the function runs; whatever goes wrong — bad JSON,
an unknown tool, a bad argument, an exception inside the tool — becomes an "Error: ..." text for the model,
so a conversation never stops on a tool.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptqwen.errors import UserError, closest

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}
_PY_CHECK = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}


def _schema_of(hint: Any) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"type": _JSON_TYPES.get(type(args[0]), "string"), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _schema_of(rest[0]) if len(rest) == 1 else {"anyOf": [_schema_of(a) for a in rest]}
    if origin in (list, tuple, set, Iterable):
        return {"type": "array", **({"items": _schema_of(args[0])} if args else {})}
    if origin is dict:
        return {"type": "object"}
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    return {}  # Any or unknown: no constraint


def _doc_params(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a docstring with a Google-style `Args:` section or reST
    `:param x:` lines; the description is the text before the first section."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section, current, indent = None, None, None
    for line in inspect.cleandoc(doc or "").splitlines():
        text, depth = line.strip(), len(line) - len(line.lstrip())
        if depth == 0 and re.fullmatch(r"[A-Z][A-Za-z ]*:", text):  # Args:, Returns:, Raises: ...
            section, current, indent = text[:-1].lower(), None, None
            continue
        rest = re.match(r":param\s+(?:\w+\s+)?(\w+):\s*(.*)", text)
        if rest:
            section, current = "rest", rest.group(1)
            params[current] = rest.group(2)
        elif section is None:
            summary.append(text)
        elif section in ("args", "arguments", "parameters") and text:
            named = re.match(r"(\w+)\s*(?:\([^)]*\))?:\s*(.*)", text)
            indent = depth if indent is None else indent
            if named and depth == indent:
                current = named.group(1)
                params[current] = named.group(2)
            elif current:
                params[current] += " " + text
        elif section == "rest" and current and text and depth > 0:
            params[current] += " " + text
    return " ".join(" ".join(summary).split()), params


@dataclass
class Tool:
    """A callable with its OpenAI function schema."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None) -> Tool:
        summary, docs = _doc_params(fn.__doc__ or "")
        hints = typing.get_type_hints(fn)
        props, required = {}, []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            prop = _schema_of(hints.get(p.name, Any))
            if p.name in docs:
                prop["description"] = docs[p.name]
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
            props[p.name] = prop
        params = {"type": "object", "properties": props, "required": required}
        return cls(name or fn.__name__, summary or f"the {fn.__name__} function", params, fn)

    def schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def check(self, args: dict) -> str | None:
        """Why `args` do not fit the schema, or None."""
        props = self.parameters.get("properties", {})
        unknown = [k for k in args if k not in props]
        if unknown:
            return f"unknown argument(s) {', '.join(unknown)} for {self.name}; it takes {', '.join(props) or 'none'}"
        missing = [k for k in self.parameters.get("required", []) if k not in args]
        if missing:
            return f"missing required argument(s) {', '.join(missing)} for {self.name}"
        for k, v in args.items():
            want = props[k].get("type")
            ok = _PY_CHECK.get(want)
            if ok is not None and (not isinstance(v, ok) or (want in ("integer", "number") and isinstance(v, bool))):
                return f"argument {k} of {self.name} must be a {want}, got {type(v).__name__} {json.dumps(v)[:40]}"
            if "enum" in props[k] and v not in props[k]["enum"]:
                return f"argument {k} of {self.name} must be one of {props[k]['enum']}, got {v!r}"
        return None


class Toolbox:
    """Named tools the agent may call; `call` turns every failure into an error text for the model."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool | Callable[..., Any]) -> Tool:
        t = tool if isinstance(tool, Tool) else Tool.from_function(tool)
        if t.name in self.tools:
            raise UserError(f"two tools are named '{t.name}'; tool names must be unique")
        self.tools[t.name] = t
        return t

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def call(self, name: str, arguments: str | dict) -> tuple[str, bool]:
        """(result text, ok). Never raises for what the model asked: errors are the result, with ok False."""
        tool = self.tools.get(name)
        if tool is None:
            return f"Error: unknown tool '{name}'.{closest(name, self.tools)} Available: {', '.join(self.tools)}", False
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError as e:
                return f"Error: the arguments of {name} are not valid JSON ({e.msg})", False
        if not isinstance(arguments, dict):
            return f"Error: the arguments of {name} must be a JSON object", False
        problem = tool.check(arguments)
        if problem:
            return f"Error: {problem}", False
        try:
            out = tool.fn(**arguments)
        except Exception as e:  # noqa: BLE001 - a failing tool is reported to the model, which may try again
            return f"Error: {name} raised {type(e).__name__}: {e}", False
        return out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, default=str), True

    def close(self) -> None:
        """Release what tools hold (e.g. the python tool's sandbox session)."""
        for t in self.tools.values():
            closer = getattr(t.fn, "close", None)
            if callable(closer):
                closer()


def functions_from_file(path: str | Path) -> list[Tool]:
    """The public functions defined in a Python file, as tools (`gptqwen chat --tools my_tools.py`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tool file {path} does not exist; give a .py file that defines the tool functions")
    spec = importlib.util.spec_from_file_location(f"gptqwen_user_tools_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"could not load tools from {path}: {type(e).__name__}: {e}") from e
    fns = [f for n, f in vars(module).items()
           if inspect.isfunction(f) and f.__module__ == module.__name__ and not n.startswith("_")]
    if not fns:
        raise UserError(f"{path} defines no public functions to use as tools")
    return [Tool.from_function(f) for f in fns]
