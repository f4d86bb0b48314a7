"""Training checkpoints: write atomically, keep the last N, find the latest, load for inference.

Layout of a run directory (stages of a multi-stage recipe each get a subfolder with the same layout):

    config.yaml             the resolved recipe (model, data, train sections)
    tokenizer/              the tokenizer the run trains with (tokenizer.json)
    ckpt_<step>/            model.safetensors (fp32, full/gathered), optim.pt (torch.save; loaded with
                            weights_only=True), state.json (step, data position, RNG states, model config)
    metrics.jsonl, loss.png

Each `ckpt_<step>` is built in a temporary folder, fsynced and renamed into place (`atomic_dir`), so a
crash at any moment leaves the previous checkpoint intact. Under DDP/FSDP the state is gathered to a
full state dict (`torch.distributed.checkpoint.state_dict`) and rank 0 writes it, so a checkpoint
resumes at any world size and loads without torch.distributed.

    from gptqwen.train.checkpoint import load_model, load_tokenizer
    model = load_model("runs/qwen3-shakespeare")        # latest checkpoint of the run
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from gptqwen.errors import UserError
from gptqwen.utils import atomic_dir, atomic_write

CKPT_RE = re.compile(r"^ckpt_(\d+)$")


# ---------------------------------------------------------------- finding checkpoints


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """`ckpt_<step>` folders of a run (complete ones only: temp folders start with a dot), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its latest; for staged runs the last stage's)."""
    path = Path(path).expanduser()
    if (path / "state.json").exists() and (path / "model.safetensors").exists():
        return path
    ckpts = list_checkpoints(path)
    if not ckpts and (path / "config.yaml").exists():  # a staged run: the stages are subfolders
        import yaml

        raw = yaml.safe_load((path / "config.yaml").read_text()) or {}
        for stage in reversed(raw.get("stages") or []):
            ckpts = list_checkpoints(path / stage["name"])
            if ckpts:
                break
    if not ckpts:
        raise UserError(f"no training checkpoint found in '{path}'; pass a run folder written by gptqwen pretrain or one of its ckpt_<step> folders")
    return ckpts[-1]


# ---------------------------------------------------------------- RNG state (JSON-safe)


def _tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _b64_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    state = {"torch": _tensor_b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_tensor_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_b64_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_b64_tensor(s) for s in state["cuda"]])


# ---------------------------------------------------------------- weights with tied tensors


def _split_aliases(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared tensors: keep one copy of tied weights and remember the aliases."""
    unique, aliases, seen = {}, {}, {}
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.device.type != "meta" else None
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.detach().contiguous()
    return unique, aliases


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    unique, aliases = _split_aliases(state_dict)
    save_file(unique, str(path), metadata={"aliases": json.dumps(aliases), "format": "pt"})


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        tensors = load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"checkpoint weights {path} cannot be read ({e}); resume from an earlier checkpoint") from None
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    return tensors


# ---------------------------------------------------------------- save / load


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any] | None,
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write `ckpt_<step>` atomically, then delete all but the newest `keep_last` checkpoints."""
    run_dir = Path(run_dir)
    target = run_dir / f"ckpt_{step:07d}"
    with atomic_dir(target) as tmp:
        os.chmod(tmp, 0o755)  # temp folders are private; a checkpoint is not
        save_weights(model_state, tmp / "model.safetensors")
        if optim_state is not None:
            torch.save(optim_state, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {ckpt} has an unreadable state.json ({e}); resume from an earlier checkpoint") from None


def load_optimizer_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "optim.pt"
    if not path.exists():
        raise UserError(f"checkpoint {ckpt} has no optimizer state (optim.pt); it can be loaded for inference but not resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"optimizer state {path} cannot be read ({e}); resume from an earlier checkpoint") from None


def load_model(path: str | os.PathLike, dtype: Any = None, device: str | torch.device | None = None):
    """A `Transformer` (eval mode) from a run folder (its latest checkpoint) or a `ckpt_<step>` folder."""
    from gptqwen.config import Config
    from gptqwen.model import Transformer

    ckpt = resolve_checkpoint(path)
    cfg = Config.from_dict(read_state(ckpt)["model_config"])
    model = Transformer(cfg)
    try:
        model.load_state_dict(load_weights(ckpt / "model.safetensors"))
    except RuntimeError as e:
        raise UserError(f"checkpoint {ckpt} does not match its model config ({str(e).splitlines()[0]})") from None
    if dtype is not None:
        model = model.to(_dtype(dtype))
    if device is not None:
        model = model.to(device)
    return model.eval()


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(names)}")
    return names[dtype]


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder that owns a run or checkpoint folder (the first ancestor holding tokenizer/)."""
    path = Path(path).expanduser().resolve()
    for p in (path, *path.parents):
        if (p / "tokenizer").is_dir():
            return p
    raise UserError(f"no tokenizer/ folder found in '{path}' or above it; is it a gptqwen run folder?")


def load_tokenizer(path: str | os.PathLike):
    """The `Tokenizer` a run trained with, from the run folder or one of its checkpoint folders."""
    from gptqwen.data.prepare import load_tokenizer as load_spec

    return load_spec(str(run_dir_of(path) / "tokenizer"))


def write_config(run_dir: Path, recipe_dict: dict[str, Any]) -> None:
    import yaml

    with atomic_write(run_dir / "config.yaml") as f:
        yaml.safe_dump(recipe_dict, f, sort_keys=False)
