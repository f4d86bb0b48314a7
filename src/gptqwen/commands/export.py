"""`gptqwen export`: a checkpoint or model -> a Hugging Face model folder and/or a GGUF file for llama.cpp.

    gptqwen export runs/qwen3-shakespeare hf/qwen3-shakespeare             # latest checkpoint of the run
    gptqwen export runs/qwen3-shakespeare/ckpt_0000400 hf/step400 --dtype bf16
    gptqwen export runs/qwen3-shakespeare --gguf qwen3-shakespeare.gguf --type q8_0
    gptqwen export hf/qwen3-shakespeare --gguf q.gguf                      # also: a .gguf file, a Hub id

SRC is a run folder or a `ckpt_<step>` folder (both checkpoint formats work: gathered model.safetensors and
sharded train.ckpt_format=sharded, read into one model at any training world size), or any other model spec
`--model` takes (a Hugging Face folder, a .gguf file, a Hub id). OUT (a folder) loads with
`transformers.AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`; `--gguf FILE`
(llama, qwen2, qwen3, gpt2 and the all-MoE qwen2_moe / qwen3_moe layouts; `gptqwen.gguf_export`) loads with llama.cpp. Both load with
`gptqwen generate --model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptqwen.errors import UserError
from gptqwen.utils import print_json, refuse_nonempty_folder

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_1")  # = gguf_export.EXPORT_TYPES (not imported: --help stays fast)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="SRC",
                        help="run folder (its latest checkpoint), ckpt_<step> folder, Hugging Face folder, .gguf file "
                             "or Hub id")
    parser.add_argument("out", nargs="?", metavar="OUT", help="Hugging Face model folder to write (right after SRC)")
    parser.add_argument("--gguf", metavar="FILE", help="also (or only) write a GGUF file for llama.cpp")
    parser.add_argument("--type", choices=GGUF_TYPES, help="GGUF tensor type (default f16; vectors stay f32; q4_1 "
                        "keeps the output matrix in q8_0)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="weight dtype of the Hugging Face folder (default fp32)")
    parser.add_argument("--max-shard-size", default="5GB", help="split weights into shards above this size (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder at OUT or file at --gguf")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    from gptqwen.gguf_export import export_gguf
    from gptqwen.hf import save_pretrained
    from gptqwen.utils import parse_dtype

    out, gguf_out = (Path(p) if p else None for p in (args.out, args.gguf))
    if out is None and gguf_out is None:
        raise UserError("nothing to write: pass OUT (a Hugging Face folder), --gguf FILE, or both")
    if gguf_out is not None and gguf_out.suffix != ".gguf":
        raise UserError(f"--gguf '{gguf_out}' must end in .gguf (that is how --model recognises GGUF files)")
    if args.type and gguf_out is None:
        raise UserError("--type sets the GGUF tensor type; pass --gguf FILE with it")
    if out is not None:
        refuse_nonempty_folder(out, args.overwrite)
    if gguf_out is not None and gguf_out.exists() and not (gguf_out.is_file() and args.overwrite):
        raise UserError(f"'{gguf_out}' exists; pass --overwrite (for a file) or choose another path")
    # GGUF quantises from float32; an HF-only export loads straight into its dtype
    model, tokenizer, source, step = _load(args.checkpoint, "fp32" if gguf_out else args.dtype)
    summary = {"source": source, "step": step, "params": model.num_params()}
    if out is not None:
        save_pretrained(model, out, max_shard_size=args.max_shard_size, tokenizer=tokenizer,
                        dtype=parse_dtype(args.dtype))
        summary.update(out=str(out), dtype=args.dtype, files=sorted(p.name for p in out.iterdir()))
    if gguf_out is not None:
        summary["gguf"] = export_gguf(model, tokenizer, gguf_out, args.type or "f16")
    if args.json:
        print_json(summary)
        return 0
    what = f"{source}" + (f" (step {step}" if step is not None else " (") + f", {summary['params'] / 1e6:.2f}M params)"
    if out is not None:
        print(f"exported {what} to {out} ({args.dtype}): " + ", ".join(summary["files"]))
    if gguf_out is not None:
        g = summary["gguf"]
        types = ", ".join(f"{n} {k}" for k, n in sorted(g["tensor_types"].items()))
        print(f"exported {what} to {gguf_out} ({g['arch']}, {g['type']}: {types}; {g['bytes'] / 2**20:.1f} MiB)")
    return 0


def _load(spec: str, dtype: str):
    """`(model, tokenizer, source, step)`: a run or checkpoint folder as before, else any model spec."""
    from gptqwen.config import Config
    from gptqwen.loading import load_model_and_tokenizer, load_tokenizer
    from gptqwen.train.checkpoint import load_model, read_state, resolve_checkpoint

    path = Path(spec).expanduser()
    if path.is_dir() and ((path / "config.yaml").exists() or (path / "state.json").exists()):
        ckpt = resolve_checkpoint(path)
        return load_model(ckpt, dtype=dtype), load_tokenizer(ckpt), str(ckpt), read_state(ckpt)["step"]
    if not path.exists() and spec in Config.names():
        raise UserError(f"'{spec}' is a preset (random weights), not a model to export; pass a run folder, a "
                        "checkpoint folder, a Hugging Face folder, a .gguf file or a Hub id")
    model, tokenizer = load_model_and_tokenizer(spec, dtype=dtype)
    return model, tokenizer, spec, None
