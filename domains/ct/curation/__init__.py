"""The ct curation (the curate stage); see curate.py."""
from domains.ct.curation.curate import CTCurateConfig as CurateConfig
from domains.ct.curation.curate import curate_command

__all__ = ["CurateConfig", "curate_command"]
