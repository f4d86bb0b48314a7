"""`gptqwen scaling`: fit scaling laws to training runs and predict the loss of a bigger run.

    gptqwen scaling fit runs.csv --law chinchilla --json          # E, A, B, alpha, beta with bootstrap intervals
    gptqwen scaling fit runs.csv --law gpt4 --plot fit.png        # L(C) = a·C^b + c, loss-vs-compute plot
    gptqwen scaling predict runs.csv --law gpt4 --target-flops 1e15 --max-fraction 0.01 --actual 3.21
    gptqwen scaling predict runs.csv --law chinchilla --target-params 1e8 --target-tokens 2e9 --save pred.json
    gptqwen scaling check runs.csv --law chinchilla --holdout 0.7  # fit all but the top budget, score it
    gptqwen scaling sweep -c qwen3-shakespeare --out runs/sweep --size n_layer=2,n_embd=64 \
        --size n_layer=4,n_embd=128 --flops 1e12,1e13 train.warmup_steps=10   # then: fit runs/sweep/runs.csv

The CSV has one row per run with columns params, tokens, loss and optionally flops (default 6·N·D);
other columns are ignored. Laws: chinchilla L(N,D) = E + A/N^alpha + B/D^beta (Hoffmann et al.'s Huber
fit from a grid of starts), kaplan L(N), L(D), L(C) power laws, gpt4 L(C) = a·C^b + c.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from gptqwen.errors import UserError
from gptqwen.utils import atomic_write, print_json, refuse_file_in_path


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="CSV of runs with columns params,tokens,loss[,flops]")
    p.add_argument("--law", choices=["chinchilla", "kaplan", "gpt4"], default="chinchilla", help="default: chinchilla")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--flops-column", default="flops", metavar="NAME",
                   help="the column holding each run's compute, e.g. a sweep's flops_exact (default: flops, else 6ND)")
    p.add_argument("--starts", default="128", metavar="K|all",
                   help="chinchilla: L-BFGS from the K best points of Hoffmann's 4,500-point grid, or 'all' (default: 128)")
    p.add_argument("--frontier", action="store_true",
                   help="fit only the compute frontier: runs with a lower loss than every cheaper run (e.g. gpt4 on a grid)")


def _common(p: argparse.ArgumentParser) -> None:
    _inputs(p)
    p.add_argument("--plot", metavar="OUT.png", help="write the loss-vs-compute / IsoFLOP figure here (needs matplotlib)")
    p.add_argument("--bootstrap", type=int, default=100, metavar="N",
                   help="resamples for the confidence intervals (default: 100; 0 = none)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _common(sub.add_parser("fit", help="fit a law to the runs in a CSV"))
    p = sub.add_parser("predict", help="fit, then predict a target run's loss with an interval")
    _common(p)
    p.add_argument("--target-params", type=float, metavar="N", help="parameters of the target run")
    p.add_argument("--target-tokens", type=float, metavar="D", help="training tokens of the target run")
    p.add_argument("--target-flops", type=float, metavar="C", help="training compute of the target run (FLOPs)")
    p.add_argument("--max-fraction", type=float, metavar="F",
                   help="fit only on runs using at most this fraction of the target's compute (e.g. 0.01)")
    p.add_argument("--actual", type=float, metavar="LOSS", help="the target's real loss: report the relative error")
    p.add_argument("--save", metavar="FILE.json",
                   help="also write the report, stamped with the time it was made (UTC), to this file")
    p = sub.add_parser("check", help="leave the most expensive runs out, fit the rest, and score the predictions of them")
    _inputs(p)
    p.add_argument("--holdout", type=float, default=0.7, metavar="F",
                   help="hold out the runs with compute above F x the largest (default: 0.7)")

    p = sub.add_parser("sweep", help="train a grid of model sizes x token (or IsoFLOP) budgets into one runs CSV")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run, e.g. train.lr=1e-3")
    p.add_argument("--config", "-c", help="pretraining recipe name or YAML file (default: qwen3-shakespeare)")
    p.add_argument("--out", required=True, help="sweep folder: one run folder per run, and runs.csv")
    p.add_argument("--size", action="append", required=True, metavar="K=V,...",
                   help="model overrides of one size (repeat per size), e.g. n_layer=2,n_embd=64,n_head=2; "
                        "dotted keys set other recipe fields of that size, e.g. train.lr=6e-3")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", metavar="D,...", help="training tokens per run, comma-separated (a grid)")
    budget.add_argument("--flops", metavar="C,...", help="IsoFLOP compute budgets: each size gets D = C / 6N")
    budget.add_argument("--tokens-per-param", metavar="R,...",
                        help="tokens per parameter: each size gets D = R x N (e.g. 20, Chinchilla's ratio)")
    p.add_argument("--seeds", metavar="S,...",
                   help="repeat every run once per seed (train.seed), e.g. 1,2,3: fits average the repeats and "
                        "report their spread")
    p.add_argument("--min-steps", type=int, default=1, metavar="K",
                   help="leave out runs of fewer than K optimizer steps (default: 1, none left out)")
    p.add_argument("--max-flops", type=float, metavar="C",
                   help="leave out runs whose exact FLOP count is above C (e.g. 1/100 of a target run's)")
    p.add_argument("--shard", default="0/1", metavar="I/K", help="train only runs I, I+K, ... (split a sweep over K processes)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs (N, D, C) and train nothing")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.parse_args = p.parse_intermixed_args  # type: ignore[method-assign]


def _starts(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--starts takes a number of grid points or 'all', not {text!r}") from None


def _target(args: argparse.Namespace):
    from gptqwen.scaling.fit import Target

    given = {k: getattr(args, f"target_{k}") for k in ("params", "tokens", "flops")}
    if not any(v is not None for v in given.values()):
        raise UserError("predict needs a target: --target-params and --target-tokens, or --target-flops")
    bad = [f"--target-{k}" for k, v in given.items() if v is not None and not v > 0]
    if bad:
        raise UserError(f"{', '.join(bad)} must be positive")
    return Target(**given)


def _numbers(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, e.g. 1e5,3e5, not {text!r}") from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 1,2,3, not {text!r}") from None


def _sweep(args: argparse.Namespace) -> int:
    from gptqwen.scaling.sweep import parse_size, plan_sweep, run_sweep, write_csv

    index, sep, count = args.shard.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(count) > 0):
        raise UserError(f"--shard takes I/K, e.g. 0/2, not {args.shard!r}")
    tokens = _numbers(args.tokens, "--tokens") if args.tokens else None
    flops = _numbers(args.flops, "--flops") if args.flops else None
    ratios = _numbers(args.tokens_per_param, "--tokens-per-param") if args.tokens_per_param else None
    seeds = _seeds(args.seeds) if args.seeds is not None else None
    if not args.dry_run:  # before planning, which may build the dataset
        refuse_file_in_path(args.out, "the sweep folder --out")
    specs = plan_sweep(args.config, args.overrides, [parse_size(s) for s in args.size], tokens, flops,
                       args.min_steps, args.max_flops, ratios, seeds)
    if args.dry_run:
        rows = [{"run": s.name, "params": s.params, "params_nonembed": s.params_nonembed, "tokens": s.tokens,
                 "flops": s.flops, "flops_exact": s.flops_exact, "steps": s.steps, "seed": s.seed} for s in specs]
    else:
        rows = run_sweep(args.config, args.overrides, specs, args.out, (int(index), int(count)),
                         log=lambda line: print(line, file=sys.stderr))
        path = write_csv(rows, f"{args.out}/runs.csv")
        print(f"{len(rows)} of {len(specs)} runs finished; rows in {path}", file=sys.stderr)
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            loss = f"  loss {r['loss']:.4f}" if "loss" in r else ""
            print(f"{r['run']:<40} N {r['params']:>12,}  D {r['tokens']:>12,}  C {r['flops']:.3g}{loss}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from gptqwen.scaling.analysis import holdout
    from gptqwen.scaling.data import read_runs

    out = holdout(_law(args), read_runs(args.file, args.flops_column), args.holdout, args.frontier)
    if args.json:
        print_json(out)
        return 0
    print(f"{out['law']} fitted on {len(out['fitted_lines'])} runs with compute <= {args.holdout:g} x the largest; "
          f"held-out runs of {out['file']}:")
    for r in out["held_out"]:
        print(f"  line {r['line']:>3}  N {r['params']:>10,.0f}  D {r['tokens']:>11,.0f}  C {r['flops']:.3g}  loss "
              f"{r['loss']:.4f}  predicted {r['predicted']:.4f}  error {100 * r['relative_error']:+.2f}%")
    print(f"mean |error| {100 * out['mean_abs_error']:.2f}%, max {100 * out['max_abs_error']:.2f}%")
    return 0


def _law(args: argparse.Namespace):
    from gptqwen.scaling.fit import get_law

    return get_law(args.law, **({"starts": _starts(args.starts)} if args.law == "chinchilla" else {}))


def run(args: argparse.Namespace) -> int:
    if args.action == "sweep":
        return _sweep(args)
    if args.action == "check":
        return _check(args)
    import numpy as np

    from gptqwen.scaling.analysis import report, within_fraction
    from gptqwen.scaling.data import read_runs
    from gptqwen.scaling.fit import compute_frontier

    law = _law(args)
    everything = read_runs(args.file, args.flops_column)
    used = np.ones(len(everything), dtype=bool)
    target = _target(args) if args.action == "predict" else None
    if target is not None and args.max_fraction is not None:
        if not target.compute:
            raise UserError("--max-fraction needs the target's compute: --target-flops, or --target-params "
                            "with --target-tokens")
        used = within_fraction(everything, target.compute, args.max_fraction)
        if not used.all():
            print(f"left out of the fit (compute above {args.max_fraction:g} of the target's {target.compute:.3g} "
                  f"FLOPs): {everything.describe_lines(~used)}", file=sys.stderr)
    if args.frontier:
        candidates = np.flatnonzero(used)
        used[:] = False
        used[candidates[compute_frontier(everything.subset(candidates))]] = True
    runs, excluded = everything.subset(used), everything.subset(~used)
    out, fit = report(law, runs, args.bootstrap, args.seed, args.confidence, target, getattr(args, "actual", None))
    out["excluded_lines"] = [int(n) for n in excluded.lines]
    if getattr(args, "save", None):
        out["made_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with atomic_write(args.save) as f:
            json.dump(out, f, indent=2)
    if args.plot:
        from gptqwen.scaling.plot import plot_fit

        out["plot"] = str(plot_fit(args.plot, runs, fit, out.get("prediction"), excluded))
    if args.json:
        print_json(out)
    else:
        _print_table(out)
    return 0


def _interval(out: dict, key: str) -> str:
    lo_hi = out["intervals"].get(key)
    return f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else ""


def _print_table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    diag = out["diagnostics"]
    boot = diag.get("bootstrap")
    title = f"{out['law']} fit on {diag['n_runs']} runs of {out['file']}"
    table = Table(title=title)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    table.add_column(f"{100 * boot['confidence']:.0f}% interval" if boot else "interval", justify="right")
    for key, value in {**out["params"], **out["derived"]}.items():
        table.add_row(key, f"{value:.4g}", _interval(out, key))
    console = Console()
    console.print(table)
    lines = [f"objective {diag['objective']:.4g}, residual RMS {diag['rms_log_loss']:.4g} in log-loss, "
             f"converged {diag['converged']}"]
    if boot:
        lines.append(f"bootstrap: {boot['samples']} resamples, {boot['failed']} could not be fitted")
    lines += diag["notes"]
    pred = out.get("prediction")
    if pred:
        interval = f" [{pred['interval'][0]:.4g}, {pred['interval'][1]:.4g}]" if pred.get("interval") else ""
        target = ", ".join(f"{k} {v:.3g}" for k, v in pred["target"].items())
        lines.append(f"predicted loss at {target}: {pred['loss']:.4f}{interval}")
        if "actual" in pred:
            lines.append(f"actual loss {pred['actual']:.4f}: relative error {100 * pred['relative_error']:+.2f}%")
    if out.get("plot"):
        lines.append(f"plot: {out['plot']}")
    for line in lines:
        console.print(line, highlight=False)
