"""One run of the data-scaling sweep: a nested subset of a domain's curated pairs, trained and evaluated.

- `subset_command` writes a curated-format folder (shards, manifest, summary, and every other file
  at the top of the curated folder, such as a label space) whose train split is a nested subset:
  train groups (or single pairs, with `<domain>.scaling.subset_unit: pair`) are ordered by a seeded
  hash and taken until `fraction` of the train pairs is covered, so for one seed every smaller subset
  lies inside every larger one and (by default) no group is split. With `quality_keep` < 1 only the
  top share of those pairs by image-caption score stays (scores are computed with the domain's base
  model when the manifest has none, and stored).
  Validation and test splits are copied unchanged, so every run is scored on the same retrieval set.
- `sweep_run_command` chains subset -> `domainfm train` -> `domainfm evaluate` through the same
  command functions the main pipeline runs, for either model family, with `<domain>.scaling.train`,
  `.adapt` and `.evaluate` merged over `<domain>.train`, `.adapt` and `.evaluate`, and leaves in OUT
  only small result files: run.json, metrics.json, the adapted model's `*_adapted.json` records and
  its per-example outcomes `per_example_<table>.csv` (image domains: zeroshot, retrieval; volume
  domains: phenotypes, findings, retrieval), over which the report bootstraps.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer
import yaml

from pipelines.curation.splits import SPLITS
from pipelines.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.io.manifest import read_manifest
from pipelines.params import build, load_params, section
from pipelines.scaling.config import DomainScalingConfig, SubsetUnit

RUN_FILES = ("run.json", "metrics.json")  # plus *_adapted.json and per_example_*.csv
PER_EXAMPLE_PREFIX = "per_example_"
# written by write_subset itself; every other regular file at the top of a curated folder is copied
SUBSET_OWN_FILES = ("manifest.parquet", "summary.json")


# ---------------------------------------------------------------- choosing the subset


def _group_rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"scaling:{seed}:{group}".encode()).hexdigest()


def nested_train_ids(manifest: pd.DataFrame, fraction: float, seed: int, unit: SubsetUnit = "group") -> list[str]:
    """Ids of the train pairs in the nested subset for (fraction, seed).

    Units (split groups, or single pairs with unit "pair") are ordered by a seeded hash and taken
    whole until at least `fraction` of the train pairs is covered: a prefix of one fixed order, hence
    nested across fractions.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    train = manifest[manifest["split"] == "train"]
    if train.empty:
        raise ValueError("the curated set has no train pairs")
    units = train["group"] if unit == "group" else train["id"]
    sizes = units.value_counts(sort=False)
    order = sorted(sizes.index, key=lambda g: _group_rank(str(g), seed))
    target = math.ceil(fraction * len(train) - 1e-9)
    chosen, covered = set(), 0
    for name in order:
        if covered >= target:
            break
        chosen.add(name)
        covered += int(sizes[name])
    return train.loc[units.isin(chosen), "id"].tolist()


def top_quality_ids(scores: pd.Series, keep: float) -> list[str]:
    """Ids (the series index) of the top `keep` share by score; ties broken by id for stability."""
    if not 0 < keep <= 1:
        raise ValueError(f"quality_keep must be in (0, 1], got {keep}")
    n_keep = max(1, int(round(keep * len(scores))))
    ranked = sorted(scores.index, key=lambda i: (-float(scores[i]), str(i)))
    return ranked[:n_keep]


# ---------------------------------------------------------------- writing the subset


def _read_samples(data: Path, shards: set[str], wanted_keys: set[str]) -> dict[str, dict[str, Any]]:
    from pipelines.io.shards import iter_tar_samples

    found: dict[str, dict[str, Any]] = {}
    for shard in sorted(shards):
        for sample in iter_tar_samples(data / "shards" / shard):
            if sample["__key__"] in wanted_keys:
                found[sample["__key__"]] = sample
    return found


def _score_quality(samples: dict[str, dict[str, Any]], rows: pd.DataFrame, params: dict, domain: str) -> pd.Series:
    """Image-caption cosine similarity under the domain's base model, as curation's quality filter."""
    from pipelines.curation.quality import make_clip_scorer
    from pipelines.io.shards import image_bytes
    from pipelines.models.clip import ModelSpec

    scorer = make_clip_scorer(build(ModelSpec, section(params, domain, "base_model")))
    images = [image_bytes(samples[k]) for k in rows["key"]]
    return pd.Series(scorer(images, rows["caption"].tolist()), index=rows["id"].tolist(), dtype=float)


