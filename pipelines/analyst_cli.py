"""`domainfm map|search|predict <domain> ...`: the analysts' commands, each defined by its domain.

A domain offers a verb by defining `<verb>_command` (a typer command function) in
`domains/<name>/analyst.py`; the command is imported only when it is named.
"""
from __future__ import annotations

import importlib.util

import typer

from pipelines import domain as registry
from pipelines.cli import LazyGroup

VERBS = {
    "map": "Score every window of a scene or slide with an exported model (zero-shot), as rasters, GeoJSON and pictures.",
    "search": "Find the windows of scenes or slides that best match a text query.",
    "predict": "Predict for one input file (e.g. phenotypes and findings of a CT volume).",
}


def _offering(verb: str) -> dict[str, str]:
    """{domain: "domains.<domain>.analyst:<verb>_command"} for the domains whose analyst module defines the verb."""
    found = {}
    for name in registry.names():
        spec = importlib.util.find_spec(f"domains.{name}.analyst")
        if spec is not None and spec.origin and f"def {verb}_command(" in open(spec.origin).read():
            found[name] = f"domains.{name}.analyst:{verb}_command"
    return found


def _group(verb: str) -> typer.Typer:
    class _Domains(LazyGroup):
        @property
        def lazy(self) -> dict[str, str]:  # type: ignore[override]
            return _offering(verb)

    app = typer.Typer(cls=_Domains, no_args_is_help=True)

    @app.callback(help=VERBS[verb] + f" `domainfm {verb} <domain> --help`.")
    def group() -> None:  # the group's help, shown by `domainfm --help`
        pass

    return app


map_app, search_app, predict_app = _group("map"), _group("search"), _group("predict")
