"""`domainfm curate pairs`: already-captioned images into the curated pair format.

Inputs are either a CSV/TSV with an image path column and a caption column (open_clip's
`filepath`/`title` by default; relative paths resolve against the table's folder), or existing
WebDataset shards. Both go through the same run_curation as every domain, so they get splits by
group, rejects, summary and atomic, resumable shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer
from PIL import Image, UnidentifiedImageError

from pipelines.curation import CurationConfig, Pair, Reject, UnitResult, WorkUnit, run_curation
from pipelines.params import read

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class PairsConfig(CurationConfig):
    img_key: str = "filepath"
    caption_key: str = "title"
    group_key: str = ""  # column naming the split group (e.g. patient, site); default: the image itself
    rows_per_unit: int = 512


def _to_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _pair_id(source: str, ref: str) -> str:
    return hashlib.sha1(f"{source}:{ref}".encode()).hexdigest()[:16]


def process_table_rows(unit: WorkUnit) -> UnitResult:
    """A chunk of table rows: (row number, image path, caption, group)."""
    result = UnitResult()
    for row_number, image_path, caption, group in unit.payload["rows"]:
        result.counts["rows_seen"] += 1
        label = f"{unit.payload['table']}:{row_number}"
        caption = "" if caption is None or (isinstance(caption, float) and np.isnan(caption)) else str(caption).strip()
        if not caption:
            result.rejects.append(Reject(label, "caption", "empty caption"))
            continue
        path = Path(image_path)
        if not path.is_file():
            result.rejects.append(Reject(f"{label} {path}", "image", "image file not found"))
            continue
        try:
            image = _to_array(path.read_bytes())
        except (UnidentifiedImageError, OSError) as exc:
            result.rejects.append(Reject(f"{label} {path}", "image", f"unreadable image ({type(exc).__name__})"))
            continue
        result.pairs.append(
            Pair(
                id=_pair_id(unit.payload["table"], str(row_number)),
                group=group or str(path),
                image=image,
                caption=caption,
                source=str(path),
                provenance={"table": unit.payload["table"], "row": row_number},
            )
        )
        result.counts["pairs_kept"] += 1
    return result


def process_shard(unit: WorkUnit) -> UnitResult:
    """One existing WebDataset shard: samples grouped by key, image + txt required."""
    result = UnitResult()
    shard = unit.payload["shard"]
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            # WebDataset convention: the key is the path up to the first dot of the file name.
            folder, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not member.isfile() or not dot:
                continue
            key = f"{folder}/{stem}" if folder else stem
            f = tar.extractfile(member)
            if f is not None:
                samples.setdefault(key, {})[ext.lower()] = f.read()
    for key, files in samples.items():
        result.counts["samples_seen"] += 1
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
        if image_ext is None:
            result.rejects.append(Reject(f"{shard}:{key}", "image", "sample has no image"))
            continue
        caption = files.get("txt", b"").decode("utf-8", "replace").strip()
        if not caption:
            result.rejects.append(Reject(f"{shard}:{key}", "caption", "empty caption"))
            continue
        try:
            image = _to_array(files[image_ext])
        except (UnidentifiedImageError, OSError) as exc:
            result.rejects.append(Reject(f"{shard}:{key}", "image", f"unreadable image ({type(exc).__name__})"))
            continue
        meta: dict[str, Any] = {}
        if "json" in files:
            try:
                meta = json.loads(files["json"])
            except json.JSONDecodeError:
                meta = {}
        result.pairs.append(
            Pair(
                id=_pair_id(shard, key),
                group=str(meta.get("group") or f"{shard}:{key}"),
                image=image,
                caption=caption,
                source=shard,
                provenance={"shard": shard, "key": key},
            )
        )
        result.counts["pairs_kept"] += 1
    return result


def _read_table(path: Path, cfg: PairsConfig) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    table = pd.read_csv(path, sep=sep)
    missing = [c for c in (cfg.img_key, cfg.caption_key, cfg.group_key) if c and c not in table.columns]
    if missing:
        raise typer.BadParameter(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}")
    return table


def curate_pairs_command(
    csv: Optional[Path] = typer.Option(None, "--csv", help="CSV/TSV with image path and caption columns."),
    shards: Optional[list[Path]] = typer.Option(None, "--shards", help="Existing WebDataset .tar shards (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the curated pairs."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section pairs.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0: in process)."),
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")] = False,
) -> None:
    """Curate already-captioned images (a CSV/TSV table or WebDataset shards)."""
    cfg = read(params, PairsConfig, "pairs", "curate", workers=workers, allow_empty=allow_empty or None)
    if (csv is None) == (not shards):
        raise typer.BadParameter("give exactly one of --csv or --shards")
    units: list[WorkUnit] = []
    if csv is not None:
        if not csv.is_file():
            raise typer.BadParameter(f"table not found: {csv}")
        table = _read_table(csv, cfg)
        rows = [
            (
                i,
                str((csv.parent / str(r[cfg.img_key])).resolve()),
                r[cfg.caption_key],
                str(r[cfg.group_key]) if cfg.group_key else "",
            )
            for i, r in table.iterrows()
        ]
        for start in range(0, len(rows), cfg.rows_per_unit):
            chunk = rows[start : start + cfg.rows_per_unit]
            digest = hashlib.sha1(json.dumps(chunk, default=str).encode()).hexdigest()[:12]
            units.append(WorkUnit(f"{csv}:{start}:{digest}", {"table": str(csv), "rows": chunk}, inputs=[r[1] for r in chunk]))
        process = process_table_rows
    else:
        for shard in shards or []:
            if not shard.is_file():
                raise typer.BadParameter(f"shard not found: {shard}")
            units.append(WorkUnit(str(shard.resolve()), {"shard": str(shard)}, inputs=[str(shard)]))
        process = process_shard
    summary = run_curation(units, process, out, cfg.curation(), pre_counts=Counter({"inputs": len(units)}))
    typer.echo(json.dumps(summary["pairs"], indent=2))