def write_subset(
    data: Path, out: Path, fraction: float, seed: int, quality_keep: float = 1.0, params: Optional[dict] = None, domain: str = "",
    unit: SubsetUnit = "group",
) -> dict[str, Any]:
    """Write the subset as a curated folder under `out`; returns its summary."""
    import webdataset as wds

    manifest = read_manifest(data)
    train_ids = set(nested_train_ids(manifest, fraction, seed, unit))
    rows = manifest[(manifest["split"] != "train") | manifest["id"].isin(train_ids)].copy()
    samples = _read_samples(data, set(rows["shard"].dropna()), set(rows["key"]))
    missing = sorted(set(rows["key"]) - set(samples))
    if missing:
        raise ValueError(f"{len(missing)} manifest pair(s) not found in {data}/shards, e.g. {missing[:3]}")

    if quality_keep < 1.0:
        train_rows = rows[rows["split"] == "train"]
        scores = train_rows.set_index("id")["quality_score"]
        if scores.isna().any():  # the demo curates without a quality model: score here, once per run
            if params is None or not domain:
                raise ValueError("quality scores are missing and no params/domain were given to compute them")
            scores = _score_quality(samples, train_rows, params, domain)
            rows.loc[rows["split"] == "train", "quality_score"] = rows.loc[rows["split"] == "train", "id"].map(scores)
        keep = set(top_quality_ids(scores, quality_keep))
        rows = rows[(rows["split"] != "train") | rows["id"].isin(keep)].copy()

    out = Path(out)
    shard_dir = out / "shards"
    if shard_dir.exists():
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True)
    for split in SPLITS:
        split_rows = rows[rows["split"] == split]
        if split_rows.empty:
            continue
        name = f"{split}-000000.tar"  # the subsets are small: one shard per split
        with wds.TarWriter(str(shard_dir / name), mtime=0) as writer:
            for key in split_rows["key"]:
                writer.write({k: v for k, v in samples[key].items() if k != "__url__"})
        rows.loc[rows["split"] == split, "shard"] = name

    table = rows.copy()
    table["caption_variants"] = table["caption_variants"].map(lambda v: json.dumps(v, sort_keys=True))
    table["provenance"] = table["provenance"].map(lambda v: json.dumps(v, sort_keys=True))
    if "footprint" in table:  # read_manifest decoded it; stored as GeoJSON text like the other JSON columns
        table["footprint"] = table["footprint"].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else None)
    atomic_write_bytes(out / "manifest.parquet", table.to_parquet(index=False))
    n_train = int((rows["split"] == "train").sum())
    summary = {
        "source": str(data),
        "fraction": fraction,
        "seed": seed,
        "quality_keep": quality_keep,
        "subset_unit": unit,
        "n_pairs": n_train,  # training pairs: the N of the scaling law
        "n_groups": int(rows.loc[rows["split"] == "train", "group"].nunique()),
        "pairs": {"per_split": {s: int((rows["split"] == s).sum()) for s in SPLITS}},
    }
    copied = []
    for side in sorted(Path(data).iterdir()):
        # e.g. a volume domain's phenotypes.json: the label space stays the full set's, so every run
        # trains and is scored with the same heads
        if side.is_file() and side.name not in SUBSET_OWN_FILES:
            atomic_write_bytes(out / side.name, side.read_bytes())
            copied.append(side.name)
    summary["copied"] = copied
    atomic_write_json(out / "summary.json", summary)
    return summary


def subset_command(
    data: Annotated[Path, typer.Option("--data", help="Curated pairs folder (from `domainfm curate`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the subset (curated format).")],
    fraction: Annotated[float, typer.Option("--fraction", help="Share of the train pairs to keep, by group.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the group order (subsets of one seed are nested).")] = 0,
    quality_keep: Annotated[float, typer.Option("--quality-keep", help="Then keep the top share by image-caption score.")] = 1.0,
    domain: Annotated[str, typer.Option("--domain", help="Domain whose base model scores quality when scores are absent.")] = "",
    params: Annotated[Optional[Path], typer.Option("--params", help="params.yaml (for <domain>.base_model).")] = None,
    unit: Annotated[SubsetUnit, typer.Option("--unit", help="Take split groups whole, or single pairs.")] = "group",
) -> None:
    """Write a nested, group-wise (or pair-wise) subset of a curated set (optionally quality-filtered)."""
    summary = write_subset(data, out, fraction, seed, quality_keep, load_params(params) if params else None, domain, unit)
    typer.echo(json.dumps(summary, indent=2))


# ---------------------------------------------------------------- one sweep run


