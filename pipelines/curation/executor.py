"""Map independent work units over workers, surviving workers that die.

Curation only calls `map_unordered`, so the engine is a setting (`curate.executor`, or
`--executor`): `LocalExecutor` (processes on this machine) or `RayExecutor` (Ray tasks on a
cluster, or on a local Ray started for the run). Domain code never knows which.

A unit that kills its worker (the out-of-memory killer, a segfault in a native reader) must not
sink the run: each unit runs in its own process (LocalExecutor) or Ray worker, so a death is
pinned on the unit that caused it. The unit is retried `retries` times, then `on_crash(item,
reason)` stands in for its result and the run goes on.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

from pipelines.errors import InputError

ExecutorName = Literal["local", "ray"]
EXECUTOR_HELP = "local: worker processes here; ray: Ray tasks on $RAY_ADDRESS, else a local Ray. Overrides params."

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


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class RayExecutor:
    """Units as Ray tasks on the cluster at RAY_ADDRESS (or `address`), else on a Ray started on this machine.

    Each task declares its resource needs (`num_cpus`, `num_gpus`); results stream back as tasks
    finish. Units write their staged results to the unit cache, so on a multi-node cluster that
    folder must be on storage every node sees (a shared filesystem); a rerun after a worker or the
    driver dies reuses every unit that finished.
    """

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0, retries: int = 1,
                 local_cpus: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus, self.num_gpus, self.retries, self.local_cpus = num_cpus, num_gpus, max(0, retries), local_cpus

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.address and self.address != "auto":
            host, _, port = self.address.rpartition(":")
            try:  # Ray itself keeps retrying an address where nothing listens; say so at once instead
                socket.create_connection((host.removeprefix("ray://") or "127.0.0.1", int(port)), timeout=5).close()
            except (OSError, ValueError) as exc:
                raise InputError(f"no Ray cluster answers at RAY_ADDRESS={self.address} ({exc})") from None
        ray.init(address=self.address, num_cpus=None if self.address else self.local_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any], on_crash: CrashHandler) -> Iterator[Any]:
        """Yield `fn(item)` as tasks finish; a task whose worker died after its retries yields `on_crash(item, reason)`."""
        import ray
        from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError

        items = list(items)
        if not items:
            return
        self._connect()
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.retries, retry_exceptions=False)(_apply)
        shared = ray.put(fn)  # one copy of the function (a partial carrying the domain's `process`) for every task
        pending = {task.remote(shared, item): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except (WorkerCrashedError, OutOfMemoryError) as exc:
                kind = "killed for lack of memory" if isinstance(exc, OutOfMemoryError) else "died"
                yield on_crash(item, f"Ray worker {kind} while running the unit; tried {self.retries + 1} times")
            except RayTaskError as exc:
                raise RuntimeError(f"a work unit failed in its Ray worker:\n{exc}") from None


def make_executor(name: ExecutorName, workers: int) -> Executor:
    """The executor a curation config names: local processes (`workers` at once) or Ray."""
    if name == "ray":
        return RayExecutor(local_cpus=workers or None)
    return LocalExecutor(workers)
