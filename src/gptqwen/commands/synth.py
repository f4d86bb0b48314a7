"""`gptqwen synth`: built-in synthetic fine-tuning data (no download, deterministic by seed) as JSONL on stdout.

    gptqwen synth reasoning --n 1000 --seed 0 > train.jsonl          # chat conversations for `gptqwen sft`
    gptqwen synth entailment --n 1000 --seed 0 > train.jsonl         # symbolic entailment for `gptqwen finetune`
    gptqwen synth typos --n 600 --seed 2 --split dev > dev.jsonl     # the transfer demo's task over play lines
    gptqwen synth tokenizer --out tok/                               # a small BPE for tiny models

The generators are in `gptqwen.finetune.synthetic`.
"""

from __future__ import annotations

import argparse
import json
import sys

from gptqwen.errors import UserError
from gptqwen.finetune import synthetic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("kind", choices=["reasoning", "entailment", "typos", "tokenizer"],
                   help="tokenizer: write a small Qwen-style tokenizer for this data to --out")  # fmt: skip
    p.add_argument("--out", help="tokenizer: output directory")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--think-ratio", type=float, default=0.5, help="reasoning: share of thinking examples")
    p.add_argument("--split", choices=["train", "dev"], default="train",
                   help="typos: which half of the plays' lines the premises come from")  # fmt: skip
    p.add_argument("--flag-prob", type=float, default=0.5, help="reasoning: chance of a /think or /no_think flag")


def run(args: argparse.Namespace) -> int:
    if args.kind == "tokenizer":
        if not args.out:
            raise UserError("gptqwen synth tokenizer needs --out DIR")
        print(synthetic.demo_tokenizer(args.vocab_size).save(args.out))
        return 0
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.kind == "reasoning":
        rows = synthetic.reasoning_conversations(args.n, args.seed, args.think_ratio, args.flag_prob)
    elif args.kind == "typos":
        rows = synthetic.typo_entailment_examples(args.n, args.seed, args.split)
    else:
        rows = synthetic.entailment_examples(args.n, args.seed)
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")
    return 0
