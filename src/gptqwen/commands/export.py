"""`gptqwen export`: a training checkpoint -> a Hugging Face model directory (config.json, safetensors, tokenizer).

    gptqwen export runs/qwen3-shakespeare hf/qwen3-shakespeare             # latest checkpoint of the run
    gptqwen export runs/qwen3-shakespeare/ckpt_0000400 hf/step400 --dtype bf16

Both checkpoint formats work: gathered (model.safetensors) and sharded (train.ckpt_format=sharded; the
torch.distributed.checkpoint shards are read into one model in this process, at any training world size).
The result loads with `transformers.AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)`, and with `gptqwen generate --model dir`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptqwen.errors import UserError
from gptqwen.hf import save_pretrained
from gptqwen.loading import load_tokenizer
from gptqwen.train.checkpoint import load_model, read_state, resolve_checkpoint
from gptqwen.utils import print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="run folder (its latest checkpoint) or a ckpt_<step> folder, gathered or sharded")
    parser.add_argument("out", help="Hugging Face model folder to write")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weight dtype (default fp32)")
    parser.add_argument("--max-shard-size", default="5GB", help="split weights into shards above this size (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder at OUT")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"'{out}' exists and is not empty; pass --overwrite or choose another folder")
    ckpt = resolve_checkpoint(args.checkpoint)
    model = load_model(ckpt, dtype=args.dtype)
    tokenizer = load_tokenizer(ckpt)
    save_pretrained(model, out, max_shard_size=args.max_shard_size, tokenizer=tokenizer)
    summary = {"checkpoint": str(ckpt), "step": read_state(ckpt)["step"], "out": str(out), "dtype": args.dtype,
               "params": model.num_params(), "files": sorted(p.name for p in out.iterdir())}  # fmt: skip
    if args.json:
        print_json(summary)
    else:
        print(f"exported {ckpt} (step {summary['step']}, {summary['params'] / 1e6:.2f}M params, {args.dtype}) to {out}: "
              + ", ".join(summary["files"]))
    return 0