def run_params(params: dict, domain: str, seed: int) -> dict:
    """Params with `<domain>.scaling.{train,adapt,evaluate}` merged over `<domain>.{train,adapt,evaluate}`, and the run's seed.

    The evaluate stage's hubness and linear-probe analyses, the generic held-out set and the WiSE-FT
    curve are switched off for image domains: a sweep compares zero-shot and retrieval across data
    sizes, and the analyses would add about a minute per run.
    """
    from pipelines.domain import get

    merged = copy.deepcopy(params)
    scaling = section(params, domain, "scaling")
    merged.setdefault(domain, {})
    for name in ("train", "adapt", "evaluate"):
        overrides = scaling.get(name) or {}
        if overrides or name == "train":
            merged[domain][name] = {**section(params, domain, name), **overrides}
    merged[domain]["train"]["seed"] = seed
    try:
        image_domain = get(domain).modality != "volume"  # the volume evaluation has neither analysis
    except KeyError:  # not a registered domain: nothing to switch off
        image_domain = False
    if image_domain:
        evaluate = merged[domain].setdefault("evaluate", {}) or {}
        merged[domain]["evaluate"] = {**evaluate, "hubness": {**(evaluate.get("hubness") or {}), "enabled": False},
                                      "linear_probe": {**(evaluate.get("linear_probe") or {}), "enabled": False},
                                      "general": None, "wise": {"alphas": [], "export_alpha": None}}
    return merged


def sweep_run(
    domain: str, data: Path, zeroshot: Optional[Path], out: Path, params_path: Path, fraction: float, seed: int, quality_keep: float = 1.0
) -> dict[str, Any]:
    """Subset -> train -> evaluate in a scratch folder beside `out`; keeps only the result files in `out`."""
    from pipelines.evaluate.stage import evaluate_domain
    from pipelines.train.stage import train_domain

    params = load_params(params_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        unit = build(DomainScalingConfig, section(params, domain, "scaling"), f"{domain}.scaling").subset_unit
        summary = write_subset(data, tmp / "data", fraction, seed, quality_keep, params, domain, unit)
        merged = run_params(params, domain, seed)
        atomic_write_text(tmp / "params.yaml", yaml.safe_dump(merged, sort_keys=False))
        start = time.time()
        train_domain(domain, tmp / "data", tmp / "model", tmp / "params.yaml")
        train_seconds = time.time() - start
        start = time.time()
        evaluate_domain(domain, tmp / "model", zeroshot, tmp / "data", tmp / "metrics", tmp / "plots", tmp / "params.yaml",
                        per_example_dir=tmp / "per_example")
        evaluate_seconds = time.time() - start
        results = tmp / "results"  # assembled beside, then renamed: OUT appears complete or not at all
        results.mkdir()
        shutil.copy2(tmp / "metrics" / "metrics.json", results / "metrics.json")
        for record in sorted((tmp / "metrics").glob("*_adapted.json")):
            shutil.copy2(record, results / record.name)
        # Per-example outcomes of the adapted model: the report bootstraps over these examples.
        for table in sorted((tmp / "per_example").glob("*_adapted.csv")):
            shutil.copy2(table, results / f"{PER_EXAMPLE_PREFIX}{table.name.removesuffix('_adapted.csv')}.csv")
        train_cfg = merged[domain]["train"]
        record = {
            "domain": domain, "fraction": fraction, "seed": seed, "quality_keep": quality_keep,
            "n_pairs": summary["n_pairs"], "n_groups": summary["n_groups"], "subset_unit": unit,
            "max_steps": train_cfg.get("max_steps"), "epochs": train_cfg.get("epochs"),
            "train_seconds": round(train_seconds, 2), "evaluate_seconds": round(evaluate_seconds, 2),
        }
        atomic_write_json(results / "run.json", record)
        results.rename(out)
    return record


def sweep_run_command(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    data: Annotated[Path, typer.Option("--data", help="Curated pairs folder (the full set).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for this run's results.")],
    zeroshot: Annotated[Optional[Path], typer.Option("--zeroshot", help="Held-out zero-shot set.")] = None,
    fraction: Annotated[float, typer.Option("--fraction", help="Share of the train pairs.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Subset order and training seed.")] = 0,
    quality_keep: Annotated[float, typer.Option("--quality-keep", help="Top share by image-caption score.")] = 1.0,
    params: Annotated[Path, typer.Option("--params", help="params.yaml.")] = Path("params.yaml"),
) -> None:
    """One scaling-sweep run: nested subset, train, evaluate; results only in --out."""
    record = sweep_run(domain, data, zeroshot, out, params, fraction, seed, quality_keep)
    typer.echo(json.dumps(record, indent=2))
