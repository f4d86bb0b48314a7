"""The function-calling loop: render with tools → generate → parse `<tool_call>` blocks → run them → append
`tool` messages → generate again, until the model answers without a call or the step limit is reached.

    from gptqwen.tools import agent
    from gptqwen.tools.builtin import load_toolbox
    box = load_toolbox("calculator,python")
    res = agent.run(engine, [{"role": "user", "content": "What is 4821 * 37?"}], box)
    res.content, res.messages, res.tool_calls
    for ev in agent.stream(engine, messages, box):    # AgentEvent: reasoning / content / tool_call / tool_result / error / done
        ...

Each model turn goes through `Engine.stream_chat` (thinking mode and budget included). Content streams as
it is generated except inside `<tool_call>` blocks; each call is announced (`tool_call` event) the moment
its block closes. Calls run in order; a tool's error, an unknown tool, arguments that do not match the
schema and malformed call JSON all go back to the model as the tool response ("Error: ..."), so the
conversation continues. ReAct is the other style over the same tools (`gptqwen.tools.react`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from gptqwen.infer.sampling import SamplingParams
from gptqwen.tokenizer.qwen_format import parse_tool_calls
from gptqwen.tools.registry import Toolbox

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class AgentResult:
    """A finished agent run. `messages` are the new turns in OpenAI form (tool_calls with ids, JSON-string
    arguments); `tool_calls` logs every call as {"name", "arguments", "result", "ok"}."""

    content: str
    messages: list[dict] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steps: int = 0
    finish_reason: str = "stop"  # stop | length | max_steps
    reasoning_content: str = ""


@dataclass
class AgentEvent:
    """kind: reasoning | content (text) · tool_call (call) · tool_result (call, text) · error (text) · done (result)."""

    kind: str
    text: str = ""
    call: dict | None = None
    result: AgentResult | None = None


class CallWatcher:
    """Splits streamed content into text outside `<tool_call>` blocks and the blocks themselves, as they close."""

    def __init__(self) -> None:
        self.buf = ""
        self.inside = False

    def feed(self, piece: str) -> Iterator[tuple[str, str]]:
        """Yields ("content", text) and ("block", full block text) pieces."""
        self.buf += piece
        while True:
            if self.inside:
                end = self.buf.find(CLOSE)
                if end < 0:
                    return
                block, self.buf, self.inside = self.buf[: end + len(CLOSE)], self.buf[end + len(CLOSE):], False
                yield "block", block
                continue
            at = self.buf.find(OPEN)
            if at >= 0:
                if at:
                    yield "content", self.buf[:at]
                self.buf, self.inside = self.buf[at:], True
                continue
            keep = next((n for n in range(min(len(OPEN) - 1, len(self.buf)), 0, -1) if self.buf.endswith(OPEN[:n])), 0)
            if len(self.buf) > keep:
                yield "content", self.buf[: len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep:]
            return


def template_call(call: dict) -> dict:
    """A call as chat templates take it (decoded arguments), keeping its id."""
    fn = call["function"]
    return {"id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": json.loads(fn["arguments"])}}


def stream(engine, messages: list[dict], toolbox: Toolbox, max_steps: int = 8, params: SamplingParams | None = None,
           enable_thinking: bool = True, thinking_budget: int | None = None) -> Iterator[AgentEvent]:
    """Run the loop (see the module docstring), yielding events; the last one is `done` with the `AgentResult`."""
    history, res = list(messages), AgentResult(content="")
    schemas = toolbox.schemas()
    for step in range(1, max_steps + 1):
        res.steps, watcher, announced, turn = step, CallWatcher(), [], None
        for d in engine.stream_chat(history, tools=schemas, enable_thinking=enable_thinking,
                                    thinking_budget=thinking_budget, params=params):  # fmt: skip
            if d.kind == "reasoning":
                yield AgentEvent("reasoning", d.text)
            elif d.kind == "content":
                for kind, text in watcher.feed(d.text):
                    if kind == "content":
                        yield AgentEvent("content", text)
                    else:
                        _, calls, _ = parse_tool_calls(text)
                        announced += calls
                        yield from (AgentEvent("tool_call", call=c) for c in calls)
            else:
                turn = d.result
        content, calls, errors = parse_tool_calls(turn.text)
        content = content.strip()
        for call, early in zip(calls, announced):  # the ids already shown while streaming
            call["id"] = early["id"]
        yield from (AgentEvent("tool_call", call=c) for c in calls[len(announced):])
        res.reasoning_content, res.errors = turn.reasoning_content, res.errors + errors
        yield from (AgentEvent("error", e) for e in errors)
        reply = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
        res.messages.append(reply)
        if not calls and not errors:
            res.content, res.finish_reason = content, turn.finish_reason
            break
        history.append({**reply, "tool_calls": [template_call(c) for c in calls],
                        **({"reasoning_content": turn.reasoning_content} if turn.reasoning_content else {})})
        for call in calls:
            name, args = call["function"]["name"], call["function"]["arguments"]
            out, ok = toolbox.call(name, args)
            res.tool_calls.append({"name": name, "arguments": args, "result": out, "ok": ok})
            yield AgentEvent("tool_result", out, call=call)
            _both(history, res, {"role": "tool", "tool_call_id": call["id"], "name": name, "content": out})
        if errors:  # malformed calls: tell the model what was wrong, as a tool response it can act on
            out = "Error: " + "; ".join(errors) + '. Write each call as {"name": ..., "arguments": {...}}.'
            yield AgentEvent("tool_result", out)
            _both(history, res, {"role": "tool", "content": out})
    else:
        res.content, res.finish_reason = res.messages[-1]["content"] if res.messages else "", "max_steps"
    yield AgentEvent("done", result=res)


def _both(history: list[dict], res: AgentResult, message: dict) -> None:
    history.append(message)
    res.messages.append(message)


def result_of(events: Iterator[AgentEvent]) -> AgentResult:
    """Consume an event stream; the `AgentResult` of its `done` event."""
    for ev in events:
        if ev.kind == "done":
            return ev.result
    raise AssertionError("the agent loop ended without a result")


def run(engine, messages: list[dict], toolbox: Toolbox, **kwargs) -> AgentResult:
    """`stream` to the end; returns the `AgentResult`."""
    return result_of(stream(engine, messages, toolbox, **kwargs))
