"""The contract between pipelines/ and a domain package; a new domain needs no edit to pipelines/.

A domain is a subpackage `domains/<name>/` laid out like the stages it configures:

    __init__.py    DOMAIN = Domain(name, description, modality): import-light, every stage reads it
    demo/          DemoConfig and write_demo_data(out, cfg): the demo's raw inputs (demo-data stage)
    curation/      CurateConfig and curate_command: `domainfm curate <name> ...` (curate stage)
    prompts.py     zero-shot defaults (evaluate and export stages), overridable in params.yaml:
                   image domains CLASSNAMES and TEMPLATES; volume domains FINDING_PROMPTS
    card.py        SOURCES, LICENCES, LIMITATIONS: facts for the model card (export stage)

The modality picks the model family the train, evaluate and export stages run: "image" adapts an
open_clip model (pipelines/models/clip.py, adapt.py), "volume" trains the 3D dual encoder
(pipelines/models/volume.py). Each DVC stage depends on exactly the parts of a domain it imports,
so editing a prompt re-runs evaluation and export, not curation.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, Optional

import domains as _domains_pkg

Modality = Literal["image", "volume"]


@dataclass(frozen=True)
class Domain:
    """What a domain declares in its `__init__.py`; the rest is found by the layout above."""

    name: str
    description: str
    modality: Modality = "image"

    def _part(self, part: str) -> ModuleType:
        return importlib.import_module(f"domains.{self.name}.{part}")

    def demo(self) -> ModuleType:
        """`domains.<name>.demo`: DemoConfig, write_demo_data."""
        return self._part("demo")

    def curation(self) -> ModuleType:
        """`domains.<name>.curation`: CurateConfig, curate_command."""
        return self._part("curation")

    def prompts(self) -> ModuleType:
        """`domains.<name>.prompts`: the zero-shot defaults."""
        return self._part("prompts")

    def card(self) -> ModuleType:
        """`domains.<name>.card`: SOURCES, LICENCES, LIMITATIONS."""
        return self._part("card")


def classes_and_templates(d: Domain, zeroshot: Optional[Path], classnames: Optional[list[str]],
                          templates: Optional[list[str]]) -> tuple[list[str], list[str]]:
    """Zero-shot class names and prompt templates an image domain is scored with.

    Class names: params, else the zero-shot set's classnames.txt, else the domain's prompts.CLASSNAMES;
    templates: params, else the domain's prompts.TEMPLATES.
    """
    prompts = d.prompts()
    if not classnames:
        names_file = Path(zeroshot) / "classnames.txt" if zeroshot is not None else None
        if names_file is not None and names_file.is_file():
            classnames = [c for c in names_file.read_text().splitlines() if c.strip()]
        else:
            classnames = list(prompts.CLASSNAMES)
    return list(classnames), list(templates or prompts.TEMPLATES)


def names() -> list[str]:
    """Names of the domain packages under `domains/`, found without importing them."""
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
    """Every domain (imports only their light `__init__.py`)."""
    return {name: get(name) for name in names()}
