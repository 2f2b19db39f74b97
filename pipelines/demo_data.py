"""`domainfm demo-data <domain>`: a domain's demo inputs, written by `domains/<name>/demo/`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_data_command(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's raw inputs and held-out set.")],
    params: Annotated[Path, typer.Option("--params", help="params.yaml holding the stage's settings.")] = Path("params.yaml"),
) -> None:
    """Write a domain's embedded demo data (raw inputs plus a held-out zero-shot set)."""
    from pipelines import params as P
    from pipelines.domain import get

    demo = get(domain).demo()
    demo.write_demo_data(out, P.read(params, demo.DemoConfig, domain, "demo"))
    typer.echo(f"wrote {domain} demo data to {out}")
