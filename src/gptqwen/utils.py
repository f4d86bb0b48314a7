"""Small shared helpers: atomic file writes, device/dtype choice, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gptqwen.errors import UserError

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Write `path` through a temp file in the same directory, fsync it, then rename over the target.

    A crash at any moment leaves either the old file or the new one, never a half-written file. A folder at
    `path`, or a file where its folder should be, is a UserError (not a traceback from mkdir or rename).
    """
    path = Path(path)
    refuse_file_in_path(path.parent, f"the output '{path}': its folder")
    if path.is_dir():
        raise UserError(f"the output '{path}' is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name and rename it into place when the block succeeds.

    An existing folder at `path` is replaced (callers decide whether it may be); a file there, or above it, is
    a user's and never is: that is a UserError before any work."""
    path = Path(path)
    refuse_file_in_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_file_in_path(path: str | os.PathLike, what: str = "the output folder") -> None:
    """A UserError (before any work) when `path`, or the nearest existing folder above it, is a file: a user's
    file is never replaced by, or made the parent of, a folder this project writes."""
    full = Path(path).absolute()
    nearest = next(p for p in (full, *full.parents) if p.exists())
    if not nearest.is_dir():
        where = "is a file" if nearest == full else f"lies under the file '{nearest}'"
        raise UserError(f"{what} '{path}' {where}; it must be a folder: choose another path")


def refuse_nonempty_folder(path: str | os.PathLike, overwrite: bool) -> None:
    """A UserError (before any work) when `path` exists and is not an empty folder, unless `overwrite`."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UserError(f"'{path}' exists and is not an empty folder; pass --overwrite or choose another folder")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Render a matplotlib figure to `path` through `atomic_write` (format from the suffix, PNG without one)."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", **({"dpi": dpi} if dpi else {}))
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def print_json(obj: Any) -> None:
    """Print one JSON document to stdout (the `--json` output of CLI verbs)."""
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


# dtype names users write (CLI flags, recipes, config files) -> torch dtype attribute names
_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16", "half": "float16"}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """The one dtype parser: a torch dtype, or a name such as `float32`/`fp32`, `bfloat16`/`bf16`, `float16`/`fp16`."""
    import torch  # deferred: data and tokenizer workers import this module and need no torch

    if isinstance(value, torch.dtype):
        return value
    name = _DTYPE_NAMES.get(str(value).lower())
    if name is None:
        raise UserError(f"unknown dtype '{value}'; use float32, bfloat16 or float16 (or fp32, bf16, fp16)")
    return getattr(torch, name)


def pick_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The one device picker: `auto` (or None) takes CUDA, then MPS, then the CPU; `cuda` means this
    process's GPU (`local_rank` under torchrun). A device that does not exist here is a UserError."""
    import torch  # deferred, as in parse_dtype

    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"unknown device '{name}' ({e}); use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device '{name}' asked for, but MPS is not available here; use --device cpu or auto")
    return device


def read_jsonl(path: str | Path, what: str = "data") -> list[tuple[int, dict]]:
    """`(line_number, row)` for every non-blank line of a JSONL file whose rows are JSON objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file '{path}' does not exist; pass a JSONL file with one JSON object per line")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: malformed JSON ({e.msg}); each line must be one JSON object") from e
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    if not rows:
        raise UserError(f"{what} file '{path}' has no rows")
    return rows

