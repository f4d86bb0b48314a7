"""`gptqwen chat`: interactive multi-turn chat with streaming, thinking mode and a thinking budget.

    gptqwen chat --model SmolLM2-135M-Instruct.Q4_1.gguf
    printf 'Hi!\\n/budget 32\\nWhat is 2+2?\\n' | gptqwen chat --model qwen3-dir --temperature 0

    gptqwen chat --model runs/tools/sft --tools calculator,python,my_tools.py [--agent function|react|tir]
    gptqwen chat --model runs/qwen-vl-tiny/all --image chart.png     # a vision-language model (gptqwen vl)

Thinking streams dimmed and collapses to one line when the answer starts (`/show` expands the last one).
With --tools each turn runs the tool loop (`gptqwen.tools`): tool calls and their results are shown as they
happen (`--agent react` uses Thought/Action/Observation text, `--agent tir` runs ```python blocks).
Commands: /think, /no_think (thinking on/off), /budget N | /budget off, /system TEXT, /show, /reset,
/image FILE (goes with the next message; --image FILE does so for the first), /help, /exit. Ctrl-C stops
the current answer and keeps the session; Ctrl-D (or end of input) leaves.
At a terminal the prompt has line editing and history (readline, where Python has it): the arrow keys recall
earlier lines, also from earlier sessions ($GPTQWEN_CACHE/chat_history, default ~/.cache/gptqwen).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gptqwen.commands.engine_options import (
    add_model_arguments,
    add_sampling_arguments,
    engine_from_args,
    sampling_from_args,
)
from gptqwen.errors import UserError
from gptqwen.tools.styles import STYLES, ToolUse

HELP = ("/think  /no_think  thinking on / off      /budget N | off   cap thinking at N tokens\n"
        "/system TEXT       set the system message /show             expand the last thinking\n"
        "/reset             forget the conversation /exit             leave (or Ctrl-D)\n"
        "/image FILE        send an image with the next message (a vision-language model)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--no-think", action="store_true", help="start with thinking off")
    p.add_argument("--thinking-budget", type=int, default=None, help="cap thinking at N tokens")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image to send with the first message (repeatable; a vision-language model)")
    add_tool_arguments(p)
    add_model_arguments(p)
    add_sampling_arguments(p)


def add_tool_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tools")
    g.add_argument("--tools", default=None,
                   help="run the tool loop with these tools: built-in calculator, python (the sandbox), or .py files "
                        "whose public functions become tools; comma-separated")
    g.add_argument("--agent", choices=STYLES, default="function",
                   help="function: the model's <tool_call> format; react: Thought/Action/Observation; "
                        "tir: ```python blocks run as they are written")
    g.add_argument("--max-steps", type=int, default=8, help="model turns (tool rounds) per answer")


def tool_use_from_args(args: argparse.Namespace) -> ToolUse | None:
    if args.tools is None and args.agent != "tir":
        return None
    return ToolUse(args.tools, args.agent, args.max_steps)


def show_tool_events(events, console) -> object:
    """Print an agent's events (content streamed, reasoning dimmed, tool calls and results as lines); the result."""
    result, fresh = None, True
    for ev in events:
        if ev.kind in ("content", "reasoning"):
            text = ev.text.lstrip() if fresh else ev.text
            fresh = fresh and not text
            console.print(text, end="", markup=False, highlight=False, style="dim" if ev.kind == "reasoning" else None)
        elif ev.kind == "tool_call":
            fn = ev.call["function"]
            console.print(f"\n[cyan]→ {fn['name']}({fn['arguments']})[/cyan]", highlight=False)
        elif ev.kind == "tool_result":
            console.print(ev.text, style="dim", markup=False, highlight=False)
            fresh = True
        elif ev.kind == "error":
            console.print(f"\n[red]{ev.text}[/red]", highlight=False)
        else:
            result = ev.result
    console.print()
    return result


