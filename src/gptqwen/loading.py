"""Load a model and its tokenizer from whatever a user points at: the one place that decides what a model spec is.

A model spec is, in this order:
  * a `.gguf` file (llama.cpp; read by `gptqwen.gguf`);
  * a Hugging Face checkpoint directory: config.json + safetensors (read by `gptqwen.hf`);
  * a training run directory or one of its `ckpt_<step>` directories (written by `gptqwen pretrain`/`sft`;
    read by `gptqwen.train.checkpoint`), whose tokenizer is the run's `tokenizer/` folder;
  * a Hugging Face Hub id (`Qwen/Qwen3-0.6B`: `org/name` that is no local path), resolved to a snapshot
    folder in the Hub cache, downloaded when missing (`gptqwen.hub`);
  * a preset name (`qwen3-tiny`, ...): an architecture with randomly initialised weights, for smoke tests and
    demos, only when asked for with `random_weights=True` (`--random-weights`): a preset is not a trained model.
Every verb that takes `--model` goes through here, so they all accept the same things. Models are built
here (on the meta device, then filled by the format's reader), so the readers never import the model.

    from gptqwen.loading import from_pretrained, load_model_and_tokenizer
    model = from_pretrained("path/to/Qwen3-0.6B")              # HF dir, .gguf or Hub id
    model, tok = load_model_and_tokenizer("runs/qwen3-shakespeare", dtype="bf16", device="auto")
    model, tok = load_model_and_tokenizer("qwen3-tiny", random_weights=True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gptqwen import gguf, hf, hub, peft_format
from gptqwen.config import Config, config_from_hf
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.train.checkpoint import load_model as load_run_model
from gptqwen.utils import parse_dtype, pick_device

RUN_TOKENIZER_DIR = "tokenizer"  # a run folder's tokenizer (`gptqwen data prepare` writes it beside the shards)


def _kind(spec: str | os.PathLike) -> tuple[str, Path]:
    """`("gguf" | "hf" | "run" | "preset", path)` for a model spec (a Hub id becomes "hf" with its snapshot
    folder); a UserError for a path that is none of them."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file '{spec}' does not exist; pass the path of a .gguf model file")
        return "gguf", path
    if path.is_dir() and (path / "config.json").exists():
        return "hf", path
    if path.exists():
        return "run", path
    if hub.is_hub_id(str(spec)):
        return "hf", hub.snapshot(str(spec))
    if "/" in str(spec) or os.sep in str(spec) or str(spec).endswith((".json", ".safetensors", ".pt")):
        raise UserError(f"model path '{spec}' does not exist; pass a checkpoint directory, a .gguf file, a Hugging "
                        "Face Hub id (org/name) or a preset name")
    return "preset", path


def _load_dtype(dtype: Any, stored: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype to load in: the user's (a name or torch dtype), `auto` = as stored, None = fp32 on CPU (bf16/fp16
    matmuls are slow there) and as stored on accelerators."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else stored
    if dtype == "auto":
        return stored
    return parse_dtype(dtype)


def from_pretrained(path: str | os.PathLike, dtype: Any = None, device: str | torch.device | None = None) -> Transformer:
    """A `Transformer` (eval mode) from an HF checkpoint directory, a Hugging Face Hub id or a `.gguf` file."""
    kind, path = _kind(path)
    if kind != "gguf" and not path.is_dir():
        raise UserError(f"'{path}' is not a checkpoint directory; pass a folder with config.json and *.safetensors, "
                        "a Hugging Face Hub id (org/name) or a .gguf file")
    device = pick_device(device or "cpu")
    if kind == "gguf":  # GGUF weights are dequantised to fp32 anyway: that is the "stored" dtype
        dtype = _load_dtype(dtype, torch.float32, device)
        hf_cfg, tensors = gguf.read_as_hf(path, dtype)
        cfg = config_from_hf(hf_cfg, name=path.stem)
        shapes = {k: tuple(t.shape) for k, t in tensors.items()}
        return _filled(cfg, shapes, tensors.pop, dtype, device, None, f"GGUF file '{path}' does not match its metadata")
    ckpt = hf.read_checkpoint(path)  # a UserError for a folder without config.json
    dtype = _load_dtype(dtype, ckpt.stored_dtype, device)
    return _filled(ckpt.config, ckpt.shapes, ckpt.get_tensor, dtype, device, ckpt.rules,
                   "checkpoint does not match its config.json")


