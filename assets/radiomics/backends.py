"""Parallel backends for case extraction: a local process pool or a dask.distributed cluster.

Both run the same picklable function on the same argument tuples and yield ``(index, outcome)``
as tasks complete, so the caller (the parent process) can write finished batches and report
progress while the rest is still running. ``outcome`` is the function's return value, or the
exception when the task itself could not run (a worker died, a result could not be sent back).
Workers never touch the lake: they only compute and return.

- ``local``: ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method (no fork
  of a parent that holds threads: Dagster, polars and DuckDB all start some), ``max_workers``
  processes (0 = every core).
- ``dask``: a ``distributed.Client`` on ``address`` (``tcp://scheduler:8786`` of a dask-jobqueue
  SLURM or Kubernetes cluster; the workers need radlake installed and the landing folder mounted
  at the same path), or ``local:N`` for a ``LocalCluster`` of N single-threaded worker processes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

BACKEND_KINDS = ("local", "dask")


@dataclass(frozen=True)
class Backend:
    """Where extraction runs. ``max_workers`` 0 means all cores (local backend)."""

    kind: str = "local"
    max_workers: int = 0
    address: str = "local:2"

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ValueError(f"backend kind {self.kind!r} unknown: use one of {BACKEND_KINDS}")
        if self.max_workers < 0:
            raise ValueError(f"max_workers must be >= 0 (0 = all cores), got {self.max_workers}")

    @classmethod
    def parse(cls, spec: Backend | str | None) -> Backend:
        """``Backend`` from ``"local"``, ``"local:4"`` (4 processes), ``"dask"`` or ``"dask:<address>"``."""
        if isinstance(spec, Backend):
            return spec
        if spec is None or spec == "local":
            return cls()
        kind, _, rest = str(spec).partition(":")
        if kind == "local":
            return cls(kind="local", max_workers=int(rest or 0))
        if kind == "dask":
            return cls(kind="dask", address=rest or "local:2")
        raise ValueError(f"backend {spec!r} unknown: use local, local:<N>, dask or dask:<address>")

    def workers(self, n_tasks: int) -> int:
        """Local worker processes for ``n_tasks`` tasks (never more processes than tasks)."""
        cores = os.cpu_count() or 1
        return max(1, min(self.max_workers or cores, n_tasks))

    def parallelism(self) -> int:
        """How many extractions run at once: local workers, or a ``local:N`` dask cluster's N
        (a remote cluster's size is not known in advance: every core of this machine)."""
        if self.kind == "local":
            return self.max_workers or os.cpu_count() or 1
        if self.address.startswith("local:"):
            return int(self.address.split(":", 1)[1] or 1)
        return os.cpu_count() or 1

    def describe(self) -> str:
        if self.kind == "local":
            return f"local process pool ({self.max_workers or os.cpu_count()} workers)"
        return f"dask ({self.address})"


def run_parallel(
    function: Callable[..., Any], argument_tuples: Sequence[tuple], backend: Backend | str | None
) -> Iterator[tuple[int, Any]]:
    """Run ``function(*args)`` for every tuple; yield ``(index, result or exception)`` as they finish.

    Closing the generator early (the caller raised, or was interrupted) cancels what has not
    started and shuts the workers down.
    """
    backend = Backend.parse(backend)
    if not argument_tuples:
        return
    if backend.kind == "local":
        yield from _run_local(function, argument_tuples, backend.workers(len(argument_tuples)))
    else:
        yield from _run_dask(function, argument_tuples, backend.address)


def _run_local(
    function: Callable[..., Any], argument_tuples: Sequence[tuple], workers: int
) -> Iterator[tuple[int, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        futures = {executor.submit(function, *args): i for i, args in enumerate(argument_tuples)}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as error:  # BrokenProcessPool, unpicklable result: report, go on
                outcome = error
            yield futures[future], outcome
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _run_dask(
    function: Callable[..., Any], argument_tuples: Sequence[tuple], address: str
) -> Iterator[tuple[int, Any]]:
    import logging

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if address.startswith("local:"):
        n_workers = int(address.split(":", 1)[1] or 1)
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,  # pyradiomics and SimpleITK are not made for shared threads
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        run = uuid.uuid4().hex[:8]
        futures = [
            client.submit(function, *args, pure=False, key=f"radlake-extract-{run}-{i}")
            for i, args in enumerate(argument_tuples)
        ]
        index = {future.key: i for i, future in enumerate(futures)}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as error:  # KilledWorker and the like: report, go on
                outcome = error
            yield index[future.key], outcome
            future.release()  # the result lives in the parent now; free the worker's copy
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
