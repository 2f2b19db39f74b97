"""The contract between pipelines/ and a domain package.

A domain is a subpackage of `domains/` whose `__init__.py` defines `DOMAIN = Domain(...)`.
Domains are discovered at run time, so adding one needs no edit to pipelines/.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import domains as _domains_pkg


@dataclass(frozen=True)
class Domain:
    name: str
    # Zero-shot classification: class names and prompt templates ("{c}" is replaced by a class name).
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    # `domainfm curate <name> ...`: a typer command function (its options are the domain's inputs).
    curate_command: Callable[..., Any]
    # `domainfm demo-data <name> --out DIR`: writes raw inputs and the held-out zero-shot set.
    write_demo_data: Callable[[Path, dict[str, Any]], None]
    # "image" pairs go through open_clip; "volume" pairs through a 3D encoder.
    modality: str = "image"
    description: str = ""
    # A domain whose model is not an open_clip CLIP (modality "volume") replaces these stages with
    # its own typer command functions taking the same options as `domainfm train/evaluate/export`
    # (see pipelines/cli.py), so dvc.yaml stays the same for every domain. None: the open_clip path.
    train_command: Optional[Callable[..., Any]] = None
    evaluate_command: Optional[Callable[..., Any]] = None
    export_command: Optional[Callable[..., Any]] = None
    # Facts for the model card: lists under "sources", "licences" and "limitations".
    card_notes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def names() -> list[str]:
    """Names of the domain packages under `domains/`, found without importing them.

    Importing a domain pulls in its readers (PyAV, openslide, MONAI, ...), which takes seconds,
    so the CLI imports only the domain a command names.
    """
    return sorted(info.name for info in pkgutil.iter_modules(_domains_pkg.__path__) if info.ispkg)


def get(name: str) -> Domain:
    """The domain package `domains.<name>`'s DOMAIN."""
    if name not in names():
        raise KeyError(f"unknown domain {name!r}; available: {', '.join(names()) or 'none'}")
    domain = getattr(importlib.import_module(f"domains.{name}"), "DOMAIN", None)
    if not isinstance(domain, Domain):
        raise KeyError(f"domains/{name}/__init__.py defines no DOMAIN = Domain(...)")
    if domain.name != name:
        raise KeyError(f"domains/{name} declares DOMAIN.name={domain.name!r}; the package name and the domain name must match")
    return domain


def available() -> dict[str, Domain]:
    """Every domain, imported (slow: for listings, not for running a stage)."""
    return {name: get(name) for name in names()}
