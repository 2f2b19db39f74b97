"""The ct curation (the curate stage); see curate.py.

`CurateConfig` and `curate_command` are imported when first asked for: `predict ct` imports this package's
volume readers, and curate.py's own imports (pandas, the de-identification, the executors) cost it 0.4 s.
"""
from typing import Any

__all__ = ["CurateConfig", "curate_command"]


def __getattr__(name: str) -> Any:
    if name == "CurateConfig":
        from domains.ct.curation.curate import CTCurateConfig

        return CTCurateConfig
    if name == "curate_command":
        from domains.ct.curation.curate import curate_command

        return curate_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
