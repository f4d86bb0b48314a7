"""Console output of a training run (rank 0): a rich progress bar with ETA, and lines printed above it."""

from __future__ import annotations

from typing import Any


class Console:
    """A progress bar over the run's steps; `print` writes above it. Silent when not `enabled`."""

    def __init__(self, enabled: bool, total: int, start: int, label: str = "train"):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)  # fmt: skip
        self.task = self.progress.add_task(label, total=total, completed=start, info="")

    def __enter__(self) -> Console:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.enabled:
            self.progress.console.print(*args, **kwargs)

    def advance(self, step: int, info: str) -> None:
        self.progress.update(self.task, completed=step, info=info)
