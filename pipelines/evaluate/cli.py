"""`domainfm evaluate`: options only; the work is pipelines.evaluate.stage.evaluate_domain."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def evaluate_command(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    model: Annotated[Path, typer.Option("--model", help="Trained model folder (from `domainfm train`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics (CLIP_benchmark JSON, DVC metrics).")],
    plots: Annotated[Path, typer.Option("--plots", help="Folder for plots.")],
    zeroshot: Annotated[Optional[Path], typer.Option("--zeroshot", help="Held-out zero-shot set.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Curated pairs folder; its test split is the retrieval set.")] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml holding the stage's settings.")] = Path("params.yaml"),
) -> None:
    """Score the base and the trained model side by side."""
    from pipelines.evaluate.clip import format_table
    from pipelines.evaluate.stage import evaluate_domain

    typer.echo(format_table(evaluate_domain(domain, model, zeroshot, data, out, plots, params)))
