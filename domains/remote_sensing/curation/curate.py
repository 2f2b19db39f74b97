"""`domainfm curate remote_sensing`: SkyScript-style pairs from GeoTIFFs and OpenStreetMap.

For every OSM object with a tag visible from above, a tile centred on the object (with a
seeded random shift) is cut from the rasters under it, at a GSD at which the tag is still
recognisable, and captioned from the tags of the object and its visible neighbours.

Rasters form mosaics (mosaic.py): a tile is read from every raster of its mosaic that it touches,
so an object on a raster edge is curated once, from all the pixels that cover it. Work units are
spatial chunks of a mosaic (squares of `CHUNK_TILES` largest tiles on the equal-area grid of
pipelines/curation/splits.py); an object belongs to the chunk holding its centre, so it is curated
once per mosaic, and a unit's `inputs` are the rasters its tiles can reach.

Splits are by ground (pipelines.curation.splits.SpatialSplitter): cells of `split_cell_m` on an
equal-area grid, and a val/test tile within `split_buffer_m` of another split's cell is dropped,
so no evaluation tile shares ground with a training tile. Every pair carries its tile's lon/lat
footprint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, NamedTuple, Optional

import numpy as np
import rasterio
import shapely
import typer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from shapely.geometry import Point, box, mapping, shape
from shapely.strtree import STRtree

from domains.remote_sensing.curation.geometry import lonlat_box, transform_polygons
from domains.remote_sensing.curation.mosaic import Mosaic, RasterInfo, group_mosaics
from domains.remote_sensing.curation.osm import Feature, OSMFileError, osm_format, read_features
from domains.remote_sensing.curation.tiles import (
    WGS84,
    MemberReadError,
    TileSource,
    acquisition_time,
    mosaic_limits,
    native_gsd_m,
    overview_sample,
    read_mosaic_tile,
    select_bands,
    tile_problem,
    to_rgb8,
    utm_epsg,
)
from domains.remote_sensing.curation.visibility import TagMatch, TagTable, captions, dedupe, join_phrases, load_tag_table, table_from_dicts
from pipelines.curation import EXECUTOR_HELP, CurationConfig, ExecutorName, Pair, Reject, UnitResult, WorkUnit, run_curation
from pipelines.curation.splits import SpatialSplitter, equal_area_xy
from pipelines.errors import InputError
from pipelines.infer.device import DeviceChoice
from pipelines.io.remote import as_location, fetch, gdal_url_defaults, is_url, remote_identity
from pipelines.params import read

STAGE_RASTER = "raster"
STAGE_TILE = "tile"
CHUNK_TILES = 4  # a work unit's chunk side, in largest tiles
SPLIT_CELL_TILES = 4  # automatic split cell side, in largest tiles
_COS_30 = math.cos(math.radians(30.0))  # the equal-area grid's standard parallel (pipelines/curation/splits.py)


@dataclass
class RSCurateConfig(CurationConfig):
    """params.yaml `remote_sensing.curate`: the shared curation settings plus tiling, captions, splits and the quality filter."""

    # Tiles
    target_gsd_m: float = 1.0  # finest output GSD; never finer than the rasters' own GSD
    tile_size: int = 224  # output pixels a side
    point_tile_m: Optional[float] = None  # ground size for points and lines; None = tile_size * GSD
    polygon_margin: float = 0.1  # bbox grows by this fraction on each side
    min_tile_m: Optional[float] = None  # polygon tiles; None = tile_size * GSD
    max_tile_m: Optional[float] = None  # polygon tiles; None = 4 * min size (also capped by tag visibility)
    max_shift_fraction: float = 0.2  # random off-centre shift, as a fraction of the tile size
    seed: int = 0
    # Bands and radiometry
    bands: Optional[list[int]] = None  # 1-based; None = red/green/blue as the file names them, else the first three (or one grey)
    # Data that is not 8-bit is stretched linearly to 0..255 with one (low, high) per band for a whole mosaic, never per
    # tile: `stretch_limits` ([low, high] for every band, or one pair per band), else these percentiles of the valid
    # pixels of all the mosaic's rasters (a decimated read of each).
    stretch_percentiles: list[float] = field(default_factory=lambda: [2.0, 98.0])
    stretch_limits: Optional[list[float] | list[list[float]]] = None
    max_nodata_fraction: float = 0.1
    min_std: float = 2.0  # tiles with a smaller pixel std (0..255 scale) are blank
    # Captions
    max_surrounding: int = 3
    extra_visible_tags: list[dict[str, Any]] = field(default_factory=list)
    # Splits (pipelines.curation.splits.SpatialSplitter): square cells of this side on the equal-area grid (metres at
    # 30 degrees of latitude); None = SPLIT_CELL_TILES times the largest tile. Must be larger than the largest tile.
    split_cell_m: Optional[float] = None
    # val/test tiles whose footprint comes within this distance of a cell holding another split's tiles are dropped;
    # None = the farthest any tile reaches from its centre, which guarantees no shared ground (a smaller one does not)
    split_buffer_m: Optional[float] = None
    # Quality filter (pipelines.curation.quality), applied only when keep fraction < 1 and a model is named
    quality_model: Optional[str] = None
    quality_pretrained: Optional[str] = None
    quality_keep_fraction: float = 1.0
    quality_device: DeviceChoice = "auto"  # auto: the GPU when there is one (bf16 autocast), else the CPU
    quality_batch_size: int = 64

    def output_params(self) -> dict[str, Any]:
        """The options that change what a unit produces (its resume key hashes these)."""
        skip = {"workers", "shard_size", "val_fraction", "test_fraction", "split_seed", "split_cell_m", "split_buffer_m",
                "quality_model", "quality_pretrained", "quality_keep_fraction", "quality_device", "quality_batch_size"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class TileSizes:
    """Ground sizes of the tiles cut from one mosaic (metres), from the settings and the mosaic's GSD."""

    base_gsd: float
    min_tile: float
    max_tile: float
    point_tile: float

    @property
    def largest(self) -> float:
        """The largest tile side these settings allow."""
        return max(self.min_tile, self.max_tile, self.point_tile)


