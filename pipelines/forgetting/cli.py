"""`domainfm forgetting`: options only; the work is pipelines.forgetting.stage.forgetting_domain."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def forgetting_command(
    domain: Annotated[str, typer.Argument(help="Domain name (an open_clip domain).")],
    model: Annotated[Path, typer.Option("--model", help="The domain's trained (LoRA) model folder.")],
    full: Annotated[Path, typer.Option("--full", help="Its full fine-tuning twin (`domainfm train --adapt-mode full`).")],
    metrics: Annotated[Path, typer.Option("--metrics", help="The evaluation folder of --model (metrics.json, wise.json).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for forgetting.json and wise_full.json.")],
    report: Annotated[Path, typer.Option("--report", help="Markdown report (the forgetting table and WiSE-FT curves).")],
    zeroshot: Annotated[Optional[Path], typer.Option("--zeroshot", help="The domain's held-out zero-shot set.")] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml holding the stage's settings.")] = Path("params.yaml"),
) -> None:
    """Score LoRA and full fine-tuning side by side: in-domain gain, general loss, WiSE-FT curves."""
    from pipelines.forgetting.stage import forgetting_domain

    typer.echo(forgetting_domain(domain, model, full, metrics, zeroshot, out, report, params))
