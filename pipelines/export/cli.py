"""`domainfm export`: options only; the work is pipelines.export.stage.export_domain."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def export_command(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    model: Annotated[Path, typer.Option("--model", help="Trained model folder.")],
    out: Annotated[Path, typer.Option("--out", help="Export folder.")],
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="Evaluation folder (from `domainfm evaluate`).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Curated pairs folder (for the card's provenance).")] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml holding the stage's settings.")] = Path("params.yaml"),
) -> None:
    """Export the trained model for stock tools, with a model card."""
    from pipelines.export.stage import export_domain

    typer.echo(f"exported {domain} to {export_domain(domain, model, out, metrics, data, params)}")
