"""The pathology curation (the curate stage); see curate.py.

`CurateConfig` and `curate_command` are imported when first asked for: the map and search commands import this
package's slide reading, and curate.py's own imports (the video sampler's PyAV among them) cost a map 0.1 s and
65 MB of memory.
"""
import os
from typing import Any

__all__ = ["CORES", "CurateConfig", "curate_command"]

# Cores this process may use (its CPU affinity, not the machine's count): the slide readers', tissue
# checks' and video decoders' threads are sized by it
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def __getattr__(name: str) -> Any:
    if name == "CurateConfig":
        from domains.pathology.curation.curate import PathologyCurateConfig

        return PathologyCurateConfig
    if name == "curate_command":
        from domains.pathology.curation.curate import curate_command

        return curate_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
