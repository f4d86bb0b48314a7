"""The Qwen chat formats (ChatML with tools and thinking), rendered natively into parts.

`render_qwen3` and `render_qwen25` write, character for character, what transformers renders with
the Qwen3 and Qwen2.5 chat templates (compared in tests/test_chat_template.py against the templates
shipped in `trl`); this module restates their rules in Python rather than copying the jinja:

* a system turn (Qwen2.5: a default one) that also lists the tool signatures when tools are given;
* assistant tool calls as `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks;
* consecutive tool results merged into one user turn of `<tool_response>` blocks;
* Qwen3: reasoning (`reasoning_content`, or a `<think>` block inlined in the content) is shown only
  for assistant turns after the last real user query; the final assistant turn always gets a think
  block (empty when there is no reasoning); `enable_thinking=False` puts an empty think block in the
  generation prompt. The `/think` and `/no_think` soft switches are not touched by the template.

`p` is a `chat._Parts`: `p.template(s)` for text the template writes, `p.data(s)` for text that came
from messages or tools, `p.assistant` marks what the model generates (for SFT masks).

`parse_tool_calls(text)` reads the calls back out of a generated turn (the Hermes format both templates
teach) as OpenAI `tool_calls`; malformed blocks are reported, not raised (as vLLM's hermes parser does).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_TOOLS_INTRO = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n")  # fmt: skip


def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # As in transformers' chat templates: plain json.dumps, no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _content(m: dict) -> str:
    c = m.get("content")
    return c if isinstance(c, str) else ""


def _last_query_index(messages: list[dict]) -> int:
    """Index of the last real user query (tool results wrapped as user turns do not count)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        c = m.get("content")
        if m.get("role") == "user" and isinstance(c, str) and not (
            c.startswith("<tool_response>") and c.endswith("</tool_response>")
        ):
            return i
    return len(messages) - 1


def _tools_system(p, messages: list[dict], tools: list, default_system: str | None) -> None:
    p.template("<|im_start|>system\n")
    first_is_system = bool(messages) and messages[0].get("role") == "system"
    if default_system is None:  # Qwen3: the system prompt, if any, then a blank line
        if first_is_system:
            p.data(messages[0].get("content", ""))
            p.template("\n\n")
        p.template(_TOOLS_INTRO)
    else:  # Qwen2.5: the system prompt or the default one
        if first_is_system:
            p.data(messages[0].get("content", ""))
        else:
            p.template(default_system)
        p.template("\n\n" + _TOOLS_INTRO)
    for tool in tools:
        p.template("\n")
        p.data(tojson(tool))
    p.template(_TOOLS_OUTRO)


def _tool_calls(p, calls: list, content: str, qwen3: bool) -> None:
    for j, call in enumerate(calls):
        if j > 0 or content:
            p.template("\n")
        # Qwen3 unwraps a truthy `function`, Qwen2.5 any `function` key that is present.
        fn = (call.get("function") or call) if qwen3 else (call["function"] if "function" in call else call)
        p.template('<tool_call>\n{"name": "')
        p.data(str(fn.get("name", "")))
        p.template('", "arguments": ')
        args = fn.get("arguments")
        p.data(args if qwen3 and isinstance(args, str) else tojson(args))
        p.template("}\n</tool_call>")


def _tool_response(p, messages: list[dict], i: int, content: str) -> None:
    if i == 0 or messages[i - 1].get("role") != "tool":
        p.template("<|im_start|>user")
    p.template("\n<tool_response>\n")
    p.data(content)
    p.template("\n</tool_response>")
    if i == len(messages) - 1 or messages[i + 1].get("role") != "tool":
        p.template("<|im_end|>\n")


