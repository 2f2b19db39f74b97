"""The pathology curation (the curate stage); see curate.py.

`CurateConfig` and `curate_command` are imported when first asked for: the map and search commands import this
package's slide reading, and curate.py's own imports (the video sampler's PyAV among them) cost a map 0.1 s and
65 MB of memory.
"""
from typing import Any

__all__ = ["CurateConfig", "curate_command"]


def __getattr__(name: str) -> Any:
    if name == "CurateConfig":
        from domains.pathology.curation.curate import PathologyCurateConfig

        return PathologyCurateConfig
    if name == "curate_command":
        from domains.pathology.curation.curate import curate_command

        return curate_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
