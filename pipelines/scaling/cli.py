"""`domainfm scaling ...`: the data-scaling sweep's commands, each imported when it runs."""
from __future__ import annotations

import typer

from pipelines.cli import LazyGroup


class _Scaling(LazyGroup):
    lazy = {
        "subset": "pipelines.scaling.sweep:subset_command",
        "run": "pipelines.scaling.sweep:sweep_run_command",
        "report": "pipelines.scaling.report:report_command",
        "index": "pipelines.scaling.report:index_command",
    }


scaling_app = typer.Typer(cls=_Scaling, no_args_is_help=True)


@scaling_app.callback()
def scaling() -> None:
    """Data-scaling sweep: nested subsets, runs, fitted reports."""
