"""`domainfm pretrain`: options only; the work is pipelines.pretrain.pretrain.pretrain."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def pretrain_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the base model (open_clip local-dir format).")],
    work: Annotated[Path, typer.Option("--work", help="Folder for the synthetic corpus and run state.")] = Path("data/pretrain"),
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="CSV of per-step training metrics.")] = None,
    general: Annotated[Optional[Path], typer.Option(
        "--general", help="Also write the held-out generic zero-shot set here (CLIP_benchmark wds layout).")] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml holding the stage's settings.")] = Path("params.yaml"),
) -> None:
    """Train the demo's generic base model on an out-of-domain synthetic corpus."""
    from pipelines import params as P
    from pipelines.pretrain.pretrain import PretrainConfig, pretrain

    cfg = P.read(params, PretrainConfig, "pretrain")
    if general is not None:
        from pipelines.pretrain.general_set import write_general_set

        n = write_general_set(general, cfg.general_set, cfg.image_size)
        typer.echo(f"general set: {n} images in {general}")
    typer.echo(json.dumps(pretrain(cfg, out, work, metrics), indent=2))
