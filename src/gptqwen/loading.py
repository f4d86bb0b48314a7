"""Load a model and its tokenizer from whatever a user points at.

`load_model_and_tokenizer(spec)` accepts, in this order:
  * a `.gguf` file;
  * a Hugging Face checkpoint directory (config.json + safetensors);
  * a training run directory or one of its `ckpt_<step>` directories (written by `gptqwen pretrain`/`sft`);
  * a preset name (`qwen3-tiny`, ...): randomly initialised weights, for smoke tests and demos.
Every verb that takes `--model` goes through here, so they all accept the same things.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptqwen.errors import UserError


def load_model_and_tokenizer(spec: str, dtype: Any = None, device: str | None = None, seed: int = 0):
    """Return `(model, tokenizer)` for a path or preset name; the tokenizer may be None for presets."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and (path / "config.json").exists()):
        if not path.exists():
            raise UserError(f"model file '{spec}' does not exist")
        from gptqwen.hf import from_pretrained, load_tokenizer

        return from_pretrained(path, dtype=dtype, device=device), load_tokenizer(path)
    if path.exists():
        from gptqwen.train.checkpoint import load_model, load_tokenizer as load_run_tokenizer

        model = load_model(path, dtype=dtype, device=device)
        return model, load_run_tokenizer(path)
    from gptqwen.config import Config

    if "/" in spec or spec.endswith((".json", ".safetensors", ".pt")):
        raise UserError(f"model path '{spec}' does not exist; pass a checkpoint directory, a .gguf file or a preset name")
    cfg = Config.from_name(spec)  # raises a UserError naming close presets
    import torch

    from gptqwen.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model, _preset_tokenizer(cfg)


def _preset_tokenizer(cfg):
    """Full-size Qwen presets get the real Qwen vocabulary; tiny presets have none (their vocab is toy-sized)."""
    if cfg.vocab_size >= 151646 and cfg.name.startswith("qwen"):
        from gptqwen.tokenizer import Tokenizer

        return Tokenizer.from_preset("qwen2.5" if cfg.name.startswith("qwen2") else "qwen")
    return None
