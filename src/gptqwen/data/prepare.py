"""Text sources -> tokenized shards (see `gptqwen.data.shards` for the format); the CLI is `gptqwen data prepare`.

    gptqwen data prepare shakespeare --out data/shakespeare --train-tokenizer 4096
    gptqwen data prepare corpus/ "more/*.jsonl" --tokenizer qwen --out data/mine --workers 4

Documents are separated by the tokenizer's EOS id. The train/validation split is deterministic and
stratified: the token stream is cut into blocks of `--block-tokens`, and block j goes to validation
when floor((j+1)·f) > floor(j·f) for the validation fraction f, so validation text is spread evenly over
the corpus (and even a single-file corpus gets a validation split). Tokenization runs in worker
processes (ordered, so the output does not depend on the worker count); sources are streamed, so
corpora larger than RAM work. The dataset is built in a temporary folder and renamed into place; an
existing file or a folder this project did not make is never moved or replaced (a UserError instead).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gptqwen.data.shards import INDEX, ShardWriter, dtype_for_vocab, read_index, write_index
from gptqwen.data.sources import Piece, SourceSpec, check_sources, iter_documents
from gptqwen.errors import UserError
from gptqwen.tokenizer import Tokenizer, train_tokenizer
from gptqwen.utils import atomic_dir, refuse_file_in_path

TOKENIZER_DIR = "tokenizer"
TOKENIZER_TRAIN_CHARS = 200_000_000  # a BPE trained on more text than this barely changes


# ---------------------------------------------------------------- tokenizers


def train_bpe(sources: Sequence[Any], vocab_size: int, style: str = "qwen", on_error: str = "fail", text_key: str = "text",
              progress: bool = False):  # fmt: skip
    """Train a byte-level BPE on (the first ~200 MB of) the sources."""
    texts, total = [], 0
    for piece in iter_documents(sources, on_error=on_error, text_key=text_key, warn=lambda m: None):
        if total >= TOKENIZER_TRAIN_CHARS:
            break
        texts.append(piece.text)
        total += len(piece.text)
    if not total:
        raise UserError(f"the corpus {[SourceSpec.parse(s).spec for s in sources]} is empty; add text")
    return train_tokenizer(texts, vocab_size, style=style, show_progress=progress)


def document_separator(tok) -> int:
    """The id put between documents: <|endoftext|> where the vocabulary has it (GPT and Qwen pretraining), else EOS."""
    sep = tok.token_to_id("<|endoftext|>")
    if sep is None:
        sep = tok.eos_id
    if sep is None:
        raise UserError("the tokenizer has no end-of-text token to separate documents; choose another tokenizer")
    return sep


def _save_tokenizer(tok, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(directory)


# ---------------------------------------------------------------- tokenization workers

_worker_tok = None
_worker_threads: int | None = None  # None: the tokenizer uses every core (single-process mode)


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tok, _worker_threads
    _worker_tok, _worker_threads = Tokenizer.load(tokenizer_dir), 1  # the pool is the parallelism


def _encode(texts: list[str]) -> list[tuple[np.ndarray, int]]:
    ids = _worker_tok.encode_batch(texts, num_threads=_worker_threads, return_numpy=True)
    return [(x, len(t.encode("utf-8"))) for x, t in zip(ids, texts)]


def _batches(pieces: Iterator[Piece], chars: int = 1 << 20) -> Iterator[list[Piece]]:
    batch, size = [], 0
    for p in pieces:
        batch.append(p)
        size += len(p.text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------- the split


class _Splitter:
    """Cuts the token stream into blocks and routes each block to train or validation."""

    def __init__(self, writers: dict[str, ShardWriter], val_fraction: float, block_tokens: int):
        self.writers, self.f, self.block = writers, val_fraction, block_tokens
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.j = 0  # index of the next block

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += ids.size
        if self.buffered >= self.block:
            stream = np.concatenate(self.buffer)
            n = stream.size // self.block * self.block
            for start in range(0, n, self.block):
                self._route(stream[start : start + self.block])
            self.buffer, self.buffered = [stream[n:]], stream.size - n

    def _route(self, block: np.ndarray) -> None:
        to_val = int((self.j + 1) * self.f) > int(self.j * self.f)
        self.writers["val" if to_val else "train"].write(block)
        self.j += 1

    def finish(self) -> None:
        tail = np.concatenate(self.buffer) if self.buffer else np.empty(0, np.uint32)
        if self.f > 0 and self.writers["val"].total == 0 and tail.size > 1:
            # a corpus smaller than the split granularity still gets a validation split: the tail's end
            cut = tail.size - max(1, int(self.f * tail.size))
            self.writers["train"].write(tail[:cut])
            self.writers["val"].write(tail[cut:])
        elif tail.size:
            self._route(tail)


# ---------------------------------------------------------------- prepare


def check_dataset_target(out: Path, overwrite: bool = False) -> None:
    """Refuse a target that would clobber something: a file, a folder of the user's own (neither empty nor a
    token dataset this project made), or an existing dataset without `overwrite`. Only our datasets are replaced."""
    refuse_file_in_path(out, "the dataset folder (data.dir / --out)")
    if _is_dataset(out):
        if not overwrite:
            raise UserError(f"'{out}' already holds a token dataset; pass --overwrite to replace it or choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"'{out}' is a folder that is not a token dataset made by gptqwen (no valid {INDEX}); it is "
                        "left untouched: choose a new or empty folder for the dataset (data.dir / --out)")


def _is_dataset(out: Path) -> bool:
    try:
        read_index(out)
    except UserError:  # no index.json, someone else's index.json, or a corrupt one
        return False
    return True


def prepare(
    sources: Sequence[Any],
    out: str | os.PathLike,
    tokenizer: str | None = None,
    train_vocab: int | None = None,
    style: str = "qwen",
    val_fraction: float = 0.05,
    block_tokens: int = 1024,
    shard_tokens: int = 100_000_000,
    workers: int = 1,
    on_error: str = "fail",
    text_key: str = "text",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a token dataset at `out` and return its index. Either `tokenizer` or `train_vocab` is given."""
    out = Path(out)
    specs = check_sources(sources)
    if not specs:
        raise UserError("no data sources given; name files, folders, globs or 'shakespeare'")
    if not 0 <= val_fraction < 1:
        raise UserError(f"validation fraction {val_fraction} is out of range; use a value in [0, 1)")
    if block_tokens < 1 or shard_tokens < 1 or workers < 1:
        raise UserError("--block-tokens, --shard-tokens and --workers must be >= 1")
    if (tokenizer is None) == (train_vocab is None):
        raise UserError("choose exactly one of --tokenizer (a preset or file) and --train-tokenizer VOCAB_SIZE")
    if train_vocab is not None and not 256 < train_vocab <= 1_000_000:
        raise UserError(f"--train-tokenizer {train_vocab} is out of range; a byte-level BPE needs 257..1000000 tokens")
    check_dataset_target(out, overwrite)

    if progress:
        what = f"training a {train_vocab}-token {style} BPE, then tokenizing" if train_vocab else "tokenizing"
        print(f"building token dataset {out}: {what} {', '.join(s.spec for s in specs)}", file=sys.stderr)
    if tokenizer:
        tok = Tokenizer.load(tokenizer)
    else:
        tok = train_bpe(specs, train_vocab, style, on_error, text_key, progress and sys.stderr.isatty())
    eos_id = document_separator(tok)
    dtype = dtype_for_vocab(tok.vocab_size)

    with atomic_dir(out) as tmp:
        _save_tokenizer(tok, tmp / TOKENIZER_DIR)
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        splitter = _Splitter(writers, val_fraction, block_tokens)
        os.chmod(tmp, 0o755)  # a temp folder is private; the dataset is not
        stats = _tokenize_into(splitter, specs, tmp / TOKENIZER_DIR, tok, eos_id, workers, on_error, text_key, progress)
        splitter.finish()
        if stats["documents"] == 0 or writers["train"].total + writers["val"].total == 0:
            raise UserError(f"the corpus {[s.spec for s in specs]} is empty (no text after reading every source); add text")
        if writers["train"].total == 0:
            raise UserError(f"the corpus is too small to split ({writers['val'].total} tokens); add text or pass --val-fraction 0")
        tokens = writers["train"].total + writers["val"].total
        index = {
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "eos_id": eos_id,
            "tokenizer": TOKENIZER_DIR,
            "bytes_per_token": stats["bytes"] / max(tokens - stats["documents"], 1),
            "splits": {s: w.finish() for s, w in writers.items()},
            "meta": {
                "sources": [{"source": s.spec, "weight": s.weight} for s in specs],
                "tokenizer": tokenizer or {"train_vocab": train_vocab, "style": style},
                "val_fraction": val_fraction,
                "block_tokens": block_tokens,
                "documents": stats["documents"],
                "bytes": stats["bytes"],
                "tokens": {s: w.total for s, w in writers.items()},
            },
        }
        write_index(tmp, index)
    return read_index(out)


