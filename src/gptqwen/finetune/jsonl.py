"""Reading fine-tuning data: JSONL rows with clear errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from gptqwen.errors import UserError


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

