"""Token shards on disk: writer, index and a memory-mapped reader.

A dataset directory holds
  index.json          {"format": "gptqwen-tokens", "version": 1, "dtype": "uint16"|"uint32", "vocab_size",
                       "eos_id", "tokenizer": "tokenizer" (folder beside the index), "bytes_per_token",
                       "splits": {"train": [{"file", "tokens", "blake2b"}...], "val": [...]}, "meta": {...}}
  train_000000.bin    raw little-endian token ids (numpy `tofile`), one file per shard
  val_000000.bin
The dtype is uint16 when every id fits (vocab <= 65536), else uint32. `TokenDataset(dir, split)` checks
every shard's size against the index (a truncated shard is an error, not silent garbage) and can verify
checksums; reads are windows `[start, start + n)` across shard boundaries.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from gptqwen.errors import UserError
from gptqwen.utils import atomic_write

INDEX = "index.json"
FORMAT = "gptqwen-tokens"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Append token ids for one split; rolls over to a new shard file every `shard_tokens` tokens.

    Files are written under `directory` (a temporary build folder: the caller renames it into place,
    so a crash never leaves a half-written dataset where a reader could find it).
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int = 100_000_000):
        self.directory, self.split, self.dtype, self.shard_tokens = Path(directory), split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self._count = 0
        self.total = 0  # tokens written so far

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        while ids.size:
            if self._file is None:
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self._file = open(self.directory / name, "wb")
                self.shards.append({"file": name, "tokens": 0})
                self._count = 0
            room = self.shard_tokens - self._count
            head, ids = ids[:room], ids[room:]
            head.astype(self.dtype, copy=False).tofile(self._file)
            self._count += head.size
            self.total += head.size
            if self._count >= self.shard_tokens:
                self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1]["tokens"] = self._count
            self._file = None

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        for shard in self.shards:
            shard["blake2b"] = _file_hash(self.directory / shard["file"])
        return self.shards


def write_index(directory: Path, index: dict[str, Any]) -> None:
    with atomic_write(Path(directory) / INDEX) as f:
        json.dump({"format": FORMAT, "version": 1, **index}, f, indent=2)


def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check `index.json`; every problem is a UserError naming the file."""
    path = Path(directory) / INDEX
    if not path.exists():
        raise UserError(f"'{directory}' is not a token dataset (no {INDEX}); "
                        f"create one with: gptqwen data prepare SOURCES --out {directory}")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); rebuild the dataset with gptqwen data prepare") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("splits"), dict):
        raise UserError(f"{path} is not a gptqwen token index; rebuild the dataset with gptqwen data prepare")
    if index.get("dtype") not in ("uint16", "uint32"):
        raise UserError(f"{path} names an unsupported dtype {index.get('dtype')!r}; rebuild the dataset")
    return index


class TokenDataset:
    """All shards of one split as one virtual array of token ids (memory-mapped, read-only)."""

    def __init__(self, directory: str | os.PathLike, split: str = "train", verify: bool = False):
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        if split not in self.index["splits"] or not self.index["splits"][split]:
            have = ", ".join(k for k, v in self.index["splits"].items() if v) or "none"
            raise UserError(f"token dataset '{directory}' has no '{split}' split (it has: {have}); "
                            "re-run gptqwen data prepare with a validation fraction > 0")
        self.split, self.dtype = split, np.dtype(self.index["dtype"])
        self.vocab_size, self.eos_id = int(self.index["vocab_size"]), self.index.get("eos_id")
        self._arrays: list[np.memmap] = []
        for shard in self.index["splits"][split]:
            path = self.directory / shard["file"]
            expected = int(shard["tokens"]) * self.dtype.itemsize
            size = path.stat().st_size if path.exists() else -1
            if size != expected:
                what = "is missing" if size < 0 else f"has {size} bytes but the index expects {expected}"
                raise UserError(f"shard {path} {what} (truncated or corrupt); rebuild the dataset with gptqwen data prepare")
            if verify and shard.get("blake2b") and _file_hash(path) != shard["blake2b"]:
                raise UserError(f"shard {path} fails its checksum (corrupt); rebuild the dataset with gptqwen data prepare")
            if expected:
                self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r"))
        self._starts = np.cumsum([0] + [a.size for a in self._arrays])
        if verify:
            self._check_ids()

    def _check_ids(self) -> None:
        for a in self._arrays:
            if a.size and int(a.max()) >= self.vocab_size:
                raise UserError(f"token dataset '{self.directory}' holds ids >= its vocab size {self.vocab_size} (corrupt); rebuild it")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Token ids `[start, start + n)` as int64, crossing shard boundaries when needed."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"window [{start}, {start + n}) outside a split of {len(self)} tokens")
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < n:
            lo = start + filled - int(self._starts[i])
            take = min(n - filled, self._arrays[i].size - lo)
            out[filled : filled + take] = self._arrays[i][lo : lo + take]
            filled += take
            i += 1
        return out

    @property
    def bytes_per_token(self) -> float | None:
        """UTF-8 bytes of source text per token (for bits-per-byte), measured when the dataset was built."""
        return self.index.get("bytes_per_token")
