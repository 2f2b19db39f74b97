"""The pairs curation (the curate stage); see curate.py."""
from domains.pairs.curation.curate import PairsConfig as CurateConfig
from domains.pairs.curation.curate import curate_pairs_command as curate_command

__all__ = ["CurateConfig", "curate_command"]
