"""`gptqwen params NAME... [--all] [--json]`: parameter counts, KV-cache size and training FLOPs of presets.

    gptqwen params gpt2-124m qwen3-30b-a3b
    gptqwen params --all --json
    gptqwen params path/to/hf-checkpoint        # a directory (or config.json) of a Hugging Face model

Counting is analytic (nothing is allocated), so the largest presets answer instantly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gptqwen.config import Config, config_from_hf, human
from gptqwen.errors import UserError
from gptqwen.utils import print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="preset names (see --all) or HF checkpoint dirs / config.json files")
    parser.add_argument("--all", action="store_true", help="every preset")
    parser.add_argument("--seq-len", type=int, default=None, help="context length for the attention FLOPs (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")


def _resolve(name: str) -> Config:
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        if not path.exists():
            raise UserError(f"'{path}' does not exist; pass a preset name or an HF config.json")
        try:
            return config_from_hf(json.loads(path.read_text()), name=path.parent.name or name)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"'{path}' is not valid JSON ({e})") from None
    return Config.from_name(name)


def run(args: argparse.Namespace) -> int:
    if args.seq_len is not None and args.seq_len <= 0:
        raise UserError("--seq-len must be a positive number of tokens")
    names = list(args.names) + (Config.names() if args.all else [])
    if not names:
        raise UserError("give at least one preset name or --all (e.g. 'gptqwen params gpt2-124m')")
    rows = [_resolve(n).summary(args.seq_len) for n in names]
    if args.json:
        print_json(rows)
        return 0
    print(f"{'model':<18} {'params':>16} {'active':>16} {'KV/token bf16':>14} {'train FLOPs/token':>18} {'@ctx':>7}")
    for r in rows:
        print(f"{r['name']:<18} {r['params']:>16,} {r['active_params']:>16,} "
              f"{human(r['kv_cache_bytes_per_token_bf16']) + 'B':>14} {human(r['train_flops_per_token']):>18} {r['seq_len']:>7}")
    return 0
