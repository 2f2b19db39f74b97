"""The pathology curation (the curate stage); see curate.py.

`CurateConfig` and `curate_command` are imported when first asked for: the map and search commands import this
package's slide reading, and curate.py's own imports (the video sampler's PyAV among them) cost a map 0.1 s and
65 MB of memory.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

__all__ = ["CORES", "THREADS", "CurateConfig", "curate_command", "in_threads"]

# Cores this process may use (its CPU affinity, not the machine's count)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
# Threads a worker runs the work that lets go of the GIL on: the slide readers (slides.READ_THREADS), the tissue
# checks' bands (tissue.THREADS) and the video's GOP decoders (video.DECODE_THREADS) each take this many
THREADS = max(1, min(4, CORES))


def in_threads(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    """`[fn(item) for item in items]`, in order, on up to `threads` threads (in this one when there is one thread or item).

    For work that lets go of the GIL for most of its time: OpenSlide's decoding, Pillow's resampling,
    numpy on arrays of more than a small tile.
    """
    if threads < 2 or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def __getattr__(name: str) -> Any:
    if name == "CurateConfig":
        from domains.pathology.curation.curate import PathologyCurateConfig

        return PathologyCurateConfig
    if name == "curate_command":
        from domains.pathology.curation.curate import curate_command

        return curate_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
