"""`domainfm curate remote_sensing`: SkyScript-style pairs from GeoTIFFs and OpenStreetMap.

For every OSM object with a tag visible from above, a tile centred on the object (with a
seeded random shift) is cut from each raster it falls on, at a GSD at which the tag is still
recognisable, and captioned from the tags of the object and its visible neighbours.
One work unit per raster; the features it gets are those intersecting its footprint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import rasterio
import typer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import Point, box, mapping, shape
from shapely.strtree import STRtree

from domains.remote_sensing.curation.osm import Feature, OSMFileError, osm_format, read_features
from domains.remote_sensing.curation.tiles import (
    WGS84,
    default_bands,
    native_gsd_m,
    overview_mask,
    raster_ranges,
    read_tile,
    tile_crs,
    tile_problem,
    to_rgb8,
)
from domains.remote_sensing.curation.visibility import TagTable, captions, dedupe, join_phrases, load_tag_table, table_from_dicts
from pipelines.curation import CurationConfig, Pair, Reject, UnitResult, WorkUnit, run_curation
from pipelines.params import read

STAGE_RASTER = "raster"
STAGE_TILE = "tile"


@dataclass
class RSCurateConfig(CurationConfig):
    """params.yaml `remote_sensing.curate`: the shared curation settings plus tiling, captions and the quality filter."""

    # Tiles
    target_gsd_m: float = 1.0  # finest output GSD; never finer than the raster's own GSD
    tile_size: int = 224  # output pixels a side
    point_tile_m: Optional[float] = None  # ground size for points and lines; None = tile_size * GSD
    polygon_margin: float = 0.1  # bbox grows by this fraction on each side
    min_tile_m: Optional[float] = None  # polygon tiles; None = tile_size * GSD
    max_tile_m: Optional[float] = None  # polygon tiles; None = 4 * min size (also capped by tag visibility)
    max_shift_fraction: float = 0.2  # random off-centre shift, as a fraction of the tile size
    seed: int = 0
    bands: Optional[list[int]] = None  # 1-based; None = first three (or the single band as grey)
    stretch_percentiles: list[float] = field(default_factory=lambda: [2.0, 98.0])
    # non-8-bit data: a tile whose percentile range is below this fraction of the raster's own range is stretched
    # with the raster's range (a near-flat tile would otherwise show sensor noise at full contrast)
    min_stretch_fraction: float = 0.25
    max_nodata_fraction: float = 0.1
    min_std: float = 2.0  # tiles with a smaller pixel std (0..255 scale) are blank
    # Captions
    max_surrounding: int = 3
    extra_visible_tags: list[dict[str, Any]] = field(default_factory=list)
    # Splits
    block_size_m: float = 2000.0
    # Quality filter (pipelines.curation.quality), applied only when keep fraction < 1 and a model is named
    quality_model: Optional[str] = None
    quality_pretrained: Optional[str] = None
    quality_keep_fraction: float = 1.0

    def output_params(self) -> dict[str, Any]:
        """The options that change what a unit produces (its resume key hashes these)."""
        skip = {"workers", "shard_size", "val_fraction", "test_fraction", "split_seed",
                "quality_model", "quality_pretrained", "quality_keep_fraction"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


# ---------------------------------------------------------------- one raster


@dataclass
class RasterJob:
    """The payload of one raster's work unit: the raster, the OSM features on it and the settings."""

    raster: str
    features: list[Feature]
    config: dict[str, Any]  # RSCurateConfig as a dict
    tag_rows: list[dict[str, Any]]  # the full visibility table, extras merged


def _stable_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def _centre(feature: Feature) -> Point:
    g = feature.geometry
    if feature.kind == "line":
        return g.interpolate(0.5, normalized=True)  # a point on the line, not beside a curve
    if feature.kind == "polygon":
        return box(*g.bounds).centroid
    return g.centroid


def process(unit: WorkUnit) -> UnitResult:
    """Tiles and captions for one raster (module level, so worker processes can run it)."""
    job: RasterJob = unit.payload
    cfg = RSCurateConfig(**job.config)
    table = table_from_dicts(job.tag_rows)
    result = UnitResult()
    result.counts["objects_in_footprint"] += len(job.features)
    try:
        with rasterio.open(job.raster) as src:
            _process_raster(src, job, cfg, table, result)
    except RasterioError:  # truncated or corrupt data often shows only when pixels are read
        result.rejects.append(Reject(job.raster, STAGE_RASTER, "unreadable raster data (corrupt or truncated)"))
        result.counts["rasters_unreadable"] += 1
        result.pairs.clear()  # all or nothing: a half-read raster is not a curated one
    return result


