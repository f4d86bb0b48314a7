"""What `gptqwen finetune` and `gptqwen sft` share: loading the base model, exporting the result."""

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
from gptqwen.finetune.lora import merge_lora
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.utils import fsync_dir, pick_device


def load_base(spec: str, tokenizer_path: str | None = None, device: str | None = None, seed: int = 0,
              scratch: bool = False):
    """`(model, tokenizer)` from --from (run dir, HF dir, .gguf or preset) and optional --tokenizer.

    `scratch=True` keeps the architecture and tokenizer but re-initialises every weight (the
    from-scratch baseline that transfer is measured against)."""
    model, tokenizer = load_model_and_tokenizer(spec, seed=seed)
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
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
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


def export_run(out: str | Path, model: nn.Module, tokenizer, summary: dict, json_name: str, lora: bool) -> dict:
    """The end of a finished run: fold LoRA adapters into their layers (when `lora`), then write the model, its
    tokenizer and the summary (as `json_name`) into `out`; returns the summary with `out` added."""
    if lora:
        merge_lora(model)
    model.eval()
    save_model_dir(out, model, tokenizer, {json_name: write_json(summary)})
    summary["out"] = str(out)
    return summary