class Session:
    """The conversation and its settings; `command()` handles slash commands."""

    def __init__(self, system: str | None, thinking: bool, budget: int | None) -> None:
        self.system, self.thinking, self.budget = system, thinking, budget
        self.history: list[dict] = []
        self.last_reasoning = ""
        self.images: list[str] = []  # image files waiting for the next user message

    def user_message(self, text: str) -> dict:
        """The next user turn: the text, then the waiting images (OpenAI content parts) — the order `gptqwen vl train`
        trains on (the question first, so the image tokens can attend to it: `vision.data.Item.messages`)."""
        if not self.images:
            return {"role": "user", "content": text}
        parts = [{"type": "image_url", "image_url": {"url": path}} for path in self.images]
        self.images = []
        return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def command(self, line: str, console) -> bool:
        """Apply a slash command; False means leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/think":
            self.thinking = True
        elif name == "/no_think":
            self.thinking = False
        elif name == "/budget":
            if arg in ("", "off", "none"):
                self.budget = None
            elif arg.isdigit() and int(arg) > 0:
                self.budget = int(arg)
            else:
                console.print("[red]usage: /budget N (a positive number of tokens) or /budget off[/red]")
                return True
        elif name == "/reset":
            self.history.clear()
        elif name == "/system":
            self.system = arg or None
        elif name == "/image":
            if not Path(arg).expanduser().is_file():
                console.print(f"[red]usage: /image FILE (no file '{arg}')[/red]", markup=False)
                return True
            self.images.append(str(Path(arg).expanduser()))
            console.print(f"[dim]{len(self.images)} image(s) go with your next message[/dim]")
            return True
        elif name == "/show":
            console.print(self.last_reasoning or "(no thinking yet)", style="dim", markup=False)
            return True
        else:
            console.print(HELP, markup=False)
            return True
        budget = self.budget if self.budget is not None else "off"
        console.print(f"[dim]thinking {'on' if self.thinking else 'off'}, budget {budget}"
                      f"{', conversation cleared' if name == '/reset' else ''}[/dim]")
        return True


def thought_line(thinking_tokens: int, budget_hit: bool) -> str:
    """The one line a collapsed think block shows: the model's own thinking tokens (not the stop text the engine
    feeds in when the budget cuts the block)."""
    return f"▸ thought for {thinking_tokens} tokens{', budget reached' if budget_hit else ''} (/show to expand)"


def _answer(engine, session: Session, params, console) -> None:
    """Stream one assistant turn; Ctrl-C stops it and keeps what was said so far."""
    from rich.live import Live
    from rich.text import Text

    reasoning, content, result, live, last = "", "", None, None, None

    def collapse() -> None:
        nonlocal live
        if live is not None:
            live.stop()
            live = None
            console.print(f"[dim]{thought_line(last.thinking_tokens, last.budget_hit)}[/dim]")

    stream = engine.stream_chat(session.messages(), enable_thinking=session.thinking,
                                thinking_budget=session.budget, params=params)
    try:
        for d in stream:
            last = d
            if d.kind == "reasoning":
                reasoning += d.text
                if live is None:
                    live = Live(console=console, transient=True, auto_refresh=False)
                    live.start()
                live.update(Text(reasoning.strip()[-2000:], style="dim"), refresh=True)
            elif d.kind == "content":
                collapse()
                piece = d.text.lstrip() if not content else d.text
                content += d.text
                console.print(piece, end="", markup=False, highlight=False)
            else:
                result = d.result
    except KeyboardInterrupt:
        stream.close()
        console.print("[dim] [stopped][/dim]", end="")
    finally:
        collapse()
    console.print()
    session.last_reasoning = reasoning.strip()
    answer = result.content if result is not None else content.strip()
    turn = {"role": "assistant", "content": answer}
    if session.last_reasoning:
        turn["reasoning_content"] = session.last_reasoning
    session.history.append(turn)


def _answer_with_tools(engine, session: Session, params, console, tools: ToolUse) -> None:
    events = tools.stream(engine, session.messages(), enable_thinking=session.thinking,
                          thinking_budget=session.budget, params=params)
    try:
        result = show_tool_events(events, console)
    except KeyboardInterrupt:
        events.close()
        console.print("[dim] [stopped][/dim]")
        return
    except UserError as e:  # e.g. the conversation outgrew the context: say so, keep the session
        console.print(f"\n[red]error: {e}[/red]", highlight=False)
        session.history.pop()
        return
    session.history.extend(tools.history_messages(result))


def start_history() -> Callable[[], None]:
    """Turn on readline editing with the saved history; returns the function that saves it (a no-op without readline)."""
    try:
        import readline  # stdlib, but absent on Windows and some minimal builds: then plain input()
    except ImportError:
        return lambda: None
    path = Path(os.environ.get("GPTQWEN_CACHE", Path.home() / ".cache" / "gptqwen")) / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:  # the first session (no file yet) or an unreadable one
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:  # a read-only home: the session worked, only its history is not kept
            pass

    return save


def _prompt(console) -> str:
    """`you> ` in bold cyan for input(); readline needs the colour codes wrapped in \001..\002 to measure the line."""
    if not console.is_terminal or console.no_color:
        return "you> "
    return "\001\033[1;36m\002you>\001\033[0m\002 "


def _read(console, interactive: bool) -> str | None:
    try:
        if interactive:
            return input(_prompt(console))
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.thinking_budget is not None and args.thinking_budget < 1:
        raise UserError("--thinking-budget must be a positive number of tokens")
    console = Console(highlight=False)
    params = sampling_from_args(args)
    tools = tool_use_from_args(args)  # before loading the model: a bad --tools fails fast
    session = Session(args.system, not args.no_think, args.thinking_budget)
    for path in args.image:  # fail before loading the model
        if not Path(path).expanduser().is_file():
            raise UserError(f"--image '{path}' does not exist")
        session.images.append(str(Path(path).expanduser()))
    try:
        return _loop(engine_from_args(args), session, params, console, tools, args.model)
    finally:
        if tools is not None:
            tools.close()


def _loop(engine, session: Session, params, console, tools: ToolUse | None, model: str) -> int:
    interactive = sys.stdin.isatty()
    save_history = start_history() if interactive else lambda: None
    if interactive:
        extra = f" with tools {', '.join(tools.toolbox.tools)} ({tools.style})" if tools else ""
        console.print(f"[dim]chatting with {model}{extra}; /help for commands, Ctrl-D to leave[/dim]")
    try:
        _turns(engine, session, params, console, tools, interactive)
    finally:
        save_history()
    return 0


def _turns(engine, session: Session, params, console, tools: ToolUse | None, interactive: bool) -> None:
    from rich.markup import escape

    while True:
        try:
            line = _read(console, interactive)
        except KeyboardInterrupt:
            console.print("\n[dim](Ctrl-D or /exit to leave)[/dim]")
            continue
        if line is None:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/") and line.split()[0] in ("/think", "/no_think", "/budget", "/reset", "/system",
                                                       "/show", "/help", "/exit", "/quit", "/image"):
            if not session.command(line, console):
                break
            continue
        session.history.append(session.user_message(line))
        if not interactive:
            console.print(f"[bold cyan]you>[/bold cyan] {escape(line)}")
        console.print("[bold green]assistant>[/bold green] ", end="")
        if tools is not None:
            _answer_with_tools(engine, session, params, console, tools)
        else:
            _answer(engine, session, params, console)
