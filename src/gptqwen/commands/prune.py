"""`gptqwen prune`: cut a trained model to fewer layers, fewer heads and smaller widths (Minitron depth, head and width
pruning), the starting point of a distillation from it.

    gptqwen prune --model post/4-general-rl --out small/ --n-embd 64 --head-dim 16 --intermediate-size 192
    gptqwen prune --model post/4-general-rl --out shallow/ --n-layer 3                  # drop the least important block
    gptqwen prune --model post/4-general-rl --out narrow/ --n-head 2                    # keep each KV group's top head
    gptqwen prune --model big/ --out small/ --n-embd 512 --data calibration.jsonl      # your own calibration texts
    gptqwen distill --teacher post/4-general-rl --from small/ --out distill/            # then recover by distillation

Blocks are ranked by how much they change the residual stream (1 − the cosine of their input and output) and the
least important removed; query heads by what they write to the residual stream (each KV group keeps its top
ones; KV heads stay); residual channels, MLP neurons and value dimensions are ranked by their mean |activation| on
the calibration texts (`--synthetic N` built-in reasoning conversations, the default, or `--data FILE`: JSONL rows
{"messages": [...]} or {"text": ...}, or a text file with one text per paragraph), and the top ones kept; with RoPE,
each head keeps its highest rotary frequencies and `rope_theta` is set so the smaller head turns them at the same
rates. OUT is a Hugging Face folder with the tokenizer and `prune.json` (shapes, parameters, the kept blocks and
heads, the calibration's FLOPs and CPU seconds). A pruned model is a poor model until it is distilled.
"""

from __future__ import annotations

import argparse

from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("--model", required=True, help="the model to prune: run dir, HF folder, .gguf file or Hub id")
    p.add_argument("--out", required=True, help="folder for the pruned model (a Hugging Face folder)")
    p.add_argument("--n-layer", type=int, help="blocks to keep (default: the model's; the least important go)")
    p.add_argument("--n-head", type=int, help="query heads to keep, a multiple of the KV heads (default: the model's)")
    p.add_argument("--n-embd", type=int, help="residual width to keep (default: the model's)")
    p.add_argument("--head-dim", type=int, help="width of each attention head to keep (even with RoPE)")
    p.add_argument("--intermediate-size", type=int, help="MLP width to keep")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--synthetic", type=int, help="calibrate on N built-in reasoning conversations (default 256)")
    cal.add_argument("--data", help="calibrate on this JSONL ({\"messages\"} or {\"text\"} rows) or text file")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in calibration conversations")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from gptqwen.align.prune import run_prune

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "head_dim": args.head_dim,
             "intermediate_size": args.intermediate_size}
    synthetic = args.synthetic if args.synthetic is not None or args.data else 256
    report = run_prune(args.model, args.out, {k: v for k, v in shape.items() if v is not None}, synthetic, args.data,
                       args.seed, args.overwrite)  # fmt: skip
    if args.json:
        print_json(report)
        return 0
    before, after = report["shape_before"], report["shape_after"]
    widths = ", ".join(f"{k} {before[k]} → {after[k]}" for k in before if before[k] != after[k]) or "no size changed"
    print(f"pruned {report['source']} ({report['params_before'] / 1e6:.2f}M → {report['params_after'] / 1e6:.2f}M "
          f"params; {widths}) on {report['calibration_tokens']} calibration tokens into {report['out']}; distill it "
          f"next: gptqwen distill --teacher {report['source']} --from {report['out']}")  # fmt: skip
    return 0
