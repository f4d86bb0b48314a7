"""`gptqwen <verb>`: the command-line entry point.

This file only dispatches. Each verb lives in `gptqwen/commands/<verb>.py`, which defines
`add_arguments(parser)` and `run(args) -> int`; the module is imported only when its verb runs,
so `gptqwen --help` stays instant. A `UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gptqwen import __version__
from gptqwen.errors import UserError, closest

# verb -> one-line summary; the implementation is gptqwen.commands.<verb>
VERBS: dict[str, str] = {
    "params": "parameters, KV-cache bytes and training FLOPs of a preset or config",
    "tokenizer": "train, inspect and compare byte-level BPE tokenizers",
    "data": "prepare token shards; dedup, filter, decontaminate and mix corpora",
    "pretrain": "pretrain a model (single process or under torchrun)",
    "export": "export a checkpoint or model to a Hugging Face folder and/or a GGUF file (llama.cpp)",
    "adapter": "PEFT LoRA adapters: merge one into its base model, or describe one",
    "finetune": "GPT-1 task-aware fine-tuning (classification, entailment, similarity, multiple choice)",
    "predict": "apply a fine-tuned GPT-1 task model to a JSONL file",
    "sft": "supervised chat fine-tuning with thinking and non-thinking data (full or LoRA)",
    "synth": "write built-in synthetic fine-tuning data (reasoning, entailment, typos) or a demo tokenizer",
    "reward": "train a reward model on preference pairs, or score completions with one",
    "dpo": "direct preference optimisation (sigmoid / IPO / hinge, LoRA optional)",
    "grpo": "online GRPO with verifiable, rubric and model rewards",
    "distill": "strong-to-weak distillation: teacher answers as SFT data, then on-policy KL to the teacher",
    "prune": "cut a trained model to a smaller width (Minitron), the starting point of a distillation",
    "post": "Qwen3's four post-training stages: cold start, reasoning RL, thinking fusion, general RL",
    "eval": "few-shot evaluation, perplexity and GPT-3 style shot plots",
    "generate": "one-shot text generation from a prompt",
    "chat": "interactive multi-turn chat with thinking mode and thinking budget",
    "sandbox": "run Python in the isolated code interpreter (namespaces, rlimits, seccomp)",
    "tools": "tool-use data, the tool-using model's evaluation, and tool schemas",
    "serve": "OpenAI-compatible HTTP server with continuous batching and a web chat page",
    "scaling": "fit Chinchilla / Kaplan / GPT-4 scaling laws to runs and predict a bigger run's loss",
    "vl": "vision-language models: train on synthetic images, grade held-out questions, parameter counts",
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gptqwen",
        description="Build, train, evaluate and run the GPT and Qwen model lineage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {v:<10} {h}" for v, h in VERBS.items())
        + "\n\nRun 'gptqwen <verb> --help' for the options of a verb.",
    )
    p.add_argument("verb", nargs="?", help="one of the verbs below")
    p.add_argument("--version", "-V", action="store_true", help="print the version and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"gptqwen {__version__}")
        return 0
    verb = argv[0]
    if verb not in VERBS:
        print(f"error: unknown verb '{verb}'.{closest(verb, VERBS)} Run 'gptqwen --help'.", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"gptqwen {verb}", description=VERBS[verb])
    try:
        module = importlib.import_module(f"gptqwen.commands.{verb}")
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gptqwen params --json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
