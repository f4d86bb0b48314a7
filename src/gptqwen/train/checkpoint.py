"""Training checkpoints: write atomically, keep the last N, find the latest, load for inference.

Layout of a run directory (stages of a multi-stage recipe each get a subfolder with the same layout):

    config.yaml             the resolved recipe (model, data, train sections)
    tokenizer/              the tokenizer the run trains with (tokenizer.json)
    ckpt_<step>/            a checkpoint in one of two formats (`train.ckpt_format`), both with
                            state.json (step, data position, RNG states, model config, format)
    metrics.jsonl, loss.png, tb/ (TensorBoard events)

- gathered (default): model.safetensors (fp32, full) + optim.pt (torch.save; loaded with
  weights_only=True). Under DDP/FSDP the state is gathered to one full state dict
  (`torch.distributed.checkpoint.state_dict`) and rank 0 writes it. Simple, but rank 0 must hold it all.
- sharded: dcp/ written by `torch.distributed.checkpoint` (every rank writes its own FSDP shards in
  parallel, nothing is gathered) + rank_<r>.json (each rank's RNG state). DCP reshards on load, so a
  sharded checkpoint resumes at any world size and loads in a single process (`load_model`, export).
  Torch's own converter also works: `python -m torch.distributed.checkpoint.format_utils
  dcp_to_torch_save ckpt_<step>/dcp model.pt`. With several machines the run folder must be on a
  filesystem they all share.

Each `ckpt_<step>` is built in a temporary folder (`.ckpt_<step>.*.tmp`), fsynced and renamed into
place (`atomic_dir`; for sharded checkpoints rank 0 owns the rename after every rank has written), so
a crash at any moment leaves the previous checkpoint intact.

    from gptqwen.train.checkpoint import load_model
    model = load_model("runs/qwen3-shakespeare")        # latest checkpoint of the run
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.utils import atomic_dir, atomic_write, parse_dtype

CKPT_RE = re.compile(r"^ckpt_(\d+)$")
FORMATS = ("gathered", "sharded")


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
    if (path / "state.json").exists() and ((path / "model.safetensors").exists() or is_sharded(path)):
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
        raise UserError(f"no training checkpoint found in '{path}'; pass a run folder written by gptqwen pretrain "
                        "or one of its ckpt_<step> folders")
    return ckpts[-1]


def is_sharded(ckpt: Path) -> bool:
    """True for a checkpoint written with train.ckpt_format=sharded (DCP files in dcp/)."""
    return (Path(ckpt) / "dcp").is_dir()


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
    """Write a gathered `ckpt_<step>` from full state dicts atomically, then keep the newest `keep_last`."""
    run_dir = Path(run_dir)
    target = run_dir / f"ckpt_{step:07d}"
    with atomic_dir(target) as tmp:
        save_weights(model_state, tmp / "model.safetensors")
        if optim_state is not None:
            torch.save(optim_state, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    _prune(run_dir, keep_last)
    return target


def _prune(run_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- live training state (collective under torchrun)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


@contextlib.contextmanager
def _shared_atomic_dir(target: Path) -> Iterator[Path]:
    """`atomic_dir` for a folder every rank writes into: rank 0 creates and renames it, the others join."""
    if not dist.is_initialized():
        with atomic_dir(target) as tmp:
            yield tmp
        return
    if dist.get_rank() == 0:
        with atomic_dir(target) as tmp:
            dist.broadcast_object_list([str(tmp)], src=0)
            yield tmp
            dist.barrier()  # every rank's files are written: now rank 0 may fsync and rename
    else:
        name: list[Any] = [None]
        dist.broadcast_object_list(name, src=0)
        yield Path(name[0])
        dist.barrier()


def save_training_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int = 2,
    fmt: str = "gathered",
) -> Path:
    """Checkpoint a live model (plain, DDP or FSDP2) and its optimizer as `ckpt_<step>`; every rank calls it.

    `state` (step data, model config, ...) goes to state.json; format, world size and RNG are added here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format '{fmt}'; use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    target = run_dir / f"ckpt_{step:07d}"
    state = {**state, "step": step, "format": fmt, "world_size": _world(), "rng": rng_state()}
    if fmt == "gathered":
        msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if _rank() == 0:
            save_checkpoint(run_dir, step, msd, osd, state, keep_last)
    else:
        import torch.distributed.checkpoint as dcp

        msd, osd = get_state_dict(model, optimizer)  # this rank's shards (DTensors under FSDP2): nothing gathered
        with _shared_atomic_dir(target) as tmp:
            with _single_process_ok():
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp / "dcp")
            with atomic_write(tmp / f"rank_{_rank()}.json") as f:
                json.dump({"rng": rng_state()}, f)
            if _rank() == 0:
                (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if _rank() == 0:
            _prune(run_dir, keep_last)
    if dist.is_initialized():
        dist.barrier()  # nobody moves on (or reads the checkpoint) before it is in place
    return target


def restore_training_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a checkpoint of either format into a live model and optimizer, and this rank's RNG; every rank calls it.

    A sharded checkpoint written at another world size is resharded by DCP; the ranks then take rank 0's RNG."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    state = read_state(ckpt)
    rng = state["rng"]
    if is_sharded(ckpt):
        msd, osd = get_state_dict(model, optimizer)  # this rank's share, to be filled in place
        _dcp_load(ckpt, {"model": msd, "optim": osd})
        if state.get("world_size") == _world():
            rng = _read_json(ckpt / f"rank_{_rank()}.json")["rng"]
    else:
        msd, osd = load_weights(ckpt / "model.safetensors"), load_optimizer_state(ckpt)
    try:
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=not is_sharded(ckpt)))  # fmt: skip
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} does not fit this model ({_first_line(e)})") from None
    set_rng_state(rng)