def tile_sizes(cfg: RSCurateConfig, native_gsd: float) -> TileSizes:
    """Tile sizes for a mosaic whose coarsest member has `native_gsd` metres per pixel."""
    base_gsd = max(cfg.target_gsd_m, native_gsd)
    min_tile = cfg.min_tile_m or cfg.tile_size * base_gsd
    return TileSizes(base_gsd, min_tile, cfg.max_tile_m or 4 * min_tile, cfg.point_tile_m or cfg.tile_size * base_gsd)


def grid_scale(south: float, north: float) -> float:
    """How much larger than on the ground a tile between these latitudes can measure on the equal-area grid.

    The grid stretches east-west by cos(30)/cos(lat) and shrinks north-south by the inverse; 10% more
    allows for tiles cut in a CRS turned against lon/lat (UTM's grid convergence).
    """
    far = min(89.0, max(abs(south), abs(north)))
    near = 0.0 if south <= 0.0 <= north else min(abs(south), abs(north))
    return 1.1 * max(_COS_30 / math.cos(math.radians(far)), math.cos(math.radians(near)) / _COS_30)


# ---------------------------------------------------------------- one unit: a chunk of a mosaic


@dataclass
class MosaicJob:
    """The payload of one unit: the mosaic's rasters its tiles can reach, the objects to tile and the settings."""

    members: list[RasterInfo]  # priority order
    features: list[Feature]  # the objects this unit tiles (centre in its chunk)
    context: list[Feature]  # every object its tiles may show, for the captions' neighbours
    config: dict[str, Any]  # RSCurateConfig as a dict
    tag_rows: list[dict[str, Any]]  # the full visibility table, extras merged
    gsd_m: float  # the mosaic's GSD (its coarsest member)
    tile_crs: Optional[str]  # the mosaic's own CRS for tiles, or None for the UTM zone of each tile
    limits: Optional[list[tuple[float, float]]]  # per-band stretch for data that is not 8-bit


def _stable_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def _centre(feature: Feature) -> Point:
    g = feature.geometry
    if feature.kind == "line":
        return g.interpolate(0.5, normalized=True)  # a point on the line, not beside a curve
    if feature.kind == "polygon":
        return box(*g.bounds).centroid
    return g.centroid


def _raster_stem(path: str) -> str:
    tag = hashlib.sha256(os.path.normpath(path).encode()).hexdigest()[:6]  # the path as given: ids stay the same in any checkout
    return f"{Path(path).stem}-{tag}"


class _Unreadable(Exception):
    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def process(unit: WorkUnit) -> UnitResult:
    """Tiles and captions for one chunk of a mosaic (module level, so worker processes can run it).

    A member whose pixels cannot be read gets a rejects row and the chunk is cut again without it:
    its neighbours still give what they cover.
    """
    job: MosaicJob = unit.payload
    cfg = RSCurateConfig(**job.config)
    table = table_from_dicts(job.tag_rows)
    members = list(job.members)
    unreadable: list[Reject] = []
    while True:
        result = UnitResult()
        result.rejects.extend(unreadable)
        if unreadable:
            result.counts["rasters_unreadable"] += len(unreadable)
        result.counts["objects_in_footprint"] += len(job.features)
        try:
            with ExitStack() as stack:
                sources = []
                for member in members:
                    try:
                        sources.append(stack.enter_context(rasterio.open(member.path)))
                    except RasterioError:
                        raise _Unreadable(member.path) from None
                _cut_tiles(job, cfg, table, members, sources, result)
            return result
        except _Unreadable as bad:
            unreadable.append(Reject(bad.path, STAGE_RASTER, "unreadable raster data (corrupt or truncated)"))
            members = [m for m in members if m.path != bad.path]


