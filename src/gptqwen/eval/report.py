"""Where an evaluation's results go: the JSON document (`--output`), one JSONL line per graded sample
(`--samples`) and a figure (`--plot`). Every `gptqwen eval` mode (shots, thinking budget, long context) writes
through `write_outputs`, each file atomically.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable

from gptqwen.utils import atomic_write


def write_outputs(doc: dict, *, output: str | None = None, samples_path: str | None = None,
                  samples: Iterable[dict] = (), plot_path: str | None = None,
                  plot: Callable[[str], object] | None = None) -> None:
    """Write `doc` to `output`, `samples` (dicts, one JSON line each) to `samples_path`, and call `plot(plot_path)`.

    Each target is optional; `samples` is only iterated when `samples_path` is given.
    """
    if output:
        with atomic_write(output) as f:
            json.dump(doc, f, indent=2)
    if samples_path:
        with atomic_write(samples_path) as f:
            for s in samples:
                f.write(json.dumps(s, default=str) + "\n")
    if plot_path and plot is not None:
        plot(plot_path)
        print(f"wrote {plot_path}", file=sys.stderr)
