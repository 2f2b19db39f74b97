"""The remote sensing curation (the curate stage); see curate.py."""
from domains.remote_sensing.curation.curate import RSCurateConfig as CurateConfig
from domains.remote_sensing.curation.curate import curate_command

__all__ = ["CurateConfig", "curate_command"]
