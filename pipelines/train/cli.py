"""`domainfm train`: options only; the work is pipelines.train.stage.train_domain."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def train_command(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    data: Annotated[Path, typer.Option("--data", help="Curated pairs folder (from `domainfm curate`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model.")],
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="CSV of per-step training metrics.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    adapt_mode: Annotated[Optional[str], typer.Option(
        "--adapt-mode", help="Override <domain>.adapt.mode (lora, full, frozen), e.g. a full fine-tuning twin.")] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml holding the stage's settings.")] = Path("params.yaml"),
) -> None:
    """Train the domain's model on its curated pairs (open_clip adaptation or the 3D dual encoder)."""
    from pipelines.train.stage import train_domain

    typer.echo(json.dumps(train_domain(domain, data, out, params, metrics, resume, adapt_mode), indent=2))