class _Placement(NamedTuple):
    """Where one visible object's tile lies: `bounds` in `crs`, `footprint` in lon/lat."""

    feature: Feature
    primary: TagMatch  # the tag the tile is about
    centre: Point  # lon/lat
    crs: CRS
    gsd: float
    shift: np.ndarray  # metres, x and y
    bounds: tuple[float, float, float, float]
    footprint: Any  # shapely polygon (a multipolygon where GDAL cuts it at the antimeridian)


def _place_tiles(features: list[Feature], cfg: RSCurateConfig, table: TagTable, sizes: TileSizes, own_crs: Optional[CRS],
                 result: UnitResult) -> list[_Placement]:
    """The tile of each object visible at the mosaic's GSD, in osm_id order: sized by it, shifted at random (seeded by it).

    A tile lies in the mosaic's own CRS when it has one, else in its object's UTM zone.

    The coordinates move in three calls per CRS for all the objects (centres, polygon outlines, tile footprints), not in
    three per object: calls that alternate directions make GDAL build the coordinate operation again each time, about
    0.2 ms a call (30 us when one direction repeats).
    """
    size = cfg.tile_size
    visible: list[tuple[Feature, TagMatch, Point]] = []
    for feat in sorted(features, key=lambda f: f.osm_id):
        focus = table.visible(feat.tags, sizes.base_gsd)
        if focus:
            visible.append((feat, focus[0], _centre(feat)))
        else:
            result.counts["objects_not_visible_at_gsd"] += 1
    by_crs: dict[Any, list[int]] = defaultdict(list)  # the objects in each tile CRS
    for i, (_, _, centre) in enumerate(visible):
        by_crs[own_crs or utm_epsg(centre.x, centre.y)].append(i)
    placements: dict[int, _Placement] = {}
    for crs_or_code, group in by_crs.items():
        crs = own_crs or CRS.from_epsg(crs_or_code)
        cxs, cys = warp_transform(WGS84, crs, [visible[i][2].x for i in group], [visible[i][2].y for i in group])
        extents = _extents_in(crs, [visible[i][0].geometry for i in group if visible[i][0].kind == "polygon"])
        placed = []
        for i, cx, cy in zip(group, cxs, cys):
            feat, primary, centre = visible[i]
            if feat.kind == "polygon":
                minx, miny, maxx, maxy = next(extents)
                ground = max(maxx - minx, maxy - miny) * (1 + 2 * cfg.polygon_margin)
                # never so coarse that the focus tag stops being visible
                ground = min(max(ground, sizes.min_tile), max(sizes.min_tile, min(sizes.max_tile, primary.max_gsd_m * size)))
            else:
                ground = sizes.point_tile
            rng = np.random.default_rng(_stable_int(cfg.seed, feat.osm_type, feat.osm_id))
            shift = rng.uniform(-cfg.max_shift_fraction, cfg.max_shift_fraction, size=2) * ground
            tx, ty = cx + shift[0], cy + shift[1]
            placed.append((ground / size, shift, (tx - ground / 2, ty - ground / 2, tx + ground / 2, ty + ground / 2)))
        footprints = transform_polygons(crs, WGS84, [mapping(box(*bounds)) for _, _, bounds in placed])
        for i, (gsd, shift, bounds), footprint in zip(group, placed, footprints):
            placements[i] = _Placement(*visible[i], crs, gsd, shift, bounds, shape(footprint))
    return [placements[i] for i in range(len(visible))]


def _extents_in(crs: CRS, polygons: list[Any]) -> Iterator[tuple[float, float, float, float]]:
    """The bounds in `crs` of each lon/lat polygon or multipolygon, all their vertices moved in one call."""
    if not polygons:
        return iter([])
    moved = shapely.transform(polygons, lambda xy: np.column_stack(warp_transform(WGS84, crs, xy[:, 0].tolist(), xy[:, 1].tolist())))
    return (tuple(map(float, b)) for b in shapely.bounds(moved))