def _process_raster(src: rasterio.io.DatasetReader, job: RasterJob, cfg: RSCurateConfig, table: TagTable, result: UnitResult) -> None:
    bands = cfg.bands or default_bands(src.count)
    if any(b < 1 or b > src.count for b in bands) or len(bands) not in (1, 3):
        result.rejects.append(Reject(f"{job.raster} bands={bands}", STAGE_RASTER, "band selection does not fit the raster"))
        return
    if not overview_mask(src).any():
        result.rejects.append(Reject(job.raster, STAGE_RASTER, "raster has no valid pixels"))
        result.counts["rasters_all_nodata"] += 1
        return
    result.warnings.extend(raster_caveats(src, job.raster, bands, cfg.bands is None, cfg.stretch_percentiles))
    native_gsd = native_gsd_m(src)
    base_gsd = max(cfg.target_gsd_m, native_gsd)
    size = cfg.tile_size
    min_tile = cfg.min_tile_m or size * base_gsd
    max_tile = cfg.max_tile_m or 4 * min_tile
    point_tile = cfg.point_tile_m or size * base_gsd
    low_pct, high_pct = cfg.stretch_percentiles
    needs_stretch = any(src.dtypes[b - 1] != "uint8" for b in bands)
    ranges = raster_ranges(src, bands, low_pct, high_pct) if needs_stretch else None
    tag = hashlib.sha256(os.path.normpath(job.raster).encode()).hexdigest()[:6]  # the path as given: ids stay the same in any checkout
    stem = f"{Path(job.raster).stem}-{tag}"

    features = sorted(job.features, key=lambda f: f.osm_id)
    tree = STRtree([f.geometry for f in features])
    src_crs_str = src.crs.to_string()
    result.counts["rasters_curated"] += 1

    for i, feat in enumerate(features):
        focus = table.visible(feat.tags, base_gsd)
        if not focus:
            result.counts["objects_not_visible_at_gsd"] += 1
            continue
        primary = focus[0]
        centre = _centre(feat)
        lon, lat = centre.x, centre.y
        crs = tile_crs(src.crs, lon, lat)
        (cx,), (cy,) = warp_transform(WGS84, crs, [lon], [lat])
        if feat.kind == "polygon":
            minx, miny, maxx, maxy = shape(transform_geom(WGS84, crs, mapping(feat.geometry))).bounds
            ground = max(maxx - minx, maxy - miny) * (1 + 2 * cfg.polygon_margin)
            # never so coarse that the focus tag stops being visible
            ground = min(max(ground, min_tile), max(min_tile, min(max_tile, primary.max_gsd_m * size)))
        else:
            ground = point_tile
        gsd = ground / size
        rng = np.random.default_rng(_stable_int(cfg.seed, feat.osm_type, feat.osm_id))
        shift = rng.uniform(-cfg.max_shift_fraction, cfg.max_shift_fraction, size=2) * ground
        tx, ty = cx + shift[0], cy + shift[1]
        bounds = (tx - ground / 2, ty - ground / 2, tx + ground / 2, ty + ground / 2)
        where = f"{job.raster}#{feat.osm_id}"
        result.counts["tiles_attempted"] += 1

        resampling = Resampling.average if gsd > 1.5 * native_gsd else Resampling.bilinear
        tile = read_tile(src, crs, bounds, size, bands, resampling)
        rgb = to_rgb8(tile, low_pct, high_pct, ranges, cfg.min_stretch_fraction)
        problem = tile_problem(tile, rgb, cfg.max_nodata_fraction, cfg.min_std)
        if problem:
            result.rejects.append(Reject(where, STAGE_TILE, problem))
            result.counts[f"tiles_rejected_{problem.replace(' ', '_')}"] += 1
            continue

        title = primary.phrase
        tile_ll = shape(transform_geom(crs, WGS84, mapping(box(*bounds))))
        neighbours = sorted(
            (j for j in tree.query(tile_ll, predicate="intersects") if j != i),
            key=lambda j: (features[j].geometry.distance(centre), features[j].osm_id),
        )
        others = [m[0].phrase for j in neighbours if (m := table.visible(features[j].tags, gsd))]
        variants = captions(title, others, cfg.max_surrounding)
        all_tags = dedupe(m.phrase for m in table.visible(feat.tags, gsd))
        if len(all_tags) > 1:
            variants["title_all_tags"] = join_phrases(all_tags)

        epsg = crs.to_epsg()
        crs_name = f"EPSG:{epsg}" if epsg else crs.to_string()
        group = f"{crs_name}:{math.floor(tx / cfg.block_size_m)}:{math.floor(ty / cfg.block_size_m)}"
        result.pairs.append(
            Pair(
                id=f"{stem}-{feat.osm_type}-{feat.osm_id.split('/')[-1]}",
                group=group,
                image=rgb,
                caption=variants["title"],
                source=job.raster,
                caption_variants=_sorted(variants),
                provenance=_sorted({
                    "osm_id": feat.osm_id,
                    "osm_type": feat.osm_type,
                    "osm_kind": feat.kind,
                    "tags": feat.tags,
                    "tile_bounds": [float(b) for b in bounds],
                    "tile_crs": crs_name,
                    "raster_crs": src_crs_str,
                    "gsd_m": float(gsd),
                    "centre_lonlat": [float(lon), float(lat)],
                    "shift_m": [float(shift[0]), float(shift[1])],
                    "nodata_fraction": float(1.0 - tile.valid.mean()),
                }),
            )
        )
        result.counts["tiles_written"] += 1


