"""The `domainfm` command line: one command per pipeline stage, each a plain DVC-friendly step."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import click
import torch
import typer
import typer.core

from pipelines import domain as domain_registry
from pipelines.config import build, load_params, section, to_dict
from pipelines.pairs import curate_pairs_command
from pipelines.scaling_cli import scaling_app



class _CurateGroup(typer.core.TyperGroup):
    """`domainfm curate <domain>`: a domain's command is built when it is named, so a stage imports
    only its own domain's readers (PyAV, openslide, MONAI, ... take seconds to import)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(domain_registry.names()))

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, name)
        if command is not None or name not in domain_registry.names():
            return command
        d = domain_registry.get(name)
        single = typer.Typer(add_completion=False)
        single.command(name, help=d.description)(d.curate_command)
        return typer.main.get_command(single)


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
curate_app = typer.Typer(cls=_CurateGroup, no_args_is_help=True, help="Curate image-text pairs from a domain's own sources.")
app.add_typer(curate_app, name="curate")
app.add_typer(scaling_app, name="scaling", help="Data-scaling sweeps, fits and reports.")
curate_app.command("pairs")(curate_pairs_command)

ParamsOption = typer.Option(Path("params.yaml"), "--params", help="params.yaml holding the stage's settings.")


def _domain(name: str) -> domain_registry.Domain:
    try:
        return domain_registry.get(name)
    except KeyError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("domains")
def list_domains() -> None:
    """List the installed domains."""
    for d in domain_registry.available().values():
        typer.echo(f"{d.name}\t{d.modality}\t{d.description}")


@app.command("demo-data")
def demo_data(
    domain: str = typer.Argument(..., help="Domain name."),
    out: Path = typer.Option(..., "--out", help="Folder for the demo's raw inputs and held-out set."),
    params: Path = ParamsOption,
) -> None:
    """Write a domain's embedded demo data (raw inputs plus a held-out zero-shot set)."""
    d = _domain(domain)
    d.write_demo_data(out, section(load_params(params), domain, "demo"))
    typer.echo(f"wrote {domain} demo data to {out}")


@app.command("pretrain")
def pretrain_command(
    out: Path = typer.Option(..., "--out", help="Folder for the base model (open_clip local-dir format)."),
    work: Path = typer.Option(Path("data/pretrain"), "--work", help="Folder for the synthetic corpus and run state."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="CSV of per-step training metrics."),
    params: Path = ParamsOption,
) -> None:
    """Train the demo's generic base model on an out-of-domain synthetic corpus."""
    from pipelines.pretrain import PretrainConfig, pretrain

    cfg = build(PretrainConfig, section(load_params(params), "pretrain"))
    stats = pretrain(cfg, out, work, metrics)
    typer.echo(json.dumps(stats, indent=2))