def _cut_tiles(job: MosaicJob, cfg: RSCurateConfig, table: TagTable, members: list[RasterInfo], sources: list[Any],
               result: UnitResult) -> None:
    sizes = tile_sizes(cfg, job.gsd_m)
    size = cfg.tile_size
    member_boxes = [lonlat_box(*m.bounds_ll) for m in members]
    context = sorted(job.context, key=lambda f: f.osm_id)
    tree = STRtree([f.geometry for f in context])
    own_crs = CRS.from_user_input(job.tile_crs) if job.tile_crs else None
    tile_sources = [TileSource.of(src, m.bands) for src, m in zip(sources, members)]  # metadata checks once per raster

    for feat, primary, centre, crs, gsd, shift, bounds, tile_ll in _place_tiles(job.features, cfg, table, sizes, own_crs, result):
        lon, lat = centre.x, centre.y
        result.counts["tiles_attempted"] += 1

        touching = [i for i, b in enumerate(member_boxes) if b.intersects(tile_ll)]
        if tile_ll.geom_type != "Polygon" or tile_ll.bounds[2] - tile_ll.bounds[0] >= 180:
            # GDAL cut its footprint at 180 degrees or round a pole; the spatial split's cells take tiles in one piece
            where = f"{members[touching[0] if touching else 0].path}#{feat.osm_id}"
            result.rejects.append(Reject(where, STAGE_TILE, "tile crosses the antimeridian (180 degrees) or a pole"))
            result.counts["tiles_rejected_across_the_antimeridian_or_a_pole"] += 1
            continue
        resampling = Resampling.average if gsd > 1.5 * job.gsd_m else Resampling.bilinear
        if touching:
            try:
                tile, given = read_mosaic_tile([tile_sources[i] for i in touching], crs, bounds, size, resampling)
            except MemberReadError as exc:
                raise _Unreadable(members[touching[exc.index]].path) from None
            used = [members[i] for i, n in sorted(zip(touching, given), key=lambda t: -t[1]) if n > 0]
        else:
            tile, used = None, []
        main = used[0] if used else members[touching[0]] if touching else members[0]
        where = f"{main.path}#{feat.osm_id}"
        if tile is None:
            result.rejects.append(Reject(where, STAGE_TILE, "too much nodata"))
            result.counts["tiles_rejected_too_much_nodata"] += 1
            continue
        rgb = to_rgb8(tile, job.limits)
        problem = tile_problem(tile, rgb, cfg.max_nodata_fraction, cfg.min_std)
        if problem:
            result.rejects.append(Reject(where, STAGE_TILE, problem))
            result.counts[f"tiles_rejected_{problem.replace(' ', '_')}"] += 1
            continue

        title = primary.phrase
        neighbours = sorted(
            (j for j in tree.query(tile_ll, predicate="intersects") if context[j].osm_id != feat.osm_id),
            key=lambda j: (context[j].geometry.distance(centre), context[j].osm_id),
        )
        others = [m[0].phrase for j in neighbours if (m := table.visible(context[j].tags, gsd))]
        variants = captions(title, others, cfg.max_surrounding)
        all_tags = dedupe(m.phrase for m in table.visible(feat.tags, gsd))
        if len(all_tags) > 1:
            variants["title_all_tags"] = join_phrases(all_tags)

        epsg = crs.to_epsg()
        crs_name = f"EPSG:{epsg}" if epsg else crs.to_string()
        in_order = [m.path for m in members if m in used]  # priority order
        provenance = {
            "osm_id": feat.osm_id,
            "osm_type": feat.osm_type,
            "osm_kind": feat.kind,
            "tags": feat.tags,
            "tile_bounds": [float(b) for b in bounds],
            "tile_crs": crs_name,
            "raster_crs": main.crs,
            "rasters": in_order,
            "bands": main.bands,
            "gsd_m": float(gsd),
            "centre_lonlat": [float(lon), float(lat)],
            "shift_m": [float(shift[0]), float(shift[1])],
            "nodata_fraction": float(1.0 - tile.valid.mean()),
        }
        if job.limits and main.needs_stretch:
            provenance["stretch_limits"] = [[float(lo), float(hi)] for lo, hi in job.limits]
        result.pairs.append(
            Pair(
                id=f"{_raster_stem(main.path)}-{feat.osm_type}-{feat.osm_id.split('/')[-1]}",
                group="",  # the spatial splitter sets it: the pair's cell
                image=rgb,
                caption=variants["title"],
                source=" + ".join(in_order),
                caption_variants=_sorted(variants),
                provenance=_sorted(provenance),
                footprint=json.loads(json.dumps(mapping(tile_ll))),  # lists, not tuples: as the staged record reads back
            )
        )
        result.counts["tiles_written"] += 1