def load_weights_into(model: torch.nn.Module, ckpt: Path) -> None:
    """Fill a plain (unwrapped) model with a checkpoint's weights, either format; not collective."""
    try:
        if is_sharded(ckpt):
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

            msd = get_model_state_dict(model)
            _dcp_load(ckpt, {"model": msd}, collective=False)  # full tensors: each process reads on its own
            set_model_state_dict(model, msd)
        else:
            model.load_state_dict(load_weights(ckpt / "model.safetensors"))
    except (RuntimeError, KeyError) as e:
        raise UserError(f"checkpoint {ckpt} does not match its model config ({_first_line(e)})") from None


def _dcp_load(ckpt: Path, state_dict: dict[str, Any], collective: bool = True) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _single_process_ok():
            dcp.load(state_dict, checkpoint_id=ckpt / "dcp", no_dist=not collective)
    except (Exception, CheckpointException) as e:  # the latter (a BaseException) carries every rank's failure
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        raise UserError(f"sharded checkpoint {ckpt} cannot be read ({type(cause).__name__}: {_first_line(cause)}); "
                        "resume from an earlier checkpoint") from None  # fmt: skip


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns when it runs without a process group; for us that is a normal single-process run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint file {path} is unreadable ({e}); resume from an earlier checkpoint") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def read_state(ckpt: Path) -> dict[str, Any]:
    return _read_json(Path(ckpt) / "state.json")


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
    ckpt = resolve_checkpoint(path)
    cfg = Config.from_dict(read_state(ckpt)["model_config"])
    model = Transformer(cfg)
    load_weights_into(model, ckpt)
    if dtype is not None:
        model = model.to(parse_dtype(dtype))
    if device is not None:
        model = model.to(device)
    return model.eval()


def write_config(run_dir: Path, recipe_dict: dict[str, Any]) -> None:
    import yaml

    with atomic_write(run_dir / "config.yaml") as f:
        yaml.safe_dump(recipe_dict, f, sort_keys=False)