def _filled(cfg: Config, shapes, get_tensor, dtype: torch.dtype, device: torch.device, rules, source: str) -> Transformer:
    with torch.device("meta"):  # no initialisation: the weights come from the file
        model = Transformer(cfg)
    return hf.fill_model(model, shapes, get_tensor, dtype, device, rules, source)


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder that owns a run or checkpoint folder (the first ancestor holding tokenizer/)."""
    path = Path(path).expanduser().resolve()
    for p in (path, *path.parents):
        if (p / RUN_TOKENIZER_DIR).is_dir():
            return p
    raise UserError(f"no {RUN_TOKENIZER_DIR}/ folder found in '{path}' or above it; is it a gptqwen run folder?")


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer that comes with a model spec (None for an HF directory without tokenizer.json and for
    presets without a shipped vocabulary). A tokenizer spec of its own (preset, file) is `Tokenizer.load`."""
    kind, path = _kind(spec)
    if kind == "gguf":
        return gguf.read_tokenizer(path)
    if kind == "hf":
        return Tokenizer.from_file(path) if (path / "tokenizer.json").exists() else None
    if kind == "run":
        return Tokenizer.from_file(run_dir_of(path) / RUN_TOKENIZER_DIR)
    return _preset_tokenizer(Config.from_name(str(spec)))


def load_model_and_tokenizer(spec: str, dtype: Any = None, device: str | torch.device | None = None,
                             seed: int = 0, random_weights: bool = False,
                             adapter: str | os.PathLike | None = None) -> tuple[Transformer, Tokenizer | None]:
    """`(model, tokenizer)` for a model spec (see the module docstring); the tokenizer may be None for presets.
    `adapter`: a PEFT LoRA adapter folder, merged into the loaded weights (`gptqwen.peft_format`).

    A preset name is refused unless `random_weights` allows it: it names an architecture, not trained weights
    (training from scratch passes True: there random weights are the starting point)."""
    if adapter is not None:
        model, tok = load_model_and_tokenizer(spec, dtype, device, seed, random_weights)
        peft_format.load_adapter(model, adapter, merge=True)
        return model, tok
    kind, path = _kind(spec)
    if kind in ("gguf", "hf"):
        return from_pretrained(path, dtype=dtype, device=device), load_tokenizer(path)
    if kind == "run":
        model = load_run_model(path, dtype=dtype, device=None if device is None else pick_device(device))
        return model, load_tokenizer(path)
    cfg = Config.from_name(spec)  # raises a UserError naming close presets
    _check_random_weights(spec, cfg, random_weights)
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    if dtype is not None:
        model = model.to(parse_dtype(dtype))
    if device is not None:
        model = model.to(pick_device(device))
    return model, _preset_tokenizer(cfg)


def _check_random_weights(spec: str, cfg: Config, random_weights: bool) -> None:
    """A preset builds untrained weights: only when asked for, and only when they fit in memory (they are
    built in float32 on the CPU first)."""
    if not random_weights:
        raise UserError(f"'{spec}' is a preset: an architecture with randomly initialised weights, not a trained "
                        "model, so it would generate noise. Pass trained weights instead (a checkpoint folder, a "
                        f"run folder, a .gguf file or a Hub id such as Qwen/Qwen3-0.6B), or add --random-weights "
                        f"(random_weights=True in Python) to run the untrained {cfg.name} architecture on purpose")
    need = cfg.num_params() * 4
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if have and need > have:
        raise UserError(f"preset '{spec}' has {cfg.num_params() / 1e9:.1f}B parameters ({need / 2**30:.0f} GiB in "
                        f"float32), more than this machine's {have / 2**30:.0f} GiB of memory; choose a smaller preset")


def _preset_tokenizer(cfg: Config) -> Tokenizer | None:
    """Full-size Qwen presets get the real Qwen vocabulary; tiny presets have none (their vocab is toy-sized)."""
    if cfg.vocab_size >= 151646 and cfg.name.startswith("qwen"):
        return Tokenizer.from_preset("qwen2.5" if cfg.name.startswith("qwen2") else "qwen")
    return None
