"""Executors that run the pipeline's per-shard tasks: in-process, on local cores, or on Dask.

A pipeline step is a list of independent shard tasks (top-level functions with picklable
arguments); the executor only has to map a function over them and return the results in order.
- `LocalExecutor(workers)`: `workers == 1` runs inline (debuggable, no pickling); otherwise a
  process pool over that many cores (0 = all cores).
- `DaskExecutor(address=None, n_workers=2, ...)`: `dask.distributed.Client` on an existing
  scheduler (`address: tcp://host:8786`) or a `LocalCluster` it starts and closes. Shards are
  files, so every Dask worker must see the pipeline's output directory (a shared filesystem).

    with make_executor("dask", dask={"n_workers": 2, "processes": False}) as ex:
        results = ex.map(task, [(arg1,), (arg2,)])
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

from gptqwen.errors import UserError, require


class LocalExecutor:
    def __init__(self, workers: int = 0):
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self._pool = None

    def map(self, fn: Callable, arg_tuples: Sequence[tuple]) -> list[Any]:
        if self.workers == 1 or len(arg_tuples) <= 1:
            return [fn(*args) for args in arg_tuples]
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(self.workers)
        return self._pool.starmap(fn, arg_tuples, chunksize=1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self._pool is not None:
            self._pool.terminate()
        self.close()


class DaskExecutor:
    """Runs shard tasks as Dask futures; starts a LocalCluster unless given a scheduler address."""

    def __init__(self, address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1, processes: bool = True):
        require("dask", "data", "the Dask executor")
        distributed = require("distributed", "data", "the Dask executor")
        self._cluster = None
        try:
            if address:
                self.client = distributed.Client(address, timeout="30s")
            else:
                self._cluster = distributed.LocalCluster(
                    n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                    dashboard_address=None, silence_logs=40,
                )
                self.client = distributed.Client(self._cluster)
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler at '{address}': {e}; check dask.address") from e

    def map(self, fn: Callable, arg_tuples: Sequence[tuple]) -> list[Any]:
        # pure=False: a re-run after a crash must really run, not reuse a cached result.
        futures = [self.client.submit(fn, *args, pure=False) for args in arg_tuples]
        return self.client.gather(futures)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(kind: str = "local", workers: int = 0, dask: dict | None = None) -> LocalExecutor | DaskExecutor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "dask":
        opts = dict(dask or {})
        unknown = set(opts) - {"address", "n_workers", "threads_per_worker", "processes"}
        if unknown:
            raise UserError(f"unknown dask option(s) {sorted(unknown)}; use address, n_workers, threads_per_worker, processes")
        return DaskExecutor(**opts)
    raise UserError(f"unknown executor '{kind}'; use 'local' or 'dask'")
