"""`gptqwen sft`: supervised chat fine-tuning on conversations, full or LoRA, with packing.

    gptqwen sft --data conversations.jsonl --from runs/qwen3 --out sft/
    gptqwen sft --synthetic 4000 --from qwen3-tiny --tokenizer tok/ --out sft/ --eval-reasoning 200
    gptqwen sft --data chats.jsonl --from hf_dir --lora-r 8 --lora-alpha 16 --lora-targets q,k,v,o

Rows: {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...,
"reasoning_content": ...?, "tool_calls": [...]?}, ...], "tools": [...]?}.
"""

from __future__ import annotations

import argparse

from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data")
    src.add_argument("--data", help="conversations JSONL (OpenAI/ChatML messages)")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="instead of --data: N built-in reasoning conversations (arithmetic and logic, "
                          "thinking and direct answers mixed)")
    src.add_argument("--think-ratio", type=float, default=0.5, help="--synthetic: share of thinking examples")
    src.add_argument("--synthetic-kinds", default="arithmetic,logic", help="--synthetic: problem kinds to mix")
    src.add_argument("--flag-prob", type=float, default=0.5,
                     help="chance of appending /think or /no_think to the last user turn of a row without one")
    src.add_argument("--max-len", type=int, help="tokens per packed row / conversation (default: the model's context)")
    src.add_argument("--too-long", choices=["drop", "truncate", "error"], default="drop",
                     help="conversations over --max-len: drop with a count (default), truncate, or stop")
    src.add_argument("--no-packing", action="store_true", help="one conversation per row, right-padded")
    m = p.add_argument_group("model")
    m.add_argument("--from", dest="base", required=True, help="run dir, HF dir, .gguf or preset to start from")
    m.add_argument("--tokenizer", help="tokenizer.json or preset, when --from has none")
    m.add_argument("--out", default="sft", help="output directory (default: sft)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=float, default=2.0)
    t.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int, default=8, help="packed rows (or conversations) per step")
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--min-lr", type=float, default=2e-6)
    t.add_argument("--warmup", type=float, default=0.03, help="fraction of steps, or steps if >= 1")
    t.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    lo = p.add_argument_group("LoRA (off unless --lora-r is given)")
    lo.add_argument("--lora-r", type=int, help="adapter rank; trains only the adapters, merged into the export")
    lo.add_argument("--lora-alpha", type=float, default=16.0)
    lo.add_argument("--lora-dropout", type=float, default=0.0)
    lo.add_argument("--lora-targets", default="q,k,v,o", help="projections: q,k,v,o,gate,up,down or layer names")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-reasoning", type=int, metavar="N",
                    help="after training, grade N held-out synthetic problems with thinking on and off")
    ev.add_argument("--eval-seed", type=int, default=1234)
    ev.add_argument("--eval-max-new-tokens", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from gptqwen.errors import UserError
    from gptqwen.finetune.common import set_threads
    from gptqwen.finetune.sft_train import LoraOptions, check_options, run_sft
    from gptqwen.finetune.train import LoopConfig

    if (args.data is None) == (args.synthetic is None):
        raise UserError("pass exactly one of --data FILE or --synthetic N")
    check_options(args.too_long, args.flag_prob, args.batch_size)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = args.data
        if args.synthetic is not None:
            import json

            from gptqwen.finetune.synthetic import GENERATORS, reasoning_conversations

            if args.synthetic < 1:
                raise UserError("--synthetic needs a positive number of conversations")
            data_path = str(Path(tmp) / "synthetic.jsonl")
            kinds = tuple(k.strip() for k in args.synthetic_kinds.split(",") if k.strip())
            unknown = [k for k in kinds if k not in GENERATORS]
            if unknown or not kinds:
                raise UserError(f"unknown --synthetic-kinds {unknown}; choose from {', '.join(GENERATORS)}")
            rows = reasoning_conversations(args.synthetic, args.seed, args.think_ratio, args.flag_prob, kinds)
            Path(data_path).write_text("".join(json.dumps(r) + "\n" for r in rows))
        after = _evaluator(args, data_path) if args.eval_reasoning else None
        lora = None
        if args.lora_r is not None:
            lora = LoraOptions(args.lora_r, args.lora_alpha, args.lora_dropout, tuple(args.lora_targets.split(",")))
        summary = run_sft(
            data_path, args.base, args.out, tokenizer=args.tokenizer, max_len=args.max_len, epochs=args.epochs,
            batch_size=args.batch_size, packing=not args.no_packing, too_long=args.too_long,
            flag_prob=0.0 if args.synthetic is not None else args.flag_prob, lora=lora, seed=args.seed,
            device=args.device, max_steps=args.max_steps, quiet=args.json, after_training=after,
            loop_cfg=LoopConfig(lr=args.lr, min_lr=args.min_lr, warmup=args.warmup, schedule=args.schedule,
                                weight_decay=args.weight_decay, betas=(0.9, 0.95), grad_clip=args.grad_clip),
        )
    if args.json:
        print_json(summary)
        return 0
    print(f"trained {summary['steps']} steps on {summary['kept']} conversations "
          f"({summary['thinking']} thinking, {summary['direct']} direct); final loss {summary['final_loss']:.4f}")
    if summary["dropped_too_long"]:
        print(f"dropped {summary['dropped_too_long']} conversations longer than the context "
              f"(lines {summary['dropped_lines'][:10]})")
    if summary["truncated"]:
        print(f"truncated {summary['truncated']} conversations to the context (their end was cut)")
    if "heldout" in summary:
        h = summary["heldout"]
        for mode in ("thinking", "non_thinking"):
            kinds = ", ".join(f"{k} {v:.3f}" for k, v in h[mode]["by_kind"].items())
            print(f"held-out accuracy, {mode.replace('_', '-')}: {h[mode]['accuracy']:.3f} ({kinds}; n={h[mode]['n']})")
    print(f"saved to {summary['out']}")
    return 0


def _evaluator(args: argparse.Namespace, data_path: str):
    def evaluate(model, tokenizer) -> dict:
        from gptqwen.finetune.evaluate import compare_modes, heldout_problems, training_questions
        from gptqwen.utils import read_jsonl

        seen = training_questions(read_jsonl(data_path))
        kinds = tuple(k.strip() for k in args.synthetic_kinds.split(",") if k.strip())
        items = heldout_problems(args.eval_reasoning, args.eval_seed, seen, kinds)
        return {"heldout": compare_modes(model, tokenizer, items, args.eval_max_new_tokens)}
    return evaluate