def raster_caveats(src: rasterio.io.DatasetReader, raster: str, bands: list[int], default: bool, percentiles: list[float]) -> list[str]:
    """Warnings for a raster curated in a way its owner may not expect: grey tiles, bands left out, a per-tile stretch."""
    from rasterio.enums import ColorInterp

    caveats = []
    alpha = [i + 1 for i, c in enumerate(src.colorinterp) if c == ColorInterp.alpha]
    unused = [b for b in range(1, src.count + 1) if b not in bands and b not in alpha]
    if default and len(bands) == 1:
        left_out = f", band{'s' if len(unused) > 1 else ''} {', '.join(map(str, unused))} not used (set `bands` to choose)"
        caveats.append(f"{raster}: {src.count} band{'s' if src.count > 1 else ''}; tiles are grey from band {bands[0]}"
                       + (left_out if unused else ""))
    elif default and unused and [src.colorinterp[b - 1] for b in bands] != [ColorInterp.red, ColorInterp.green, ColorInterp.blue]:
        shown = ", ".join(map(str, bands))
        caveats.append(f"{raster}: {src.count} bands; tiles show bands {shown} as red, green, blue (set `bands` to choose)")
    dtypes = {src.dtypes[b - 1] for b in bands}
    if dtypes != {"uint8"}:
        low, high = percentiles
        caveats.append(f"{raster}: {'/'.join(sorted(dtypes))} values stretched to 8 bits per tile and band "
                       f"(percentiles {low:g}-{high:g} of its valid pixels; the raster's own range for near-flat tiles)")
    return caveats


def _sorted(obj: Any) -> Any:
    """Dicts with sorted keys, as staged unit records hold them.

    A fresh run and a resumed run then write byte-identical sample JSON.
    """
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    return obj


# ---------------------------------------------------------------- the run


@dataclass
class Footprint:
    """A raster's extent in lon/lat, and what identifies its current content."""

    raster: str
    bounds_ll: tuple[float, float, float, float]
    identity: str  # size and mtime: a changed raster is curated again


def raster_footprint(path: Path) -> tuple[Footprint | None, Reject | None]:
    """The raster's lon/lat bounds, or the reason it cannot be used."""
    if path.is_dir():
        return None, Reject(str(path), STAGE_RASTER, "raster path is a folder, not a file (give each raster with --raster)")
    if not path.is_file():
        return None, Reject(str(path), STAGE_RASTER, "raster file not found")
    if path.stat().st_size == 0:
        return None, Reject(str(path), STAGE_RASTER, "empty file")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                if src.driver not in ("GTiff", "COG"):  # a photo renamed .tif: GDAL opens it by its content
                    return None, Reject(str(path), STAGE_RASTER, f"not a GeoTIFF ({src.driver} image without a CRS)")
                return None, Reject(str(path), STAGE_RASTER, "raster has no CRS")
            if src.transform.is_identity:
                return None, Reject(str(path), STAGE_RASTER, "raster has no geotransform")
            bounds = transform_bounds(src.crs, WGS84, *src.bounds, densify_pts=21)
    except RasterioError as exc:
        if "not recognized as being in a supported file format" in str(exc):
            return None, Reject(str(path), STAGE_RASTER, "not a raster file (format not recognised)")
        return None, Reject(str(path), STAGE_RASTER, "unreadable raster file (corrupt or truncated)")
    except ValueError:  # rasterio's CRSError: a CRS PROJ cannot transform
        return None, Reject(str(path), STAGE_RASTER, "raster CRS cannot be transformed to lon/lat")
    if not all(math.isfinite(b) for b in bounds):
        return None, Reject(str(path), STAGE_RASTER, "raster bounds cannot be placed on the globe")
    stat = path.stat()
    return Footprint(str(path), tuple(bounds), f"{stat.st_size}:{stat.st_mtime_ns}"), None


def _features_digest(features: list[Feature]) -> str:
    h = hashlib.sha256()
    for f in sorted(features, key=lambda f: f.osm_id):
        h.update(json.dumps([f.osm_id, f.osm_type, f.kind, sorted(f.tags.items())]).encode())
        h.update(f.geometry.wkb)
    return h.hexdigest()[:16]


