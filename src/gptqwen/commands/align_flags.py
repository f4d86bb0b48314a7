"""Shorthand flags of the alignment verbs (`reward`, `dpo`, `grpo`): each sets one recipe key, like the
shared trainer shorthands in `recipe_args.py`, for the keys of the alignment sections (pref, dpo, grpo).

    FLAGS = {"--beta": ("dpo.beta", "β of the DPO loss"),
             "--no-thinking": ("pref.enable_thinking", "render chat rows in non-thinking mode", "false")}  # on/off
    add_flags(parser, FLAGS); args.set[:0] = overrides(args, FLAGS)   # before resolve_recipe
    return report(args, summary, lambda s: [f"final loss {s['loss']:.4f}"])  # after training
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gptqwen.utils import print_json

Table = dict[str, tuple[str, ...]]  # flag -> (recipe key, help) or (recipe key, help, value it sets when given)


def _dest(flag: str) -> str:
    return "align_" + flag.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, table: Table, title: str = "alignment settings") -> None:
    group = parser.add_argument_group(f"{title} (each sets the recipe key named in brackets)")
    for flag, (key, text, *const) in table.items():
        if const:
            group.add_argument(flag, dest=_dest(flag), action="store_const", const=const[0], help=f"{text} [{key}={const[0]}]")
        else:
            group.add_argument(flag, dest=_dest(flag), metavar=flag.lstrip("-").upper().replace("-", "_"),
                               help=f"{text} [{key}]")


def overrides(args: argparse.Namespace, table: Table) -> list[str]:
    """`key=value` for each flag given (they come before --set and bare overrides, which win)."""
    return [f"{spec[0]}={getattr(args, _dest(flag))}" for flag, spec in table.items()
            if getattr(args, _dest(flag), None) is not None]


def report(args: argparse.Namespace, summary: dict, lines: Callable[[dict], list[str]]) -> int:
    """Print a trainer's summary: JSON with --json, the resume hint after --stop-at, else `lines(summary)`."""
    if args.json:
        print_json(summary)
    elif "out" not in summary:
        print(f"stopped at step {summary['step']} of {summary['steps']}; finish with --resume --out {args.out}")
    else:
        for line in lines(summary):
            print(line)
        print(f"saved to {summary['out']} (metrics in {summary['run_dir']}/metrics.jsonl)")
    return 0
