"""`domainfm curate <domain> ...`: each domain's curate command, imported when it is named."""
from __future__ import annotations

import typer

from pipelines import domain as registry
from pipelines.cli import LazyGroup


class _Domains(LazyGroup):
    @property
    def lazy(self) -> dict[str, str]:  # type: ignore[override]
        return {name: f"domains.{name}.curation:curate_command" for name in registry.names()}


curate_app = typer.Typer(cls=_Domains, no_args_is_help=True)


@curate_app.callback()
def curate() -> None:
    """Curate image-text pairs from a domain's own sources: `domainfm curate <domain> --help`."""
