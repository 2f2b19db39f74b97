"""What params.yaml holds, section by section, and `domainfm params check` / `domainfm domains`.

Top level: `domains` (the domains `dvc repro` runs, with their curate inputs), `pretrain`,
`scaling`, `forgetting`, and one section per domain. A domain's sections are typed by its model family
(`base_model`, `adapt`, `train`, `evaluate`) and by the domain itself (`demo`, `curate`);
`scaling` is the same for every domain. Each type is the dataclass the stage reads the section
into, so `check_file` applies exactly the rules the stages apply, all at once.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import typer

from pipelines import params as P
from pipelines.domain import get, names

TOP_LEVEL = ("domains", "pretrain", "scaling", "forgetting")  # sections that are not a domain's


@dataclass
class DomainEntry:
    """An entry of params.yaml `domains`: a domain `dvc repro` runs."""

    curate_inputs: str  # the input options of `domainfm curate <domain>`, as the curate stage passes them


def family_sections(modality: str) -> dict[str, type]:
    """The model family's section types: base_model, adapt, train, evaluate."""
    if modality == "volume":
        from pipelines.evaluate.volume import VolumeEvaluateConfig
        from pipelines.models.volume import VolumeModelConfig
        from pipelines.train.volume_task import VolumeAdaptConfig, VolumeTrainConfig

        return {"base_model": VolumeModelConfig, "adapt": VolumeAdaptConfig, "train": VolumeTrainConfig,
                "evaluate": VolumeEvaluateConfig}
    from pipelines.evaluate.clip import ClipEvaluateConfig
    from pipelines.models.adapt import AdaptConfig
    from pipelines.models.clip import ModelSpec
    from pipelines.train.clip_task import ClipTrainConfig

    return {"base_model": ModelSpec, "adapt": AdaptConfig, "train": ClipTrainConfig, "evaluate": ClipEvaluateConfig}


def domain_sections(name: str) -> dict[str, type]:
    """Every section type of domain `name` (imports its demo and curation packages)."""
    from pipelines.scaling.config import DomainScalingConfig

    d = get(name)
    return {**family_sections(d.modality), "demo": d.demo().DemoConfig, "curate": d.curation().CurateConfig,
            "scaling": DomainScalingConfig}


def check(raw: dict[str, Any]) -> list[str]:
    """Every problem of a params mapping, each naming its key path; [] when it is valid."""
    from pipelines.forgetting.stage import ForgettingConfig
    from pipelines.pretrain.pretrain import PretrainConfig
    from pipelines.scaling.config import ScalingConfig

    problems: list[str] = []

    def collect(cls: type, values: Any, where: str) -> Any:
        try:
            return P.build(cls, values if values is not None else {}, where)
        except P.ParamsError as exc:
            problems.extend(exc.problems)
            return None

    known = names()
    listed = raw.get("domains") or {}
    if not isinstance(listed, dict):
        problems.append(f"domains: expected a mapping of domain name to its curate inputs, got {listed!r}")
        listed = {}
    for name, entry in listed.items():
        if name not in known:
            problems.append(f"domains.{name}: no package domains/{name}; installed: {', '.join(known)}")
        else:
            collect(DomainEntry, entry, f"domains.{name}")
    collect(PretrainConfig, raw.get("pretrain"), "pretrain")
    scaling = collect(ScalingConfig, raw.get("scaling"), "scaling")
    if scaling is not None:
        for key in ("domains", "quality_domains"):
            for name in getattr(scaling, key):
                if name not in listed:
                    problems.append(f"scaling.{key}: {name!r} is not listed under domains, so it has no curated data")
    forgetting = collect(ForgettingConfig, raw.get("forgetting"), "forgetting")
    for name in forgetting.domains if forgetting is not None else []:
        if name not in listed:
            problems.append(f"forgetting.domains: {name!r} is not listed under domains, so it has no trained model")
        elif get(name).modality != "image":
            problems.append(f"forgetting.domains: {name!r} is a {get(name).modality} domain; the full fine-tuning "
                            "twin is for open_clip domains")
    for key, value in raw.items():
        if key in TOP_LEVEL:
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), [*known, *TOP_LEVEL], n=1)
            problems.append(f"{key}: unknown section{'; did you mean ' + close[0] + '?' if close else ''}")
            continue
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            continue
        sections = domain_sections(key)
        for section_name, section_value in value.items():
            where = f"{key}.{section_name}"
            if section_name not in sections:
                close = difflib.get_close_matches(str(section_name), list(sections), n=1)
                problems.append(f"{where}: unknown section{'; did you mean ' + close[0] + '?' if close else ''}")
                continue
            built = collect(sections[section_name], section_value, where)
            if section_name == "scaling" and built is not None:
                for overridden in ("train", "adapt", "evaluate"):
                    valid = {f.name for f in fields(sections[overridden])}
                    for override in getattr(built, overridden):
                        if override not in valid:
                            problems.append(f"{where}.{overridden}.{override}: not a {key}.{overridden} key")
    return problems


def check_file(path: Path) -> list[str]:
    """Every problem of the params file at `path` (see `check`)."""
    try:
        return check(P.load_params(path))
    except P.ParamsError as exc:
        return exc.problems


# ---------------------------------------------------------------- commands


params_app = typer.Typer(no_args_is_help=True)


@params_app.callback()
def params_group() -> None:
    """Inspect params.yaml."""


@params_app.command("check")
def check_command(
    path: Optional[Path] = typer.Argument(Path("params.yaml"), help="The params file."),
) -> None:
    """Validate every section of params.yaml; each problem is printed with its key path."""
    problems = check_file(path)
    for problem in problems:
        typer.echo(f"{path}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: ok")


def domains_command() -> None:
    """List the installed domains."""
    for name in names():
        d = get(name)
        typer.echo(f"{d.name}\t{d.modality}\t{d.description}")
