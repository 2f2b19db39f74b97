"""`domainfm scaling ...`: the data-scaling sweep's commands, grouped for pipelines/cli.py.

Register with `app.add_typer(scaling_app, name="scaling")`.
"""
from __future__ import annotations

import typer

from pipelines.scaling_report import index_command, report_command
from pipelines.scaling_sweep import subset_command, sweep_run_command

scaling_app = typer.Typer(no_args_is_help=True, help="Data-scaling sweep: nested subsets, runs, fitted reports.")
scaling_app.command("subset")(subset_command)
scaling_app.command("run")(sweep_run_command)
scaling_app.command("report")(report_command)
scaling_app.command("index")(index_command)
