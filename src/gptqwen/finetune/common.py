"""What `gptqwen finetune` and `gptqwen sft` share: loading the base model, saving the result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gptqwen.errors import UserError
from gptqwen.utils import atomic_dir, default_device


def load_base(spec: str, tokenizer_path: str | None = None, device: str | None = None, seed: int = 0,
              scratch: bool = False):
    """`(model, tokenizer)` from --from (run dir, HF dir, .gguf or preset) and optional --tokenizer.

    `scratch=True` keeps the architecture and tokenizer but re-initialises every weight (the
    from-scratch baseline that transfer is measured against)."""
    from gptqwen.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(spec, seed=seed)
    if scratch:
        from gptqwen.model import Transformer

        torch.manual_seed(seed)
        model = Transformer(model.config)
    if tokenizer_path is not None:
        from gptqwen.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(tokenizer_path)
    if tokenizer is None:
        raise UserError(f"'{spec}' comes without a tokenizer; pass --tokenizer FILE (tokenizer.json) or a preset name")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size} embedding rows; use a matching tokenizer")
    model = model.float().to(device or default_device())
    return model, tokenizer


def save_model_dir(out: str | Path, model: nn.Module, tokenizer, files: dict[str, Callable[[Path], None]]) -> Path:
    """Write an HF checkpoint directory (weights, config, tokenizer) plus extra files, atomically:
    a crash leaves either the old directory or the complete new one."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        for name, write in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write(tmp / name)
    return out


def write_jsonl(records: list[dict]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return write


def write_json(obj) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(obj, indent=2) + "\n")
    return write


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