def raster_caveats(src: rasterio.io.DatasetReader, raster: str, bands: list[int], rule: str) -> list[str]:
    """Warnings for a raster curated in a way its owner may not expect: grey tiles, or bands shown as RGB on no evidence."""
    from rasterio.enums import ColorInterp

    if rule != "default":
        return []
    alpha = [i + 1 for i, c in enumerate(src.colorinterp) if c == ColorInterp.alpha]
    unused = [b for b in range(1, src.count + 1) if b not in bands and b not in alpha]
    if len(bands) == 1:
        left_out = f", band{'s' if len(unused) > 1 else ''} {', '.join(map(str, unused))} not used (set `bands` to choose)"
        return [f"{raster}: {src.count} band{'s' if src.count > 1 else ''}; tiles are grey from band {bands[0]}"
                + (left_out if unused else "")]
    if unused:
        shown = ", ".join(map(str, bands))
        return [f"{raster}: {src.count} bands, none named red, green or blue; tiles show bands {shown} as red, green, blue "
                "(set `bands` to choose)"]
    return []


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


def _identity(path: str | Path) -> tuple[str | None, Reject | None]:
    """What identifies the raster's current content (size and mtime, or a URL's size and validator)."""
    if is_url(path):
        try:
            identity = remote_identity(str(path))
        except InputError as exc:
            return None, Reject(str(path), STAGE_RASTER, f"raster URL cannot be read: {str(exc).removeprefix(f'{path}: ')}")
        return (None, Reject(str(path), STAGE_RASTER, "empty file")) if json.loads(identity).get("size") == 0 else (identity, None)
    path = Path(path)
    if path.is_dir():
        return None, Reject(str(path), STAGE_RASTER, "raster path is a folder, not a file (give each raster with --raster)")
    if not path.is_file():
        return None, Reject(str(path), STAGE_RASTER, "raster file not found")
    stat = path.stat()
    if stat.st_size == 0:
        return None, Reject(str(path), STAGE_RASTER, "empty file")
    return f"{stat.st_size}:{stat.st_mtime_ns}", None


def raster_footprint(path: str | Path) -> tuple[Footprint | None, Reject | None]:
    """The raster's lon/lat bounds, or the reason it cannot be used; `path` may be a URL (read in place by GDAL)."""
    identity, reject = _identity(path)
    if reject:
        return None, reject
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
    return Footprint(str(path), tuple(bounds), identity), None


def _features_digest(features: list[Feature]) -> str:
    h = hashlib.sha256()
    for f in sorted(features, key=lambda f: f.osm_id):
        h.update(json.dumps([f.osm_id, f.osm_type, f.kind, sorted(f.tags.items())]).encode())
        h.update(f.geometry.wkb)
    return h.hexdigest()[:16]


def inspect_raster(path: str | Path, order: int, cfg: RSCurateConfig,
                   read_pixels: bool = True) -> tuple[RasterInfo | None, Reject | None, Any, list[str]]:
    """A raster's place in the footprint index, or the reason it cannot be used.

    Returns (info, reject, sample of valid values for the stretch or None, warnings). The whole
    raster is read once, decimated: empty rasters and most truncated ones are found here.
    `read_pixels=False` skips that read where no stretch needs values (8-bit bands), for a caller
    that reads every pixel next anyway and finds those there: the valid area is then the
    raster's whole area.
    """
    fp, reject = raster_footprint(path)
    if reject:
        return None, reject, None, []
    try:
        with rasterio.open(path) as src:
            bands, rule = select_bands(src, cfg.bands)
            if any(b < 1 or b > src.count for b in bands) or len(bands) not in (1, 3):
                return None, Reject(f"{path} bands={bands}", STAGE_RASTER, "band selection does not fit the raster"), None, []
            wants_values = cfg.stretch_limits is None and any(src.dtypes[b - 1] != "uint8" for b in bands)
            valid_share, values = 1.0, None
            if read_pixels or wants_values:
                mask, values = overview_sample(src, bands, wants_values)
                if not mask.any():
                    return None, Reject(str(path), STAGE_RASTER, "raster has no valid pixels"), None, []
                valid_share = float(mask.mean())
            gsd = native_gsd_m(src)
            info = RasterInfo(
                path=str(path), bounds_ll=fp.bounds_ll, identity=fp.identity, crs=src.crs.to_string(), count=src.count,
                dtypes=tuple(src.dtypes), gsd_m=gsd, bands=bands, band_rule=rule, acquired=acquisition_time(src), order=order,
                valid_area_m2=valid_share * src.width * src.height * gsd * gsd,
            )
            return info, None, values, raster_caveats(src, str(path), bands, rule)
    except RasterioError:  # truncated or corrupt data often shows only when pixels are read
        return None, Reject(str(path), STAGE_RASTER, "unreadable raster data (corrupt or truncated)"), None, []


@dataclass
class Plan:
    """The work units of a run and what planning found on the way."""

    units: list[WorkUnit] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    largest_tile_grid_m: float = 0.0  # the largest tile any unit may cut, measured on the equal-area grid


