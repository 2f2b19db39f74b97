"""The pathology curation (the curate stage); see curate.py."""
from domains.pathology.curation.curate import PathologyCurateConfig as CurateConfig
from domains.pathology.curation.curate import curate_command

__all__ = ["CurateConfig", "curate_command"]
