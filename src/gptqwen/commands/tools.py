"""`gptqwen tools`: tool schemas, tool-use SFT data, and the held-out evaluation of a tool-using model.

    gptqwen tools list --tools calculator,python,my_tools.py --json      # the OpenAI schemas the model sees
    gptqwen tools call calculator '{"expression": "4821 * 37"}'          # run one tool as the agent would
    gptqwen tools prepare --out runs/tools --n 6000                      # traces.jsonl, tokenizer/, base/
    gptqwen sft -c sft-tools --data runs/tools/traces.jsonl --from runs/tools/base --out runs/tools/sft
    gptqwen tools eval --model runs/tools/sft --n 200 --exclude runs/tools/traces.jsonl --json

`eval` grades greedy answers to held-out multi-digit problems twice: with the calculator offered (the
function-calling loop of `gptqwen.tools.agent`) and without tools; it reports accuracy ± standard error,
how often the tool was called, and example transcripts. The whole demo is scripts/demo_tools.sh.
"""

from __future__ import annotations

import argparse
import json

from gptqwen.commands.engine_options import add_model_arguments, engine_from_args
from gptqwen.errors import UserError
from gptqwen.tools import synthetic
from gptqwen.tools.builtin import load_toolbox
from gptqwen.utils import print_json, read_jsonl, refuse_file_in_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="print the schemas of --tools")
    ls.add_argument("--tools", default="calculator,python", help="built-in names and .py files, comma-separated")
    ls.add_argument("--json", action="store_true")
    call = sub.add_parser("call", help="call one tool with JSON arguments")
    call.add_argument("name")
    call.add_argument("arguments", help="a JSON object")
    call.add_argument("--tools", default="calculator,python")
    prep = sub.add_parser("prepare", help="write tool-use SFT traces, a tokenizer for them and a fresh base model")
    prep.add_argument("--out", required=True)
    prep.add_argument("--n", type=int, default=6000, help="conversations (--tool-share of them use the calculator)")
    prep.add_argument("--turns", type=int, default=3,
                      help="questions per conversation: 1 to this many (several share one system turn's tool prompt)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--vocab-size", type=int, default=768)
    prep.add_argument("--preset", default="qwen2-tiny",
                      help="architecture of the base model (qwen2-tiny: at qwen3-tiny's size, 4 layers x 128)")
    prep.add_argument("--context", type=int, default=512, help="the base model's context window")
    prep.add_argument("--tool-share", type=float, default=0.5, help="share of conversations that use the calculator")
    prep.add_argument("--rope-theta", type=float, default=10000.0, help="the base model's RoPE base")
    ev = sub.add_parser("eval", help="held-out accuracy with the calculator vs without tools")
    ev.add_argument("--n", type=int, default=200, help="held-out problems")
    ev.add_argument("--seed", type=int, default=1234)
    ev.add_argument("--exclude", default=None, help="traces JSONL whose problems are left out of the evaluation")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--json", action="store_true")
    add_model_arguments(ev)


def _eval(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    exclude = synthetic.training_expressions([r for _, r in read_jsonl(args.exclude, "traces")]) if args.exclude else set()
    items = synthetic.problems(args.n, args.seed, exclude)
    engine = engine_from_args(args)
    report = {mode: synthetic.accuracy(engine, items, use_tools=mode == "with_tools", max_new_tokens=args.max_new_tokens)
              for mode in ("with_tools", "without_tools")}  # fmt: skip
    report["held_out"] = {"n": args.n, "seed": args.seed, "excluded_training_problems": len(exclude)}
    if args.json:
        print_json(report)
        return 0
    for mode in ("with_tools", "without_tools"):
        r = report[mode]
        print(f"{mode.replace('_', ' '):>13}: accuracy {r['accuracy']:.3f} ± {r['stderr']:.3f} (n={r['n']}, "
              f"called the calculator on {r['called_tool']:.0%}, answered on {r['answered']:.0%})")
    for m in report["with_tools"]["examples"][0]["messages"]:
        print(f"  [{m['role']}] {m.get('content') or ''}"
              + "".join(f" {c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls", [])))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "eval":
        return _eval(args)
    if args.action == "prepare":
        if args.n < 1:
            raise UserError(f"--n must be at least 1, got {args.n}")
        if args.turns < 1:
            raise UserError(f"--turns must be at least 1, got {args.turns}")
        if not 0 <= args.tool_share <= 1:
            raise UserError(f"--tool-share must be in [0, 1], got {args.tool_share}")
        refuse_file_in_path(args.out, "--out")
        print_json(synthetic.prepare(args.out, args.n, args.seed, args.vocab_size, args.preset, args.context,
                                     args.tool_share, args.rope_theta, args.turns))
        return 0
    box = load_toolbox(args.tools)
    try:
        if args.action == "list":
            if args.json:
                print_json(box.schemas())
            else:
                for t in box.tools.values():
                    print(f"{t.name}({', '.join(t.parameters['properties'])}): {t.description}")
            return 0
        try:
            arguments = json.loads(args.arguments)
        except ValueError as e:
            raise UserError(f"the arguments are not valid JSON ({e.msg}); give an object like '{{\"x\": 1}}'") from e
        out, ok = box.call(args.name, arguments)
        print(out)
        return 0 if ok else 1
    finally:
        box.close()
