"""`gptqwen chat`: interactive multi-turn chat with streaming, thinking mode and a thinking budget.

    gptqwen chat --model SmolLM2-135M-Instruct.Q4_1.gguf
    printf 'Hi!\\n/budget 32\\nWhat is 2+2?\\n' | gptqwen chat --model qwen3-dir --temperature 0

Thinking streams dimmed and collapses to one line when the answer starts (`/show` expands the last one).
Commands: /think, /no_think (thinking on/off), /budget N | /budget off, /system TEXT, /show, /reset,
/help, /exit. Ctrl-C stops the current answer and keeps the session; Ctrl-D (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys

from gptqwen.commands.engine_options import (
    add_model_arguments,
    add_sampling_arguments,
    engine_from_args,
    sampling_from_args,
)
from gptqwen.errors import UserError

HELP = ("/think  /no_think  thinking on / off      /budget N | off   cap thinking at N tokens\n"
        "/system TEXT       set the system message /show             expand the last thinking\n"
        "/reset             forget the conversation /exit             leave (or Ctrl-D)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--no-think", action="store_true", help="start with thinking off")
    p.add_argument("--thinking-budget", type=int, default=None, help="cap thinking at N tokens")
    add_model_arguments(p)
    add_sampling_arguments(p, temperature=0.6)


class Session:
    """The conversation and its settings; `command()` handles slash commands."""

    def __init__(self, system: str | None, thinking: bool, budget: int | None) -> None:
        self.system, self.thinking, self.budget = system, thinking, budget
        self.history: list[dict] = []
        self.last_reasoning = ""

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


def _answer(engine, session: Session, params, console) -> None:
    """Stream one assistant turn; Ctrl-C stops it and keeps what was said so far."""
    from rich.live import Live
    from rich.text import Text

    reasoning, content, result, live = "", "", None, None

    def collapse() -> None:
        nonlocal live
        if live is not None:
            live.stop()
            live = None
            n = result.thinking_tokens if result else len(engine.tokenizer.encode(reasoning))
            console.print(f"[dim]▸ thought for {n} tokens (/show to expand)[/dim]")

    stream = engine.stream_chat(session.messages(), enable_thinking=session.thinking,
                                thinking_budget=session.budget, params=params)
    try:
        for d in stream:
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


def _read(console, interactive: bool) -> str | None:
    try:
        if interactive:
            return console.input("[bold cyan]you>[/bold cyan] ")
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    if args.thinking_budget is not None and args.thinking_budget < 1:
        raise UserError("--thinking-budget must be a positive number of tokens")
    console = Console(highlight=False)
    params = sampling_from_args(args)
    engine = engine_from_args(args)
    session = Session(args.system, not args.no_think, args.thinking_budget)
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[dim]chatting with {args.model}; /help for commands, Ctrl-D to leave[/dim]")
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
                                                       "/show", "/help", "/exit", "/quit"):
            if not session.command(line, console):
                break
            continue
        session.history.append({"role": "user", "content": line})
        if not interactive:
            console.print(f"[bold cyan]you>[/bold cyan] {escape(line)}")
        console.print("[bold green]assistant>[/bold green] ", end="")
        _answer(engine, session, params, console)
    return 0
