"""Map independent work units over workers.

Curation only calls `map_unordered`; a distributed engine (Ray, Dask, Spark) can replace
LocalExecutor by providing the same method, without touching domain code.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator, Protocol


class Executor(Protocol):
    """Anything that can apply a function to independent items and yield results as they finish."""

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Yield `fn(item)` for every item, in completion order."""
        ...


class LocalExecutor:
    """A process pool on this machine; workers=0 runs in the calling process (debugging, tests)."""

    def __init__(self, workers: int = 0):
        self.workers = max(0, int(workers))

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Yield `fn(item)` for every item: in order when in-process, in completion order from the pool."""
        items = list(items)
        if self.workers == 0 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        # fork keeps start-up cheap; work units must not share open file handles (each opens its own).
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=ctx) as pool:
            futures = [pool.submit(fn, item) for item in items]
            for future in as_completed(futures):
                yield future.result()
