"""Map independent work units over workers, surviving workers that die.

Curation only calls `map_unordered`; a distributed engine (Ray, Dask, Spark) can replace
LocalExecutor by providing the same method, without touching domain code.

A unit that kills its worker (the out-of-memory killer, a segfault in a native reader) must not
sink the run: LocalExecutor runs every unit in its own forked process, so a death is pinned on the
unit that caused it. The unit is retried `retries` times, then `on_crash(item, reason)` stands in
for its result and the run goes on.
"""
from __future__ import annotations

import multiprocessing
import signal
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Protocol

CrashHandler = Callable[[Any, str], Any]


class Executor(Protocol):
    """Anything that can apply a function to independent items and yield results as they finish."""

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any], on_crash: CrashHandler) -> Iterator[Any]:
        """Yield `fn(item)` for every item in completion order; `on_crash(item, reason)` for items whose worker died."""
        ...


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals.__members__.values() else str(-code)
        hint = " (the out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code} before returning a result"


def _child(fn: Callable[[Any], Any], item: Any, conn: Connection) -> None:
    try:
        result = fn(item)
    except BaseException:  # noqa: BLE001 - report anything, then exit non-zero: the parent names the unit
        conn.send(("error", traceback.format_exc(limit=20)))
    else:
        conn.send(("ok", result))
    conn.close()


class LocalExecutor:
    """Processes on this machine, one per unit, at most `workers` at once; workers=0 runs in the calling process."""

    def __init__(self, workers: int = 0, retries: int = 1):
        self.workers = max(0, int(workers))
        self.retries = max(0, int(retries))

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any], on_crash: CrashHandler) -> Iterator[Any]:
        """Yield `fn(item)` for every item, in completion order; a worker that dies is retried, then reported."""
        items = list(items)
        if self.workers == 0:
            for item in items:
                yield fn(item)
            return
        # fork keeps start-up cheap; units must not share open file handles (each opens its own).
        ctx = multiprocessing.get_context("fork")
        queue = [(i, 0) for i in range(len(items))]  # (item index, attempts so far)
        running: dict[Any, tuple[int, int, Any, Connection]] = {}  # sentinel -> (index, attempts, process, conn)
        queue.reverse()
        while queue or running:
            while queue and len(running) < self.workers:
                index, attempts = queue.pop()
                receiver, sender = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_child, args=(fn, items[index], sender), daemon=True)
                process.start()
                sender.close()
                running[process.sentinel] = (index, attempts, process, receiver)
            ready = wait([*running, *(entry[3] for entry in running.values())])
            done = {s for s in running if s in ready or running[s][3] in ready}
            for sentinel in done:
                index, attempts, process, receiver = running.pop(sentinel)
                try:  # a dead worker's pipe polls ready and then raises EOFError
                    message = receiver.recv() if receiver.poll() else None
                except (EOFError, OSError):
                    message = None
                process.join()
                receiver.close()
                if message is not None and message[0] == "ok":
                    yield message[1]
                elif message is not None:
                    raise RuntimeError(f"work unit {index} failed in its worker:\n{message[1]}")
                elif attempts < self.retries:
                    queue.append((index, attempts + 1))
                else:
                    yield on_crash(items[index], f"{_describe_exit(process.exitcode)}; tried {attempts + 1} times")
