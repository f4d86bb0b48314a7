"""Streaming document IO: JSONL (plain, .gz, .zst) and Parquet, one dict per document.

Readers yield documents one at a time (Parquet in record batches), so memory stays bounded by
one batch whatever the file size. Bad records never stop a run silently: a malformed JSON line,
a line that is not UTF-8, a record without the text field or with a non-string text is either
skipped and counted (with its file and line number) or fatal, by `on_error`. Writers are atomic:
the file appears complete under its final name or not at all.

    from gptqwen.data.io import read_documents, write_documents
    docs = read_documents("corpus.jsonl.zst", text_key="text", on_error="skip")
    write_documents("out.parquet", docs)
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gptqwen.errors import UserError, require
from gptqwen.utils import atomic_write

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst", ".parquet")
MAX_SAMPLES = 20  # bad records remembered per read, for the report


@dataclass
class ReadStats:
    """What a read saw: good documents and bytes, bad records (counted, the first few kept)."""

    docs: int = 0
    bytes: int = 0
    bad: int = 0
    samples: list[str] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)

    def problem(self, where: str, what: str, on_error: str) -> None:
        message = f"{where}: {what}"
        if on_error == "fail":
            raise UserError(f"{message}; fix the record or run with on_error: skip to skip bad records")
        self.bad += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(message)


def file_format(path: str | os.PathLike) -> tuple[str, str | None]:
    """`("jsonl" | "parquet", None | "gz" | "zst")` from the file name, or a UserError."""
    name = str(path).lower()
    if name.endswith(".parquet"):
        return "parquet", None
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return "jsonl", {".gz": "gz", ".zst": "zst"}.get(Path(name).suffix)
    raise UserError(f"cannot tell the format of '{path}'; use one of the suffixes {', '.join(SUFFIXES)}")


def _open_read(path: Path, compression: str | None) -> IO[bytes]:
    if compression == "gz":
        return gzip.open(path, "rb")
    if compression == "zst":
        zstd = require("zstandard", "data", "zstd-compressed JSONL")
        return io.BufferedReader(zstd.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def expand_inputs(patterns: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by paths, globs or directories (all supported files inside), in sorted order."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        if os.path.isdir(pattern):
            found = sorted(p for p in Path(pattern).rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
        else:
            found = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        if not found or not all(p.exists() for p in found):
            raise UserError(f"input '{pattern}' does not exist or matches no files; check the path")
        for p in found:
            file_format(p)
        files += found
    return files


def _read_jsonl(path: Path, compression: str | None, text_key: str | None, on_error: str, stats: ReadStats) -> Iterator[dict]:
    try:
        with _open_read(path, compression) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    doc = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    stats.problem(where, "line is not valid UTF-8 (binary data?)", on_error)
                    continue
                except json.JSONDecodeError as e:
                    stats.problem(where, f"malformed JSON ({e.msg})", on_error)
                    continue
                if _check(doc, text_key, where, on_error, stats):
                    yield doc
    except (OSError, EOFError) as e:  # truncated or corrupt gzip/zstd stream
        if isinstance(e, FileNotFoundError):
            raise UserError(f"input '{path}' does not exist; check the path") from e
        raise UserError(f"cannot read '{path}': {e}; the file is corrupt or not {compression or 'JSONL'}") from e


def _read_parquet(path: Path, text_key: str | None, on_error: str, stats: ReadStats) -> Iterator[dict]:
    pq = require("pyarrow.parquet", "data", "Parquet input")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-Parquet bytes
        raise UserError(f"cannot read '{path}' as Parquet: {e}") from e
    if text_key is not None and text_key not in pf.schema_arrow.names:
        raise UserError(f"'{path}' has no column '{text_key}' (columns: {', '.join(pf.schema_arrow.names)}); set text_key")
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for doc in batch.to_pylist():
            row += 1
            if _check(doc, text_key, f"{path}:row {row}", on_error, stats):
                yield doc


def _check(doc: object, text_key: str | None, where: str, on_error: str, stats: ReadStats) -> bool:
    if not isinstance(doc, dict):
        stats.problem(where, f"record is a JSON {type(doc).__name__}, not an object", on_error)
    elif text_key is None:  # any object will do (e.g. eval items with their own fields)
        stats.docs += 1
        return True
    elif text_key not in doc:
        stats.problem(where, f"record has no '{text_key}' field (fields: {', '.join(list(doc)[:8])})", on_error)
    elif not isinstance(doc[text_key], str):
        stats.problem(where, f"field '{text_key}' is a {type(doc[text_key]).__name__}, not a string", on_error)
    else:
        stats.docs += 1
        stats.bytes += len(doc[text_key].encode())
        return True
    return False


def read_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    text_key: str | None = "text",
    on_error: str = "skip",
    stats: ReadStats | None = None,
    allow_empty: bool = False,
) -> Iterator[dict]:
    """Stream documents from JSONL/Parquet files (globs and directories allowed).

    `text_key=None` accepts any JSON object. `on_error`: "skip" counts bad records in `stats` and goes on; "fail" raises a UserError naming
    the file and line. A file with no records at all is noted in `stats.empty_files` (fatal
    under "fail") unless `allow_empty` (the pipeline's own shards may be empty).
    """
    if on_error not in ("skip", "fail"):
        raise UserError(f"on_error must be 'skip' or 'fail', got '{on_error}'")
    stats = stats if stats is not None else ReadStats()
    for path in expand_inputs(paths):
        kind, compression = file_format(path)
        before = stats.docs + stats.bad
        if kind == "parquet":
            yield from _read_parquet(path, text_key, on_error, stats)
        else:
            yield from _read_jsonl(path, compression, text_key, on_error, stats)
        if stats.docs + stats.bad == before and not allow_empty:
            if on_error == "fail":
                raise UserError(f"input '{path}' is empty (no records); remove it or fill it")
            stats.empty_files.append(str(path))


def write_documents(path: str | os.PathLike, docs: Iterable[dict], batch_size: int = 1024) -> int:
    """Write documents atomically to JSONL (.jsonl/.gz/.zst) or Parquet; returns the count."""
    path = Path(path)
    kind, compression = file_format(path)
    n = 0
    if kind == "parquet":
        pa = require("pyarrow", "data", "Parquet output")
        pq = require("pyarrow.parquet", "data", "Parquet output")
        with atomic_write(path, "wb") as f:
            writer, batch = None, []
            for doc in docs:
                batch.append(doc)
                n += 1
                if len(batch) == batch_size:
                    writer = _write_batch(pa, pq, f, writer, batch)
                    batch = []
            if batch or writer is None:
                writer = _write_batch(pa, pq, f, writer, batch)
            writer.close()
        return n
    with atomic_write(path, "wb") as raw:
        # Compress into the atomic temp file; closing the compressor must not close `raw`.
        if compression == "gz":
            out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
        elif compression == "zst":
            out = require("zstandard", "data", "zstd-compressed JSONL").ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        else:
            out = raw
        for doc in docs:
            out.write(json.dumps(doc, ensure_ascii=False).encode() + b"\n")
            n += 1
        if out is not raw:
            out.close()
    return n


def _write_batch(pa, pq, f, writer, batch: list[dict]):
    if writer is None:
        table = pa.Table.from_pylist(batch) if batch else pa.table({"text": pa.array([], pa.string())})
        writer = pq.ParquetWriter(f, table.schema)
    else:
        table = pa.Table.from_pylist(batch, schema=writer.schema)
    writer.write_table(table)
    return writer
