"""What the trainers that start from a model share (finetune, sft, dpo, grpo): loading the base model, exporting
the result (with LoRA: the adapter in PEFT's format as `adapter/`, and the merged model)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gptqwen.errors import UserError
from gptqwen.hf import save_pretrained
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import Transformer
from gptqwen.model.lora import merge_lora
from gptqwen.peft_format import adapter_state, write_adapter
from gptqwen.tokenizer import Tokenizer
from gptqwen.utils import fsync_dir, pick_device

ADAPTER_DIR = "adapter"  # a LoRA run's adapter, in PEFT's format, beside the merged model


def load_base(spec: str, tokenizer_path: str | None = None, device: str | None = None, seed: int = 0,
              scratch: bool = False):
    """`(model, tokenizer)` from --from (run dir, HF dir, .gguf or preset) and optional --tokenizer.

    `scratch=True` keeps the architecture and tokenizer but re-initialises every weight (the
    from-scratch baseline that transfer is measured against)."""
    model, tokenizer = load_model_and_tokenizer(spec, seed=seed, random_weights=True)  # a preset: train from scratch
    if scratch:
        torch.manual_seed(seed)
        model = Transformer(model.config)
    if tokenizer_path is not None:
        tokenizer = Tokenizer.load(tokenizer_path)
    if tokenizer is None:
        raise UserError(f"'{spec}' comes without a tokenizer; pass --tokenizer FILE (tokenizer.json) or a preset name")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size} embedding rows; use a matching tokenizer")
    model = model.float().to(pick_device(device))
    model.name_or_path = spec  # as in transformers: what it was loaded from (a LoRA adapter's base_model_name_or_path)
    return model, tokenizer


def save_model_dir(out: str | Path, model: nn.Module, tokenizer, files: dict[str, Callable[[Path], None]]) -> Path:
    """Write an HF checkpoint (weights, config, tokenizer) plus extra files into the run folder `out`.

    Everything is built in a temporary folder inside `out`, then each entry is renamed into place, so
    no file is ever half-written; the run's checkpoints and logs beside them stay (a crash before the
    last rename is repaired by `--resume`, which exports again from the final checkpoint)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export.", suffix=".tmp", dir=out))
    try:
        save_pretrained(model, tmp, tokenizer=tokenizer)  # tokenizer_config.json gets the chat template as Jinja
        for name, write in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write(tmp / name)
        for entry in sorted(tmp.iterdir()):
            for f in [entry, *entry.rglob("*")] if entry.is_dir() else [entry]:
                if f.is_file():
                    with open(f, "rb") as handle:
                        os.fsync(handle.fileno())
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_json(obj) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(obj, indent=2) + "\n")
    return write


def export_run(out: str | Path, model: nn.Module, tokenizer, summary: dict, json_name: str, lora: bool,
               after_merge: Callable[[nn.Module], dict] | None = None) -> dict:
    """The end of a finished run: with `lora`, keep the adapters in PEFT's format as `out/adapter/` (loadable by
    `peft.PeftModel` onto the base model, and by `--adapter`) and fold them into their layers; `after_merge(model)`
    may add entries to the summary (e.g. held-out accuracy); then write the model, its tokenizer and the summary
    (as `json_name`) into `out`. Returns the summary with `out` added."""
    files: dict[str, Callable[[Path], None]] = {}
    if lora:
        config, tensors = adapter_state(model, base=getattr(model, "name_or_path", None))
        files[ADAPTER_DIR] = lambda path: write_adapter(path, config, tensors)
        summary["adapter"] = str(Path(out) / ADAPTER_DIR)
        merge_lora(model)
    model.eval()
    if after_merge is not None:
        summary.update(after_merge(model))
    files[json_name] = write_json(summary)
    save_model_dir(out, model, tokenizer, files)
    summary["out"] = str(out)
    return summary
