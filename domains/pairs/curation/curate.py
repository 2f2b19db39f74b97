"""`domainfm curate pairs`: already-captioned images into the curated pair format.

Inputs are either a table with an image path column and a caption column (open_clip's
`filepath`/`title` by default; relative paths resolve against the table's folder), or existing
WebDataset shards. Both go through the same run_curation as every domain, so they get splits by
group, rejects, summary and atomic, resumable shards.

Tables are read as users write them (pipelines/io/text.py: any common encoding, commas, semicolons
or tabs; a warning when not UTF-8). Every row is curated or named in a rejects row
(`<table>:row <n>`): an empty caption, a missing or unreadable image, an image too large to
decode safely (`max_image_pixels`, a guard against decompression bombs) or an empty group. 16-bit
and float images are scaled by their own range to 8 bits (a plain conversion would clip them to
white), and phone photos are turned upright from their EXIF orientation.

Images are stored at training size: those larger than `image_size` on their shorter side are
scaled down to it, their aspect kept (img2dataset's `keep_ratio`; the trainer's own resize and crop
then find the pixels they need, and a 12 MP photo is not a 30 MB PNG in every epoch's reads). The
reduction is Pillow's `Image.thumbnail`: a JPEG is decoded at the smallest DCT scale at least twice
the target, then resized bicubically, within a grey level of a full decode and resize (README).

Ids and groups come from the canonical input: the image path relative to the table's folder (or
the group column), never from how a path was spelled, so the same table curated from another
working directory gives the same splits.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from PIL import Image, ImageOps

from pipelines.curation import EXECUTOR_HELP, CurationConfig, ExecutorName, Pair, Reject, UnitResult, WorkUnit, run_curation
from pipelines.io.shards import member_key_ext
from pipelines.io.text import read_table
from pipelines.params import read

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class PairsConfig(CurationConfig):
    """params.yaml `pairs.curate`: the shared curation settings plus the table's column names."""

    img_key: str = "filepath"
    caption_key: str = "title"
    group_key: str = ""  # column naming the split group (e.g. patient, site); default: the image itself
    rows_per_unit: int = 512
    max_image_pixels: int = 100_000_000  # larger images are refused unread (decompression-bomb guard)
    image_size: int = 256  # shorter side scaled down to this many pixels, aspect kept, never enlarged (0: as given)


class ImageRefused(ValueError):
    """An image that cannot be used, with the reason as its message."""


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# A JPEG decodes to these: resized as they are, before conversion to RGB, so that the decoder can shrink them
DECODED_MODES = ("RGB", "L", "CMYK")


def to_rgb8(data: bytes, max_pixels: int, image_size: int = 0) -> np.ndarray:
    """Decoded RGB uint8 pixels of an encoded image, at most `image_size` on the shorter side (0: its own size).

    ImageRefused with the reason when it cannot be used.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                if im.width * im.height > max_pixels:
                    raise ImageRefused(f"image too large ({im.width}x{im.height} px > max_image_pixels {max_pixels})")
                if im.mode in HIGH_DEPTH_MODES:
                    picture = Image.fromarray(_scaled_to_8bit(np.asarray(ImageOps.exif_transpose(im))))
                elif im.mode in DECODED_MODES:
                    picture = im  # still undecoded: a JPEG is shrunk while it is decoded
                else:
                    picture = im.convert("RGB")  # palette, bilevel, alpha: Pillow would resize a palette by nearest neighbour
                shrink(picture, image_size)
                return np.asarray(ImageOps.exif_transpose(picture).convert("RGB"))
    except ImageRefused:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRefused(f"image too large to decode safely ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's problem, not the run's
        raise ImageRefused(f"unreadable image ({type(exc).__name__})") from None


def shrink(picture: Image.Image, image_size: int) -> None:
    """Scale `picture` down in place to `image_size` px on its shorter side, aspect kept; smaller ones and 0 leave it as it is.

    Pillow's `thumbnail` with its default `reducing_gap` of 2: a JPEG not yet decoded is decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) at least twice the target (`draft`), then resized bicubically
    from there. Its box is the exact target size: a box open on the longer side would ask `draft`
    for twice that side too, which no scale meets, and the whole image would be decoded.
    """
    width, height = picture.size
    if not image_size or min(width, height) <= image_size:
        return
    scale = image_size / min(width, height)
    target = (image_size, max(1, round(height * scale))) if width <= height else (max(1, round(width * scale)), image_size)
    picture.thumbnail(target, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _is_high_depth(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return im.mode in HIGH_DEPTH_MODES


def _scaled_to_8bit(values: np.ndarray) -> np.ndarray:
    """A single-band 16-bit or float image stretched by its own finite range to grey RGB uint8."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    grey = np.round(scaled * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _pair_id(*parts: str) -> str:
    return hashlib.sha1(":".join(parts).encode()).hexdigest()[:16]


