"""`gptqwen finetune`: GPT-1 task-aware fine-tuning of a pretrained model.

    gptqwen finetune --task entailment --data train.jsonl --eval dev.jsonl --from runs/shakespeare --out ft/

Rows: classification {"text", "label"}; entailment {"premise", "hypothesis", "label"};
similarity {"text_a", "text_b", "label"}; multiple-choice {"context", "choices": [...], "label": index}.
"""

from __future__ import annotations

import argparse

from gptqwen.finetune.gpt1 import TASKS
from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--data", required=True, help="training JSONL")
    p.add_argument("--eval", help="dev JSONL, scored after training")
    p.add_argument("--from", dest="base", required=True, help="run dir, HF dir, .gguf or preset to start from")
    p.add_argument("--out", default="finetuned", help="output directory (default: finetuned)")
    p.add_argument("--tokenizer", help="tokenizer.json or preset, when --from has none")
    p.add_argument("--from-scratch", action="store_true",
                   help="same architecture and tokenizer as --from, but freshly initialised weights (baseline)")
    p.add_argument("--labels", help="comma-separated label set (default: the labels of --data, sorted)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=6.25e-5, help="peak learning rate (GPT-1: 6.25e-5)")
    p.add_argument("--warmup", type=float, default=0.002, help="warmup: fraction of steps, or steps if >= 1")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lm-coef", type=float, default=0.5, help="λ in L = L_task + λ·L_LM (GPT-1: 0.5)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the head")
    p.add_argument("--max-len", type=int, help="context for one sequence (default: the model's)")
    p.add_argument("--too-long", choices=["drop", "truncate", "error"], default="drop",
                   help="examples over --max-len: drop with a count (default), truncate, or stop")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from gptqwen.finetune.common import set_threads
    from gptqwen.finetune.train import LoopConfig
    from gptqwen.finetune.transfer import finetune_task

    set_threads(args.threads)
    summary = finetune_task(
        args.task, args.data, args.base, args.out, eval_path=args.eval, tokenizer=args.tokenizer,
        labels=[s.strip() for s in args.labels.split(",")] if args.labels else None, epochs=args.epochs,
        batch_size=args.batch_size, lm_coef=args.lm_coef, max_len=args.max_len, too_long=args.too_long,
        dropout=args.dropout, seed=args.seed, device=args.device, quiet=args.json, scratch=args.from_scratch,
        loop_cfg=LoopConfig(lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay),
    )
    if args.json:
        print_json(summary)
    else:
        acc = summary.get("eval_accuracy")
        print(f"fine-tuned {summary['task']} on {summary['train_examples']} examples ({summary['steps']} steps, "
              f"final loss {summary['final_loss']:.4f})" + (f"; dev accuracy {acc:.4f}" if acc is not None else ""))
        print(f"saved to {summary['out']}")
    return 0
