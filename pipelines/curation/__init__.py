"""The curate stage: a domain's work units in, the curated pair format out.

Domains import what they need from here: `Pair`, `Reject`, `UnitResult`, `WorkUnit`,
`CurationConfig` and `run_curation` (see `pipelines.curation.run` for the format).
"""
from pipelines.curation.executor import EXECUTOR_HELP, ExecutorName
from pipelines.curation.run import CurationConfig, Pair, Reject, RowFilter, UnitResult, WorkUnit, run_curation
from pipelines.curation.splits import SPLITS, assign_split

__all__ = [
    "EXECUTOR_HELP", "ExecutorName", "SPLITS", "CurationConfig", "Pair", "Reject", "RowFilter", "UnitResult", "WorkUnit",
    "assign_split", "run_curation",
]