def _limit_pairs(cfg: RSCurateConfig) -> list[Any]:
    raw = cfg.stretch_limits or []
    pairs = [raw] if raw and all(isinstance(v, (int, float)) for v in raw) else list(raw)
    if not pairs or any(not isinstance(p, (list, tuple)) or len(p) != 2 or not p[0] < p[1] for p in pairs):
        raise InputError(f"remote_sensing.curate.stretch_limits: {cfg.stretch_limits!r} must be [low, high] with low < high, "
                         "or a list of such pairs, one per band shown")
    return pairs


def configured_limits(cfg: RSCurateConfig, n_bands: int) -> list[tuple[float, float]]:
    """`stretch_limits` as one (low, high) per band shown; InputError when it does not fit."""
    pairs = _limit_pairs(cfg)
    if len(pairs) == 1:
        pairs = pairs * n_bands
    if len(pairs) != n_bands:
        raise InputError(f"remote_sensing.curate.stretch_limits: {len(pairs)} pairs for {n_bands} band{'s' if n_bands > 1 else ''} "
                         "shown; give one pair for every band, or a single [low, high]")
    return [(float(lo), float(hi)) for lo, hi in pairs]


def _mosaic_limits(mosaic: Mosaic, samples: dict[str, Any], cfg: RSCurateConfig, plan: Plan) -> list[tuple[float, float]] | None:
    """One (low, high) per shown band for the whole mosaic, when any member is not 8-bit; warns for each such member."""
    stretched = [m for m in mosaic.members if m.needs_stretch]
    if not stretched:
        return None
    n_bands = len(mosaic.members[0].bands)
    if cfg.stretch_limits is not None:
        return configured_limits(cfg, n_bands)
    limits = mosaic_limits([(samples[m.path], m.valid_area_m2) for m in mosaic.members], *cfg.stretch_percentiles)
    low, high = cfg.stretch_percentiles
    ranges = ", ".join(f"{lo:.6g}-{hi:.6g}" for lo, hi in limits)
    whole = f"the mosaic of {len(mosaic.members)} rasters" if len(mosaic.members) > 1 else "the raster"
    for m in stretched:
        dtypes = "/".join(sorted({m.dtypes[b - 1] for b in m.bands}))
        plan.warnings.append(f"{m.path}: {dtypes} values stretched to 8 bits with one range per band for {whole} ({ranges}: "
                             f"percentiles {low:g}-{high:g} of its valid pixels; set `stretch_limits` to choose)")
    return limits


def _reach_box(feature: Feature, reach_m: float) -> Any:
    """A lon/lat box around the object's centre holding any tile cut for it (two boxes across the antimeridian)."""
    c = _centre(feature)
    dlat = reach_m / 110_574.0
    dlon = reach_m / (111_320.0 * max(0.01, math.cos(math.radians(min(89.0, abs(c.y) + dlat)))))
    return lonlat_box(c.x - dlon, c.y - dlat, c.x + dlon, c.y + dlat)


def plan_units(
    rasters: list[str | Path], features: list[Feature], cfg: RSCurateConfig, table: TagTable
) -> Plan:
    """Mosaics of the usable rasters, cut into chunk units holding the objects whose centre they contain; rejects for the rest."""
    plan = Plan()
    infos: list[RasterInfo] = []
    samples: dict[str, Any] = {}
    for order, path in enumerate(dict.fromkeys(as_location(r) for r in rasters)):
        plan.counts["rasters_seen"] += 1
        info, reject, values, caveats = inspect_raster(path, order, cfg)
        if reject:
            plan.rejects.append(reject)
            if reject.reason == "raster has no valid pixels":
                plan.counts["rasters_all_nodata"] += 1
            elif reject.reason.startswith("unreadable"):
                plan.counts["rasters_unreadable"] += 1
            continue
        infos.append(info)
        samples[info.path] = values
        plan.warnings.extend(caveats)
    mosaics, mosaic_rejects = group_mosaics(infos)
    plan.rejects.extend(mosaic_rejects)
    if mosaic_rejects:
        plan.counts["rasters_apart_from_their_mosaic"] += len(mosaic_rejects)

    tree = STRtree([f.geometry for f in features])
    params_digest = hashlib.sha256(json.dumps([cfg.output_params(), table.as_dicts()], sort_keys=True).encode()).hexdigest()[:16]
    for mosaic in mosaics:
        hits: set[int] = set()
        for m in mosaic.members:
            if features:
                hits.update(int(j) for j in tree.query(lonlat_box(*m.bounds_ll), predicate="intersects"))
        if not hits:
            for m in mosaic.members:
                plan.rejects.append(Reject(m.path, STAGE_RASTER, "no OSM features intersect the raster footprint"))
                plan.counts["rasters_without_features"] += 1
            continue
        sizes = tile_sizes(cfg, mosaic.gsd_m)
        south = min(m.bounds_ll[1] for m in mosaic.members)
        north = max(m.bounds_ll[3] for m in mosaic.members)
        scale = grid_scale(south, north)
        plan.largest_tile_grid_m = max(plan.largest_tile_grid_m, sizes.largest * scale)
        limits = _mosaic_limits(mosaic, samples, cfg, plan)
        plan.counts["mosaics"] += 1
        plan.counts["rasters_curated"] += len(mosaic.members)
        plan.units.extend(_chunk_units(mosaic, [features[j] for j in sorted(hits)], tree, features, sizes, scale, limits, cfg,
                                       table, params_digest))
    return plan


