"""`gptqwen sandbox`: run Python in the isolated code interpreter (`gptqwen.tools.sandbox`).

    gptqwen sandbox run script.py --timeout 5 --memory-mb 512 --json   # {"stdout","stderr","exit_code","timed_out","error"}
    echo 'print(2 ** 100)' | gptqwen sandbox run -
    gptqwen sandbox repl                   # one stateful session: variables persist between inputs
    gptqwen sandbox info --json            # which isolation this machine gives

`run` prints the program's stdout and stderr as they were and exits with its exit code (124 on a timeout);
with --json it prints one JSON document instead (figures as base64 PNGs under "images").
In the REPL an input ends at an empty line (or at a line that is complete Python on its own).
"""

from __future__ import annotations

import argparse
import codeop
import sys

from gptqwen.errors import UserError
from gptqwen.tools.sandbox import MODES, Limits, Session, namespaces_work, run_code
from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("action", choices=["run", "repl", "info"])
    p.add_argument("file", nargs="?", help="run: the Python file ('-' reads stdin)")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per run / per REPL input")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space cap of each process")
    p.add_argument("--max-processes", type=int, default=64, help="process cap (fork bombs stop here)")
    p.add_argument("--disk-mb", type=int, default=64, help="size of the private /work directory")
    p.add_argument("--max-output", type=int, default=100_000, help="bytes of stdout and of stderr kept")
    p.add_argument("--isolation", choices=MODES, default="auto",
                   help="namespaces (refuse to run without them), rlimits (no namespaces), auto (the best available)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(timeout_s=args.timeout, memory_mb=args.memory_mb, nproc=args.max_processes, disk_mb=args.disk_mb,
                  max_output=args.max_output)


def _read_source(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; give a UTF-8 Python file or '-' for stdin") from e


def _repl(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    with Session(_limits(args), args.isolation) as session:
        session.start()
        if interactive:
            print(f"sandboxed Python ({session.isolation['mode']} isolation); Ctrl-D to leave", file=sys.stderr)
        lines: list[str] = []
        while True:
            try:
                line = input("... " if lines else ">>> ") if interactive else sys.stdin.readline()
            except EOFError:
                line = ""
            at_end = line == "" and not interactive or line == "" and not lines
            lines.append(line.rstrip("\n"))
            source = "\n".join(lines)
            try:
                complete = codeop.compile_command(source, "<input>", "exec") is not None
            except (SyntaxError, OverflowError, ValueError):
                complete = True  # the sandbox reports the error
            if source.strip() and (complete or at_end):
                _show(session.run(source), args.json)
                lines.clear()
            elif not source.strip():
                lines.clear()
            if at_end:
                return 0


def _show(res, as_json: bool) -> None:
    if as_json:
        print_json(res.to_json())
        return
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    if res.error and res.exit_code != 1:  # timeouts, crashes, restarts (exceptions are in stderr already)
        print(f"[{res.error}]", file=sys.stderr)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if args.action == "info":
        info = {"namespaces": namespaces_work()}
        with Session(Limits(timeout_s=10)) as s:
            s.start()
            info.update(s.isolation)
        if args.json:
            print_json(info)
        else:
            print(", ".join(f"{k}: {v}" for k, v in info.items()))
        return 0
    if args.action == "repl":
        return _repl(args)
    if not args.file:
        raise UserError("gptqwen sandbox run needs a FILE (or '-' to read the program from stdin)")
    res = run_code(_read_source(args.file), _limits(args), args.isolation)
    if args.json:
        print_json({k: v for k, v in res.to_json().items() if k != "truncated" and (k != "images" or v)})
        return 0
    _show(res, False)
    if res.timed_out:
        return 124
    code = res.exit_code
    return code if isinstance(code, int) and code >= 0 else 128 - (code or 0)
