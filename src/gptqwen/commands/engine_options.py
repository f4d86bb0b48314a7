"""Command-line options shared by `gptqwen generate`, `chat`, `serve` and `tools`: model loading, context extension
and sampling flags.

    gptqwen generate --model SmolLM2.gguf --yarn 2 --dca 6144 2048 --prompt "..."   # 16k tokens instead of 8k
    gptqwen serve --model runs/qwen3-long/long --yarn 4 --dca 768 256              # 4096 tokens instead of 1024

--yarn / --dca / --allow-longer go through `gptqwen.model.dca.extend_context`, the same call `gptqwen eval` makes
for its long-context tasks, so a served model extends its context exactly as the evaluated one did.
"""

from __future__ import annotations

import argparse

import torch

from gptqwen.errors import UserError
from gptqwen.infer.engine import Engine
from gptqwen.infer.quant import quantize
from gptqwen.infer.sampling import DEFAULT_TEMPERATURE, SamplingParams
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model.dca import extend_context
from gptqwen.utils import parse_dtype, pick_device
from gptqwen.vision import VisionLanguageModel, is_vlm_dir

_DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="a .gguf file, an HF checkpoint directory, a Hugging Face Hub id (org/name), a training run "
                        "directory, or a preset name with --random-weights")
    g.add_argument("--random-weights", action="store_true",
                   help="allow a preset name as --model: its architecture with random, untrained weights (smoke tests)")
    g.add_argument("--adapter", default=None, metavar="DIR",
                   help="a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors, e.g. a LoRA "
                        "run's adapter/) merged into the model's weights when loading")
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    g.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="weight dtype (default: float32 on CPU, bfloat16 on GPU)")
    g.add_argument("--quant", choices=("q8_0", "q4_1"), default=None,
                   help="quantise the linear layers' weights to llama.cpp's q8_0 or q4_1 blocks: 4x / 6x fewer bytes "
                        "per decoded token than float32, the fastest CPU decoding (q4_1 keeps the head at q8_0)")
    g.add_argument("--int8", action="store_const", const="q8_0", dest="quant", help="same as --quant q8_0")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (minutes of compilation on a small CPU; pays off on GPUs)")
    g.add_argument("--no-native", dest="native", action="store_false",
                   help="decode through the PyTorch forward instead of the one-call C decode step (CPU, Llama/Qwen and "
                        "GPT-2 layouts; the same logits) — for comparison")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's choice; 1 is faster on a machine busy with other work)")
    add_context_arguments(p)


def add_extension_arguments(g) -> None:
    """--yarn / --dca / --allow-longer on an argument group (generate, chat, serve, tools and eval share them)."""
    g.add_argument("--yarn", type=float, default=None, metavar="FACTOR",
                   help="YaRN: stretch the RoPE frequencies to FACTOR x the trained context")
    g.add_argument("--dca", nargs=2, type=int, default=None, metavar=("CHUNK", "LOCAL"),
                   help="Dual Chunk Attention with chunks of CHUNK tokens and a local window of LOCAL "
                        "(CHUNK + LOCAL <= the trained context)")
    g.add_argument("--allow-longer", action="store_true",
                   help="run plain RoPE past the trained context (it usually fails there; for comparison)")


def extend_as_asked(model: torch.nn.Module, context: int, args: argparse.Namespace) -> None:
    """`extend_context` with the --yarn / --dca / --allow-longer values."""
    extend_context(model, context, yarn=args.yarn, dca=tuple(args.dca) if args.dca else None,
                   allow_longer=args.allow_longer)


def add_context_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long context (RoPE models; applied as `gptqwen eval` applies them)")
    add_extension_arguments(g)
    g.add_argument("--context", type=int, default=None, metavar="TOKENS",
                   help="the longest prompt + answer to accept (default: FACTOR x the trained context with --yarn, "
                        "else 4 x with --dca or --allow-longer)")


def apply_context_arguments(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Extend a loaded model's context as --yarn / --dca / --allow-longer / --context ask (nothing without them)."""
    if args.yarn is None and args.dca is None and not args.allow_longer:
        if args.context is not None:
            raise UserError("--context needs --yarn FACTOR, --dca CHUNK LOCAL or --allow-longer to extend the model")
        return
    trained = model.config.trained_len()
    context = args.context or round(trained * (args.yarn if args.yarn is not None else 4))
    if context < 1:
        raise UserError(f"--context {context} is invalid; give a positive number of tokens")
    extend_as_asked(model, context, args)


def add_sampling_arguments(p: argparse.ArgumentParser, temperature: float = DEFAULT_TEMPERATURE) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--truncate", action="store_true", help="keep the end of a prompt longer than the context")


def sampling_from_args(args: argparse.Namespace, **extra) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, seed=args.seed, stop=tuple(args.stop),
        truncate_prompt=args.truncate, **extra)


def engine_from_args(args: argparse.Namespace) -> Engine:
    """Load the model named by `--model` and wrap it in an `Engine` (quantised / compiled as asked)."""
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} is invalid; give 1 or more")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = parse_dtype(args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    model, tok = load_model_and_tokenizer(args.model, dtype=dtype, device=device, adapter=args.adapter,
                                          random_weights=args.random_weights)
    if tok is None:
        raise UserError(f"'{args.model}' has no tokenizer to turn text into tokens; "
                        "use a .gguf file, an HF checkpoint or a run directory that has one")
    apply_context_arguments(model, args)
    if args.quant:
        quantize(model, args.quant)
    if is_vlm_dir(args.model):  # a vision-language model: its image encoder sits beside the decoder
        model = VisionLanguageModel.attach(model, args.model)
    return Engine(model, tok, compile=args.compile, native=args.native)