def _chunk_units(mosaic: Mosaic, mine: list[Feature], tree: STRtree, features: list[Feature], sizes: TileSizes, scale: float,
                 limits: list[tuple[float, float]] | None, cfg: RSCurateConfig, table: TagTable, params_digest: str) -> list[WorkUnit]:
    """The units of one mosaic: objects grouped by the chunk holding their centre, each with the members its tiles can reach."""
    chunk_m = CHUNK_TILES * sizes.largest * scale
    chunks: dict[tuple[int, int], list[Feature]] = defaultdict(list)
    for feat in mine:
        c = _centre(feat)
        x, y = equal_area_xy(c.x, c.y)
        chunks[(math.floor(x / chunk_m), math.floor(y / chunk_m))].append(feat)
    # the farthest a tile's corner can be from its object's centre, with the shift, and a margin for the CRS's turn
    reach_m = sizes.largest * (0.5 + cfg.max_shift_fraction) * math.sqrt(2) * 1.1
    member_boxes = STRtree([lonlat_box(*m.bounds_ll) for m in mosaic.members])
    mosaic_id = hashlib.sha256("\n".join(os.path.abspath(m.path) for m in mosaic.members).encode()).hexdigest()[:12]
    units = []
    for (i, j), own in sorted(chunks.items()):
        reach = [_reach_box(f, reach_m) for f in own]
        touched = set(member_boxes.query(reach, predicate="intersects")[1].tolist())
        if not touched:  # objects whose tiles fall outside every raster: read one anyway, so the tile is refused as empty
            touched = set(member_boxes.query([f.geometry for f in own], predicate="intersects")[1].tolist())
        inputs = [m for k, m in enumerate(mosaic.members) if k in touched]
        context_ids = set(tree.query(reach, predicate="intersects")[1].tolist())
        context = [features[k] for k in sorted(context_ids)]
        digest = hashlib.sha256(json.dumps([
            params_digest, [(m.path, m.identity, m.bands, m.gsd_m) for m in inputs], mosaic.gsd_m, mosaic.tile_crs, limits,
            _features_digest(own), _features_digest(context),
        ], default=str).encode()).hexdigest()[:16]
        job = MosaicJob(inputs, own, context, asdict(cfg), table.as_dicts(), mosaic.gsd_m, mosaic.tile_crs, limits)
        units.append(WorkUnit(key=f"remote_sensing:{mosaic_id}:{i}:{j}:{digest}", payload=job, inputs=[m.path for m in inputs]))
    return units


class _CheckedSplitter:
    """SpatialSplitter whose refusals (a cell not larger than a tile) stop the run as an input error naming the setting."""

    def __init__(self, splitter: SpatialSplitter):
        self.splitter = splitter

    def assign(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]], Counter]:
        """SpatialSplitter.assign, with its ValueError as an InputError."""
        try:
            return self.splitter.assign(rows)
        except ValueError as exc:
            raise InputError(f"remote_sensing.curate.split_cell_m: {exc}") from None


def split_cell(cfg: RSCurateConfig, largest_tile_grid_m: float) -> float:
    """The split cell side: `split_cell_m`, or SPLIT_CELL_TILES largest tiles; InputError when not larger than the largest tile."""
    automatic = float(math.ceil(SPLIT_CELL_TILES * max(largest_tile_grid_m, 1.0) / 10.0) * 10)
    if cfg.split_cell_m is None:
        return automatic
    if cfg.split_cell_m <= largest_tile_grid_m:
        raise InputError(
            f"remote_sensing.curate.split_cell_m: {cfg.split_cell_m:g} m is not larger than the largest tile these settings "
            f"can cut ({largest_tile_grid_m:.0f} m across on the equal-area grid); a cell must hold whole tiles and its "
            f"neighbours' buffer: leave it unset ({automatic:g} m here) or choose more"
        )
    return float(cfg.split_cell_m)


