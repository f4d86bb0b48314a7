"""Compression statistics of a tokenizer on a text (`gptqwen tokenizer stats`).

Bytes per token is the script-neutral measure (higher = fewer tokens for the same text). Tokens per
word is reported only where the text is mostly written in words separated by spaces; in Chinese or
Japanese text a "word" is not delimited, so the figure would mean nothing and is left out.
"""

from __future__ import annotations

import re
from typing import Any

# Scripts written without spaces between words.
_UNSPACED = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f\uac00-\ud7af"
_WORD = re.compile(rf"(?:(?![{_UNSPACED}])[^\W\d_])+")
_LETTER = re.compile(r"[^\W\d_]")


def compression_stats(tok, data: bytes) -> dict[str, Any]:
    ids = tok.encode_bytes(data)
    text = data.decode("utf-8", errors="replace")
    words = _WORD.findall(text)
    letters = len(_LETTER.findall(text))
    spaced = letters > 0 and sum(map(len, words)) >= 0.5 * letters
    n = len(ids)
    return {
        "bytes": len(data),
        "chars": len(text),
        "tokens": n,
        "bytes_per_token": round(len(data) / n, 3) if n else None,
        "chars_per_token": round(len(text) / n, 3) if n else None,
        "words": len(words) if spaced else None,
        "tokens_per_word": round(n / len(words), 3) if spaced and words else None,
    }