def process_table_rows(unit: WorkUnit) -> UnitResult:
    """A chunk of table rows: (row label, image path, path relative to the table, caption, group)."""
    result = UnitResult()
    max_pixels, image_size = unit.payload["max_image_pixels"], unit.payload["image_size"]
    for label, image_path, relative, caption, group in unit.payload["rows"]:
        result.counts["rows_seen"] += 1
        caption = caption.strip()
        if not caption:
            result.rejects.append(Reject(label, "caption", "empty caption"))
            continue
        if group is not None and not group.strip():
            result.rejects.append(Reject(label, "group", "empty group"))
            continue
        path = Path(image_path)
        if not path.is_file():
            result.rejects.append(Reject(f"{label} {relative}", "image", "image file not found"))
            continue
        data = path.read_bytes()
        try:
            image = to_rgb8(data, max_pixels, image_size)
        except ImageRefused as exc:
            result.rejects.append(Reject(f"{label} {relative}", "image", str(exc)))
            continue
        if _is_high_depth(data):
            result.warnings.append(f"{label} {relative}: 16-bit or float image, scaled to 8 bits by its own range")
        result.pairs.append(
            Pair(
                id=_pair_id(unit.payload["table_name"], label.rsplit(":", 1)[-1], relative),
                group=f"group:{group.strip()}" if group is not None else f"image:{relative}",
                image=image,
                caption=caption,
                source=relative,
                provenance={"table": unit.payload["table_name"], "row": label.rsplit(":", 1)[-1]},
            )
        )
        result.counts["pairs_kept"] += 1
    return result


def process_shard(unit: WorkUnit) -> UnitResult:
    """One existing WebDataset shard: samples grouped by key, image + txt required."""
    result = UnitResult()
    shard, name = unit.payload["shard"], unit.payload["name"]
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                parsed = member_key_ext(member.name)
                f = tar.extractfile(member) if member.isfile() and parsed else None
                if f is not None:
                    samples.setdefault(parsed[0], {})[parsed[1]] = f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        result.rejects.append(Reject(f"{shard}", "shard", f"unreadable tar ({type(exc).__name__}: {exc})"))
        if not samples:
            return result
        result.warnings.append(f"{shard}: truncated; the {len(samples)} samples before the damage are used")
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
            image = to_rgb8(files[image_ext], unit.payload["max_image_pixels"], unit.payload["image_size"])
        except ImageRefused as exc:
            result.rejects.append(Reject(f"{shard}:{key}", "image", str(exc)))
            continue
        meta: dict[str, Any] = {}
        if "json" in files:
            try:
                meta = json.loads(files["json"])
            except json.JSONDecodeError:
                result.warnings.append(f"{shard}:{key}: json member is not JSON; ignored")
        result.pairs.append(
            Pair(
                id=_pair_id(name, key),
                group=str(meta.get("group") or f"{name}:{key}"),
                image=image,
                caption=caption,
                source=name,
                provenance={"shard": name, "key": key},
            )
        )
        result.counts["pairs_kept"] += 1
    return result


def image_settings(cfg: PairsConfig) -> dict[str, int]:
    """The settings that change a unit's images: in its payload, and in its key so that a changed one reuses no staged unit."""
    return {"max_image_pixels": cfg.max_image_pixels, "image_size": cfg.image_size}


def plan_table(csv: Path, cfg: PairsConfig) -> tuple[list[WorkUnit], list[str]]:
    """Units of `rows_per_unit` table rows each, and the warnings of reading the table."""
    columns = [c for c in (cfg.img_key, cfg.caption_key, cfg.group_key) if c]
    table, warnings_ = read_table(csv, columns, "captions")
    rows = []
    for i, r in table.iterrows():
        relative = Path(str(r[cfg.img_key]).strip())
        image = relative if relative.is_absolute() else csv.parent / relative
        rows.append((f"{csv.name}:row {i + 2}", str(image), relative.as_posix(), str(r[cfg.caption_key]),
                     str(r[cfg.group_key]) if cfg.group_key else None))
    units = []
    for start in range(0, len(rows), cfg.rows_per_unit):
        chunk = rows[start:start + cfg.rows_per_unit]
        digest = hashlib.sha1(json.dumps([[c[:1] + c[2:] for c in chunk], image_settings(cfg)]).encode()).hexdigest()[:12]
        payload = {"table_name": csv.name, "rows": chunk, **image_settings(cfg)}
        units.append(WorkUnit(f"{csv.name}:{start}:{digest}", payload, inputs=sorted({r[1] for r in chunk})))
    return units, warnings_


def curate_pairs_command(
    csv: Optional[Path] = typer.Option(None, "--csv", help="CSV/TSV with image path and caption columns."),
    shards: Optional[list[Path]] = typer.Option(None, "--shards", help="Existing WebDataset .tar shards (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the curated pairs."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section pairs.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0: in process)."),
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")
    ] = False,
    executor: Annotated[Optional[ExecutorName], typer.Option("--executor", help=EXECUTOR_HELP)] = None,
) -> None:
    """Curate already-captioned images (a CSV/TSV table or WebDataset shards)."""
    cfg = read(params, PairsConfig, "pairs", "curate", workers=workers, allow_empty=allow_empty or None,
               executor=executor)
    if (csv is None) == (not shards):
        raise typer.BadParameter("give exactly one of --csv or --shards")
    units: list[WorkUnit] = []
    warnings_: list[str] = []
    if csv is not None:
        units, warnings_ = plan_table(csv, cfg)
        process = process_table_rows
    else:
        settings = hashlib.sha1(json.dumps(image_settings(cfg)).encode()).hexdigest()[:12]
        for shard in shards or []:
            if not shard.is_file():
                raise typer.BadParameter(f"shard not found: {shard}")
            payload = {"shard": str(shard), "name": shard.name, **image_settings(cfg)}
            units.append(WorkUnit(f"shard:{shard.name}:{settings}", payload, inputs=[str(shard)]))
        names = [u.key for u in units]
        if len(set(names)) != len(names):
            raise typer.BadParameter("two shards share a file name; their sample ids would collide")
        process = process_shard
    summary = run_curation(units, process, out, cfg.curation(), pre_counts=Counter({"inputs": len(units)}), pre_warnings=warnings_)
    typer.echo(json.dumps(summary["pairs"], indent=2))