def check_config(cfg: RSCurateConfig) -> None:
    """InputError for settings that cannot work, before anything is read."""
    low, high = (list(cfg.stretch_percentiles) + [None, None])[:2]
    if len(cfg.stretch_percentiles) != 2 or not 0 <= low < high <= 100:
        raise InputError(f"remote_sensing.curate.stretch_percentiles: {cfg.stretch_percentiles!r} must be [low, high] "
                         "with 0 <= low < high <= 100")
    if cfg.stretch_limits is not None:
        _limit_pairs(cfg)
    if cfg.split_cell_m is not None and cfg.split_cell_m <= 0:
        raise InputError(f"remote_sensing.curate.split_cell_m: {cfg.split_cell_m:g} must be positive")
    if cfg.split_buffer_m is not None and cfg.split_buffer_m < 0:
        raise InputError(f"remote_sensing.curate.split_buffer_m: {cfg.split_buffer_m:g} must not be negative")


def curate(rasters: list[str | Path], osm: Path, out: Path, cfg: RSCurateConfig) -> dict[str, Any]:
    """The whole curation (the CLI's body, callable from tests and other code); rasters may be URLs."""
    check_config(cfg)
    if any(is_url(r) for r in rasters):
        gdal_url_defaults()
    table = load_tag_table(cfg.extra_visible_tags)
    read = read_features(osm, keep=table.has_visible)
    pre_rejects = list(read.rejects)
    pre_counts = Counter(read.counts)
    pre_counts["osm_features_with_visible_tags"] = len(read.features)
    if not read.features:
        # when features with visible tags were all refused, their rows say why; this one says the map is empty because of them
        reason = "no usable features: every feature with visible tags was rejected" if read.rejects else "no features with visible tags"
        pre_rejects.append(Reject(str(osm), "osm", reason))
    plan = plan_units(rasters, read.features, cfg, table)
    pre_rejects += plan.rejects
    pre_counts.update(plan.counts)
    if read.features and not plan.units and plan.counts["rasters_without_features"]:
        pre_rejects.append(Reject(str(osm), "osm", "no features intersect any raster"))
    cell_m = split_cell(cfg, plan.largest_tile_grid_m)
    pre_counts["split_cell_m"] = int(round(cell_m))
    splitter = SpatialSplitter(cell_m, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.split_buffer_m)

    scorer = None
    if cfg.quality_keep_fraction < 1.0 and cfg.quality_model:
        from pipelines.curation.quality import make_clip_scorer
        from pipelines.models.clip import ModelSpec

        scorer = make_clip_scorer(ModelSpec(name=cfg.quality_model, pretrained=cfg.quality_pretrained),
                                  cfg.quality_batch_size, cfg.quality_device)
    return run_curation(
        plan.units,
        process,
        out,
        cfg.curation(),
        pre_rejects=pre_rejects,
        pre_counts=dict(pre_counts),
        pre_warnings=read.warnings + plan.warnings,
        quality_scorer=scorer,
        quality_keep_fraction=cfg.quality_keep_fraction,
        splitter=_CheckedSplitter(splitter),
    )


def load_config(params: Optional[Path], workers: Optional[int] = None, allow_empty: bool = False,
                executor: Optional[ExecutorName] = None) -> RSCurateConfig:
    """Params `remote_sensing.curate`, typed; `workers`, `allow_empty` and `executor` override it when given."""
    return read(params, RSCurateConfig, "remote_sensing", "curate", workers=workers, allow_empty=allow_empty or None,
                executor=executor)


def curate_command(
    raster: list[str] = typer.Option(
        ..., "--raster", metavar="PATH|URL",
        help="GeoTIFF/COG raster (any CRS), a path or a URL read in place (https://, s3://, ...); repeat for several.",
    ),
    osm: str = typer.Option(
        ..., "--osm", metavar="PATH|URL", help="OpenStreetMap data: .osm, .osm.pbf, .osm.bz2 or .geojson (a URL is fetched once)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (shards/, manifest.parquet, rejects.csv, summary.json)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section remote_sensing.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0 = in process); overrides params."),
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")
    ] = False,
    executor: Annotated[Optional[ExecutorName], typer.Option("--executor", help=EXECUTOR_HELP)] = None,
) -> dict[str, Any]:
    """Curate SkyScript-style image-caption pairs from rasters and OpenStreetMap tags."""
    try:
        osm = fetch(osm)
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--osm") from None
    if not osm.is_file():
        raise typer.BadParameter(f"OSM file not found: {osm}", param_hint="--osm")
    try:
        osm_format(osm)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--osm") from exc
    cfg = load_config(params, workers, allow_empty, executor)
    try:
        summary = curate([as_location(r) for r in raster], osm, Path(out), cfg)
    except OSMFileError as exc:  # the one map of the run: nothing can be curated without it
        raise typer.BadParameter(str(exc), param_hint="--osm") from None
    typer.echo(
        f"remote_sensing: {summary['pairs']['kept']} pairs {summary['pairs']['per_split']}, "
        f"{sum(summary['rejected'].values())} rejects -> {out}"
    )
    return summary