@app.command("train")
def train_command(
    domain: str = typer.Argument(..., help="Domain name."),
    data: Path = typer.Option(..., "--data", help="Curated pairs folder (from `domainfm curate`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the trained adaptation."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="CSV of per-step training metrics."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    params: Path = ParamsOption,
) -> None:
    """Adapt the domain's base model on its curated pairs (LoRA, full or frozen towers)."""
    from pipelines.adapt import AdaptConfig, prepare, write_adapt_spec
    from pipelines.curation import shard_paths
    from pipelines.models import ModelSpec, load_model
    from pipelines.train import TrainConfig, train

    d = _domain(domain)
    if d.train_command is not None:
        return d.train_command(data=data, out=out, metrics=metrics, resume=resume, params=params)
    p = load_params(params)
    base = build(ModelSpec, section(p, domain, "base_model"))
    adapt_cfg = build(AdaptConfig, section(p, domain, "adapt"))
    train_cfg = build(TrainConfig, section(p, domain, "train"))
    shards = shard_paths(data, "train")
    if not shards:
        raise typer.BadParameter(f"no train shards under {data}/shards: run `domainfm curate {domain}` first")
    torch.manual_seed(train_cfg.seed)  # LoRA's initial A matrices come from the global RNG
    loaded = load_model(base)
    model = prepare(loaded.model, adapt_cfg)
    stats = train(model, loaded.preprocess_train, loaded.tokenizer, shards, train_cfg, out, resume=resume, metrics_path=metrics)
    write_adapt_spec(out, base, adapt_cfg)
    typer.echo(json.dumps(stats, indent=2))


@app.command("evaluate")
def evaluate_command(
    domain: str = typer.Argument(..., help="Domain name."),
    model: Path = typer.Option(..., "--model", help="Trained adaptation folder (from `domainfm train`)."),
    zeroshot: Optional[Path] = typer.Option(None, "--zeroshot", help="Zero-shot set: WebDataset shards with a `cls` key and classnames.txt."),
    data: Optional[Path] = typer.Option(None, "--data", help="Curated pairs folder; its test split is the retrieval set."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics (CLIP_benchmark JSON, DVC metrics)."),
    plots: Path = typer.Option(..., "--plots", help="Folder for plots."),
    params: Path = ParamsOption,
) -> None:
    """Score the base and the adapted model side by side: zero-shot classification and retrieval."""
    from pipelines.adapt import load_trained
    from pipelines.curation import shard_paths
    from pipelines.evaluate import evaluate
    from pipelines.models import ModelSpec, load_model

    d = _domain(domain)
    if d.evaluate_command is not None:
        return d.evaluate_command(model=model, zeroshot=zeroshot, data=data, out=out, plots=plots, params=params)
    p = load_params(params)
    eval_cfg = section(p, domain, "evaluate")
    adapted, loaded = load_trained(model)
    base = load_model(loaded.spec)
    classnames, templates = _classes_and_templates(d, zeroshot, eval_cfg)
    evaluate(
        {"base": (base.model.eval(), base.preprocess_val, base.tokenizer), "adapted": (adapted.eval(), loaded.preprocess_val, loaded.tokenizer)},
        zeroshot_dir=zeroshot,
        retrieval_shards=shard_paths(data, eval_cfg.get("retrieval_split", "test")) if data else [],
        classnames=classnames,
        templates=templates,
        out_dir=out,
        plots_dir=plots,
        dataset_name=f"{domain}",
        model_names={"base": loaded.spec.name, "adapted": str(model)},
        batch_size=int(eval_cfg.get("batch_size", 64)),
    )


def _classes_and_templates(d: domain_registry.Domain, zeroshot: Optional[Path], eval_cfg: dict) -> tuple[list[str], list[str]]:
    """Class names from the zero-shot set when it names them, else the domain's; templates from params, else the domain's."""
    classnames = list(d.classnames)
    if zeroshot is not None and (zeroshot / "classnames.txt").is_file():
        classnames = [c for c in (zeroshot / "classnames.txt").read_text().splitlines() if c.strip()]
    templates = list(eval_cfg.get("templates") or d.templates)
    return classnames, templates


@app.command("export")
def export_command(
    domain: str = typer.Argument(..., help="Domain name."),
    model: Path = typer.Option(..., "--model", help="Trained adaptation folder."),
    out: Path = typer.Option(..., "--out", help="Export folder (open_clip local-dir format, adapter, model card)."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Evaluation folder (from `domainfm evaluate`)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Curated pairs folder (for the card's provenance)."),
    params: Path = ParamsOption,
) -> None:
    """Export the merged model for stock open_clip, the adapter alone, and a model card."""
    from pipelines.export import export

    d = _domain(domain)
    if d.export_command is not None:
        return d.export_command(model=model, out=out, metrics=metrics, data=data, params=params)
    p = load_params(params)
    card = {
        "domain": d.name,
        "description": d.description,
        "data": {
            "summary": _read_json(data / "summary.json") if data else None,
            "sources": list(d.card_notes.get("sources", [])),
            "licences": list(d.card_notes.get("licences", [])),
        },
        "training": {
            **{f"curate.{k}": v for k, v in section(p, domain, "curate").items()},
            **{f"train.{k}": v for k, v in section(p, domain, "train").items()},
        },
        "metrics": _read_json(metrics / "metrics.json") if metrics else None,
        "prompt_templates": list(section(p, domain, "evaluate").get("templates") or d.templates),
        "limitations": list(d.card_notes.get("limitations", [])),
    }
    export(model, out, card)
    typer.echo(f"exported {domain} to {out}")


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING)
    app()
