"""User-facing errors.

Anything a user can fix (a bad path, an unknown preset, a malformed file, an out-of-range value)
raises `UserError` with one sentence saying what is wrong and how to fix it. The CLI prints it as
a single line and exits non-zero, without a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by user input; its message is shown as-is, without a traceback."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return a ' Did you mean: a, b?' suffix naming the candidates closest to `name` (or '')."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def require(package: str, extra: str, feature: str):
    """Import an optional dependency or raise a UserError naming the extra that provides it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise UserError(
            f"{feature} needs the '{package}' package, which is not installed; "
            f"install it with: pip install 'gptqwen[{extra}]'"
        ) from e
