"""`gptqwen predict`: apply a model from `gptqwen finetune` to a JSONL file.

    gptqwen predict --model ft/ --data test.jsonl [--json]

Prints one prediction per row (the label, or the answer index for multiple choice) and, when every
row has a label, the accuracy.
"""

from __future__ import annotations

import argparse

from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="directory written by 'gptqwen finetune'")
    p.add_argument("--data", required=True, help="JSONL rows with the task's fields (label optional)")
    p.add_argument("--too-long", choices=["drop", "truncate", "error"], default="truncate",
                   help="rows over the model's context: truncate (default), drop with a count, or stop")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--json", action="store_true", help="print all predictions as one JSON document")


def run(args: argparse.Namespace) -> int:
    from gptqwen.finetune.transfer import predict_file

    result = predict_file(args.model, args.data, args.device, args.too_long)
    if args.json:
        print_json(result)
        return 0
    names = result["labels"] or [f"choice {k}" for k in range(len(result["predictions"][0]["probabilities"]))] \
        if result["predictions"] else []
    print("line\tprediction\t" + " ".join(f"p({n})" for n in names))
    for p in result["predictions"]:
        probs = " ".join(f"{x:.3f}" for x in p["probabilities"])
        print(f"{p['line']}\t{p['prediction']}\t{probs}")
    if result["skipped_lines"]:
        print(f"skipped {len(result['skipped_lines'])} rows longer than the context: {result['skipped_lines']}")
    if result["truncated_lines"]:
        print(f"truncated {len(result['truncated_lines'])} rows to the context (start of the text cut): "
              f"{result['truncated_lines']}")
    if "accuracy" in result:
        print(f"accuracy {result['accuracy']:.4f} on {len(result['predictions'])} rows")
    return 0
