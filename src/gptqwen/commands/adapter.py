"""`gptqwen adapter merge|info`: PEFT LoRA adapters — fold one into its base model, or show what one adapts.

    gptqwen adapter merge Qwen3-0.6B/ runs/sft/adapter merged/             # base + adapter -> HF model folder
    gptqwen adapter merge model.gguf my_peft_adapter/ merged/ --dtype bf16   # merged in fp32, written in bf16
    gptqwen adapter info runs/sft/adapter --json

An adapter is a PEFT folder (adapter_config.json + adapter_model.safetensors): one that `peft` wrote
(`PeftModel.save_pretrained`) or the `adapter/` folder of a gptqwen LoRA run (`gptqwen sft|dpo|grpo --lora-r`).
The base is any model spec (HF folder, .gguf, run folder, Hub id). The merged folder loads in transformers and
in every gptqwen verb. To run a base with an adapter without writing merged weights, pass
`--adapter DIR` to `gptqwen generate|chat|eval|serve`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptqwen.errors import UserError
from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("action", choices=["merge", "info"], help="merge: write base + adapter as one model; info: describe")
    p.add_argument("paths", nargs="+", metavar="PATH", help="merge: BASE ADAPTER OUT; info: ADAPTER")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="merge: weight dtype of the merged model (default fp32; the merge itself is done in fp32)")
    p.add_argument("--max-shard-size", default="5GB", help="merge: split weights into shards above this size")
    p.add_argument("--overwrite", action="store_true", help="merge: replace an existing folder at OUT")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    want = {"merge": 3, "info": 1}[args.action]
    if len(args.paths) != want:
        usage = "BASE ADAPTER OUT" if args.action == "merge" else "ADAPTER"
        raise UserError(f"'gptqwen adapter {args.action}' takes {usage}, got {len(args.paths)} path(s)")
    summary = _merge(args, *args.paths) if args.action == "merge" else _info(args.paths[0])
    if args.json:
        print_json(summary)
    elif args.action == "merge":
        print(f"merged {summary['adapter']} ({summary['modules']} modules) into {summary['base']}: wrote {summary['out']}")
    else:
        print("\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def _merge(args: argparse.Namespace, base: str, adapter: str, out: str) -> dict:
    from gptqwen.hf import save_pretrained  # deferred (with torch) so `gptqwen adapter --help` stays instant
    from gptqwen.loading import load_model_and_tokenizer
    from gptqwen.peft_format import load_adapter
    from gptqwen.utils import parse_dtype, refuse_nonempty_folder

    target = Path(out)
    refuse_nonempty_folder(target, args.overwrite)
    model, tok = load_model_and_tokenizer(base, dtype="fp32", device="cpu")
    names = load_adapter(model, adapter, merge=True)
    save_pretrained(model, target, max_shard_size=args.max_shard_size, tokenizer=tok, dtype=parse_dtype(args.dtype))
    return {"base": base, "adapter": adapter, "out": str(target), "modules": len(names), "dtype": args.dtype,
            "tokenizer": tok is not None}


def _info(adapter: str) -> dict:
    from gptqwen.peft_format import read_adapter  # deferred (with torch) so `gptqwen adapter --help` stays instant

    config, tensors = read_adapter(adapter)
    modules = sorted({k.rsplit(".lora_", 1)[0].removeprefix("base_model.model.") for k in tensors})
    return {"adapter": adapter, "base_model_name_or_path": config.get("base_model_name_or_path"),
            "r": config.get("r"), "lora_alpha": config.get("lora_alpha"), "use_rslora": bool(config.get("use_rslora")),
            "target_modules": config.get("target_modules"), "modules": len(modules),
            "params": sum(t.numel() for t in tensors.values())}