def plan_units(
    rasters: list[Path], features: list[Feature], cfg: RSCurateConfig, table: TagTable
) -> tuple[list[WorkUnit], list[Reject], Counter]:
    """One unit per usable raster with the features over its footprint; rejects for the rest."""
    rejects: list[Reject] = []
    counts: Counter = Counter()
    tree = STRtree([f.geometry for f in features])
    params_digest = hashlib.sha256(json.dumps([cfg.output_params(), table.as_dicts()], sort_keys=True).encode()).hexdigest()[:16]
    units: list[WorkUnit] = []
    for path in dict.fromkeys(Path(r) for r in rasters):
        counts["rasters_seen"] += 1
        fp, reject = raster_footprint(path)
        if reject:
            rejects.append(reject)
            continue
        west, south, east, north = fp.bounds_ll
        hits = tree.query(box(west, south, east, north), predicate="intersects") if features else []
        mine = [features[j] for j in sorted(hits)]
        if not mine:
            rejects.append(Reject(str(path), STAGE_RASTER, "no OSM features intersect the raster footprint"))
            counts["rasters_without_features"] += 1
            continue
        digest = hashlib.sha256(f"{params_digest}:{fp.identity}:{_features_digest(mine)}".encode()).hexdigest()[:16]
        job = RasterJob(str(path), mine, asdict(cfg), table.as_dicts())
        units.append(WorkUnit(key=f"remote_sensing:{os.path.abspath(path)}:{digest}", payload=job, inputs=[str(path)]))
    return units, rejects, counts


def curate(rasters: list[Path], osm: Path, out: Path, cfg: RSCurateConfig) -> dict[str, Any]:
    """The whole curation (the CLI's body, callable from tests and other code)."""
    table = load_tag_table(cfg.extra_visible_tags)
    read = read_features(osm, keep=table.has_visible)
    pre_rejects = list(read.rejects)
    pre_counts = Counter(read.counts)
    pre_counts["osm_features_with_visible_tags"] = len(read.features)
    if not read.features:
        # when features with visible tags were all refused, their rows say why; this one says the map is empty because of them
        reason = "no usable features: every feature with visible tags was rejected" if read.rejects else "no features with visible tags"
        pre_rejects.append(Reject(str(osm), "osm", reason))
    units, plan_rejects, plan_counts = plan_units(rasters, read.features, cfg, table)
    pre_rejects += plan_rejects
    pre_counts.update(plan_counts)
    if read.features and not units and plan_counts["rasters_without_features"]:
        pre_rejects.append(Reject(str(osm), "osm", "no features intersect any raster"))

    scorer = None
    if cfg.quality_keep_fraction < 1.0 and cfg.quality_model:
        from pipelines.curation.quality import make_clip_scorer
        from pipelines.models.clip import ModelSpec

        scorer = make_clip_scorer(ModelSpec(name=cfg.quality_model, pretrained=cfg.quality_pretrained))
    return run_curation(
        units,
        process,
        out,
        cfg.curation(),
        pre_rejects=pre_rejects,
        pre_counts=dict(pre_counts),
        pre_warnings=read.warnings,
        quality_scorer=scorer,
        quality_keep_fraction=cfg.quality_keep_fraction,
    )


def load_config(params: Optional[Path], workers: Optional[int] = None, allow_empty: bool = False) -> RSCurateConfig:
    """Params `remote_sensing.curate`, typed; `workers` and `allow_empty` override it when given."""
    return read(params, RSCurateConfig, "remote_sensing", "curate", workers=workers, allow_empty=allow_empty or None)


def curate_command(
    raster: list[Path] = typer.Option(..., "--raster", metavar="PATH", help="GeoTIFF/COG raster (any CRS); repeat for several."),
    osm: Path = typer.Option(..., "--osm", help="OpenStreetMap data: .osm, .osm.pbf, .osm.bz2 or .geojson."),
    out: Path = typer.Option(..., "--out", help="Output folder (shards/, manifest.parquet, rejects.csv, summary.json)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section remote_sensing.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0 = in process); overrides params."),
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")
    ] = False,
) -> dict[str, Any]:
    """Curate SkyScript-style image-caption pairs from rasters and OpenStreetMap tags."""
    osm = Path(osm)
    if not osm.is_file():
        raise typer.BadParameter(f"OSM file not found: {osm}", param_hint="--osm")
    try:
        osm_format(osm)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--osm") from exc
    cfg = load_config(params, workers, allow_empty)
    try:
        summary = curate([Path(r) for r in raster], osm, Path(out), cfg)
    except OSMFileError as exc:  # the one map of the run: nothing can be curated without it
        raise typer.BadParameter(str(exc), param_hint="--osm") from None
    typer.echo(
        f"remote_sensing: {summary['pairs']['kept']} pairs {summary['pairs']['per_split']}, "
        f"{sum(summary['rejected'].values())} rejects -> {out}"
    )
    return summary