def render_qwen3(p, messages: list[dict], tools, add_generation_prompt: bool, enable_thinking: bool,
                  think_is_prompt: bool = False) -> None:  # fmt: skip
    if tools:
        _tools_system(p, messages, tools, default_system=None)
    elif messages and messages[0].get("role") == "system":
        p.template("<|im_start|>system\n")
        p.data(messages[0].get("content", ""))
        p.template("<|im_end|>\n")
    last_query = _last_query_index(messages)
    for i, m in enumerate(messages):
        role, content = m.get("role"), _content(m)
        if role == "user" or (role == "system" and i > 0):
            p.template(f"<|im_start|>{role}\n")
            p.data(content)
            p.template("<|im_end|>\n")
        elif role == "assistant":
            reasoning = m.get("reasoning_content")
            if not isinstance(reasoning, str):
                reasoning = ""
                if "</think>" in content:  # reasoning inlined in the content
                    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                    content = content.split("</think>")[-1].lstrip("\n")
            p.template("<|im_start|>assistant\n")
            p.assistant = True
            # Reasoning is shown only for turns after the last user query (the current tool-use loop).
            if i > last_query and (i == len(messages) - 1 or reasoning):
                p.assistant = not (think_is_prompt and not reasoning)
                p.template("<think>\n")
                p.data(reasoning.strip("\n"))
                p.template("\n</think>\n\n")
                p.assistant = True
                p.data(content.lstrip("\n"))
            else:
                p.data(content)
            _tool_calls(p, m.get("tool_calls") or [], content, qwen3=True)
            p.template("<|im_end|>")
            p.assistant = False
            p.template("\n")
        elif role == "tool":
            _tool_response(p, messages, i, content)
    if add_generation_prompt:
        p.template("<|im_start|>assistant\n")
        if enable_thinking is False:
            p.template("<think>\n\n</think>\n\n")


def render_qwen25(p, messages: list[dict], tools, add_generation_prompt: bool, **_: Any) -> None:
    if tools:
        _tools_system(p, messages, tools, default_system=QWEN25_DEFAULT_SYSTEM)
    elif messages and messages[0].get("role") == "system":
        p.template("<|im_start|>system\n")
        p.data(messages[0].get("content", ""))
        p.template("<|im_end|>\n")
    else:
        p.template(f"<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n")
    for i, m in enumerate(messages):
        role, calls = m.get("role"), m.get("tool_calls")
        if role == "user" or (role == "system" and i > 0) or (role == "assistant" and not calls):
            p.template(f"<|im_start|>{role}\n")
            p.assistant = role == "assistant"
            p.data(str(m.get("content", "")))
            p.template("<|im_end|>")
            p.assistant = False
            p.template("\n")
        elif role == "assistant":
            content = str(m.get("content") or "")
            p.template("<|im_start|>assistant\n")  # one newline, before the content or the first call
            p.assistant = True
            p.data(content)
            _tool_calls(p, calls, content, qwen3=False)
            p.template("<|im_end|>")
            p.assistant = False
            p.template("\n")
        elif role == "tool":
            _tool_response(p, messages, i, str(m.get("content", "")))
    if add_generation_prompt:
        p.template("<|im_start|>assistant\n")


NATIVE = {"qwen3": render_qwen3, "qwen2.5": render_qwen25}


# A closed block, or one left open at the end of the text (generation stopped inside it).
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(?!.*<tool_call>)(.*)\Z", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str, list[dict], list[str]]:
    """Split generated assistant text into (content, tool_calls, errors).

    Each `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block becomes an OpenAI tool call
    `{"id": "call_...", "type": "function", "function": {"name": str, "arguments": JSON string}}`, in order.
    A block whose JSON does not parse, or that names no function, stays in the content and is described in
    `errors` (nothing raises). The content is the text with the parsed blocks removed, stripped."""
    calls: list[dict] = []
    errors: list[str] = []

    def take(m: re.Match) -> str:
        closed = m.group(1) is not None
        body = (m.group(1) if closed else m.group(2)).strip()
        try:
            call = json.loads(body)
        except ValueError as e:
            errors.append(f"tool call {len(calls) + len(errors) + 1}: invalid JSON ({e.msg} at char {e.pos})"
                          + ("" if closed else "; the block was not closed"))  # fmt: skip
            return m.group(0)
        name = call.get("name") if isinstance(call, dict) else None
        if not isinstance(name, str) or not name:
            errors.append(f"tool call {len(calls) + len(errors) + 1}: no function name (expected "
                          '{"name": ..., "arguments": {...}})')
            return m.group(0)
        args = call.get("arguments", call.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments already encoded
            try:
                args = json.loads(args)
            except ValueError:
                pass
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": name, "arguments": tojson(args)}})
        return ""

    content = _TOOL_CALL_RE.sub(take, text)
    return (content.strip() if calls else content), calls, errors
