"""The `domainfm` command line: one command per DVC stage.

Each command's options live in its stage package (`pipelines/<stage>/cli.py`) and are imported only
when that command runs, so a stage loads its own code and nothing else; this module only routes.
"""
from __future__ import annotations

import gc
import importlib
import logging
from typing import Optional

import click
import typer
import typer.core

from pipelines.errors import InputError

# A command's start-up imports about half a million objects that live as long as it does (torch, open_clip,
# transformers, MONAI), and each of CPython's full collections scans them all: with its default of one full
# collection per 10 of the middle generation, start-up ran 7-8 of them, 0.6-1.1 s of a 4.5-6.5 s map or
# prediction. One per 1000 leaves start-up none; a long stage still runs them (benchmarks/collector.py).
FULL_COLLECTION_EVERY = 1000

# command name -> "module:attribute" of a typer command function or a typer.Typer group
COMMANDS: dict[str, str] = {
    "domains": "pipelines.schema:domains_command",
    "params": "pipelines.schema:params_app",
    "pretrain": "pipelines.pretrain.cli:pretrain_command",
    "demo-data": "pipelines.demo_data:demo_data_command",
    "curate": "pipelines.curation.cli:curate_app",
    "train": "pipelines.train.cli:train_command",
    "evaluate": "pipelines.evaluate.cli:evaluate_command",
    "export": "pipelines.export.cli:export_command",
    "forgetting": "pipelines.forgetting.cli:forgetting_command",
    "scaling": "pipelines.scaling.cli:scaling_app",
    "map": "pipelines.analyst_cli:map_app",
    "search": "pipelines.analyst_cli:search_app",
    "predict": "pipelines.analyst_cli:predict_app",
    "notebooks": "pipelines.notebooks:notebooks_command",
}


def load_command(ref: str, name: str) -> click.Command:
    """The click command behind a "module:attribute" reference to a typer function or app."""
    module, _, attr = ref.partition(":")
    target = getattr(importlib.import_module(module), attr)
    if isinstance(target, typer.Typer):
        group = typer.main.get_command(target)
        group.name = name
        return group
    single = typer.Typer(add_completion=False)
    single.command(name)(target)
    return typer.main.get_command(single)


class LazyGroup(typer.core.TyperGroup):
    """A group whose subcommands are imported when they are named."""

    lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand name, without importing them."""
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        """The named subcommand, imported now."""
        command = super().get_command(ctx, name)
        if command is not None or name not in self.lazy:
            return command
        return load_command(self.lazy[name], name)


class _Root(LazyGroup):
    lazy = COMMANDS

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; an InputError becomes `Error: <message>` without a traceback."""
        try:
            return super().invoke(ctx)
        except InputError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Root, add_completion=False, no_args_is_help=True)


@app.callback()
def domainfm() -> None:
    """Curate domain image-text pairs, adapt, evaluate and export CLIP-style models: one command per DVC stage."""


def collect_rarely() -> None:
    """Make CPython's full garbage collections rarer (FULL_COLLECTION_EVERY); the younger generations keep their thresholds."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def main() -> None:  # pragma: no cover
    """Console entry point."""
    collect_rarely()
    logging.basicConfig(level=logging.WARNING)
    app()