def _encoded_batches(specs, tokenizer_dir: Path, tok, workers: int, on_error: str, text_key: str):
    """Yield (encodings, pieces) per batch, in source order; with workers > 1 a few batches run in parallel."""
    batches = _batches(iter_documents(specs, on_error=on_error, text_key=text_key))
    if workers == 1:
        global _worker_tok
        _worker_tok = tok
        for b in batches:
            yield _encode([p.text for p in b]), b
        return
    # Pool.imap would read the whole corpus ahead; a bounded window of batches keeps memory flat.
    with mp.get_context("spawn").Pool(workers, _init_worker, (str(tokenizer_dir),)) as pool:
        while window := list(itertools.islice(batches, 2 * workers)):
            yield from zip(pool.map(_encode, [[p.text for p in b] for b in window]), window)


def _tokenize_into(splitter: _Splitter, specs, tokenizer_dir: Path, tok, eos_id: int, workers, on_error, text_key,
                   progress) -> dict[str, int]:
    stats = {"documents": 0, "bytes": 0}
    open_doc = False  # the current document has tokens, so an EOS is owed at its end
    eos = np.array([eos_id], dtype=np.uint32)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("tokenizing")
        for encodings, pieces in _encoded_batches(specs, tokenizer_dir, tok, workers, on_error, text_key):
            for (ids, nbytes), piece in zip(encodings, pieces):
                if ids.size:
                    splitter.add(ids)
                    open_doc = True
                stats["bytes"] += nbytes
                if piece.last and open_doc:
                    splitter.add(eos)
                    stats["documents"] += 1
                    open_doc = False
            bar.update(task, description=f"tokenizing: {stats['documents']:,} documents, {stats['bytes'] / 1e6:,.1f} MB")
    return stats


def ensure_dataset(sources: Sequence[Any], out: str | os.PathLike, progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Reuse the dataset at `out` when it was built from the same sources and settings; else build it.

    With no sources, the dataset at `out` is used as it is (e.g. one made by `gptqwen data prepare`).
    A dataset built from something else is never overwritten: that is a UserError naming the fix.
    """
    out = Path(out)
    if not sources:
        return read_index(out)
    check_dataset_target(out, overwrite=True)  # a file or a folder of the user's own is never built over
    if (out / INDEX).exists():
        index = read_index(out)
        meta = index.get("meta", {})
        wanted = {
            "sources": [{"source": s.spec, "weight": s.weight} for s in map(SourceSpec.parse, sources)],
            "tokenizer": kwargs.get("tokenizer") or {"train_vocab": kwargs.get("train_vocab"), "style": kwargs.get("style", "qwen")},
            "val_fraction": kwargs.get("val_fraction", 0.05),
        }
        if all(meta.get(k) == v for k, v in wanted.items()):
            return index
        raise UserError(f"'{out}' holds a token dataset built from other sources or settings; "
                        "delete it, set data.dir to a new folder, or pass data.sources=[] to train on it as it is")
    return prepare(sources, out, progress=progress, **kwargs)
