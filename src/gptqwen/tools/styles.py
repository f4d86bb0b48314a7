"""One entry point for the three ways a model uses tools, as `gptqwen chat/generate --tools` run them.

    with ToolUse("calculator,python", style="function") as tu:       # function | react | tir
        for ev in tu.stream(engine, messages, params=params):         # AgentEvents, the last one "done"
            ...
        history += tu.history_messages(ev.result)

* function — the model's own `<tool_call>` format (`agent.py`);
* react — Thought / Action / Observation in the text (`react.py`);
* tir — ```python blocks run by the sandbox as the model writes them (`tir.py`; the python session only).

`Engine.chat(..., tools=[...])` renders the tools and parses the calls of one turn; running them, in a loop,
is this module's job (the engine sits below the tools in the dependency order).
"""

from __future__ import annotations

from collections.abc import Iterator

from gptqwen.errors import UserError
from gptqwen.tools import agent, react, tir
from gptqwen.tools.agent import AgentEvent, AgentResult
from gptqwen.tools.builtin import PythonTool, load_toolbox
from gptqwen.tools.sandbox import Session

STYLES = ("function", "react", "tir")


class ToolUse:
    """A toolbox (and, for TIR, a python session) that lives as long as a conversation."""

    def __init__(self, tools: str | list[str] | None, style: str = "function", max_steps: int = 8) -> None:
        if style not in STYLES:
            raise UserError(f"unknown tool-use style '{style}'; choose one of {', '.join(STYLES)}")
        if max_steps < 1:
            raise UserError(f"--max-steps must be at least 1, got {max_steps}")
        self.style, self.max_steps = style, max_steps
        self.toolbox = load_toolbox(tools or ("python" if style == "tir" else ""))
        if style == "tir":
            py = self.toolbox.tools.get("python")
            if py is None:
                raise UserError("--agent tir runs ```python blocks, so it needs the python tool (--tools python)")
            self.session: Session = py.fn.session if isinstance(py.fn, PythonTool) else Session()

    def stream(self, engine, messages: list[dict], **kwargs) -> Iterator[AgentEvent]:
        """`params`, and for the function style `enable_thinking` / `thinking_budget`, pass through."""
        if self.style == "tir":
            kwargs.pop("thinking_budget", None)
            return tir.stream(engine, messages, self.session, max_rounds=self.max_steps, **kwargs)
        if self.style == "react":
            kwargs.pop("thinking_budget", None)
            kwargs.pop("enable_thinking", None)
            return react.stream(engine, messages, self.toolbox, max_steps=self.max_steps, **kwargs)
        return agent.stream(engine, messages, self.toolbox, max_steps=self.max_steps, **kwargs)

    @staticmethod
    def history_messages(result: AgentResult) -> list[dict]:
        """The run's new turns as the chat template takes them back (tool-call arguments decoded)."""
        out = []
        for m in result.messages:
            m = {k: v for k, v in m.items() if k != "react"}
            if m.get("tool_calls"):
                m["tool_calls"] = [agent.template_call(c) for c in m["tool_calls"]]
            out.append(m)
        return out

    def close(self) -> None:
        self.toolbox.close()

    def __enter__(self) -> ToolUse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
