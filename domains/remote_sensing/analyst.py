"""`domainfm map remote_sensing` and `domainfm search remote_sensing`: an exported model at work on GeoTIFFs.

- `map_raster`: a sliding-window zero-shot land-cover map of a scene (one GeoTIFF or COG, or several
  adjacent ones read as one mosaic): a class raster and a probability raster on the window grid, in
  the scene's CRS; the regions of each class as GeoJSON (EPSG:4326) with their area and mean score;
  a quick-look PNG of the scene with the map over it; a JSON summary.
- `search_rasters`: the windows of the scene that best match a text query, as GeoJSON footprints
  and a contact sheet; window embeddings are cached per (model, rasters' content, tiling), so the
  next query over the same rasters only embeds the query.

Windows are the curation's (`analyst_windows`): the curation's band choice and one radiometric
stretch per band for the whole scene, NaN and nodata as empty pixels, a window read from every
raster it touches and resampled straight to the model's input size. Reading runs ahead in reader
threads and the model scores whole batches (`pipelines.infer`), on the GPU when there is one, so
memory is bounded by the batch, not the scene.

```python
from domains.remote_sensing.analyst import map_raster, search_rasters
result = map_raster("exports/remote_sensing", "scene.tif", "maps/", classes=["water", "forest", "farmland"])
result.shares  # {"water": 0.12, ...}: fraction of the mapped area per class
```
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import numpy as np
import typer

from domains.remote_sensing.analyst_windows import (
    REASON_READ_FAILED,
    RasterReadError,
    Scene,
    WindowGrid,
    WindowOverview,
    WindowReader,
    default_tile_m,
    open_scene,
    plan_grid,
    read_overview,
)
from domains.remote_sensing.curation.geometry import from_parts, shapely_polygons, transform_polygons
from domains.remote_sensing.prompts import CLASSNAMES, TEMPLATES
from pipelines.errors import InputError
from pipelines.infer import outputs, render
from pipelines.infer.cache import CACHE_HELP, EmbeddingCache
from pipelines.infer.device import PRECISION_HELP, Precision
from pipelines.infer.hubness import CORRECTION_HELP, Correction, check_bank, describe, search_scores
from pipelines.infer.sheets import contact_sheet, palette_png
from pipelines.io.remote import as_location

if TYPE_CHECKING:
    from pipelines.infer.clip import ClipEncoder

DOMAIN = "remote_sensing"
NODATA_CLASS = 255  # <stem>.classes.tif: cells without data (so at most 255 classes)
DISPLAY_PX = 800  # the quick-look's larger side, in pixels
RASTER_SUFFIXES = (".tif", ".tiff")  # a folder given as --raster: its GeoTIFFs
OVERLAY_ALPHA = 0.45
# Land-cover names get the colours maps use for them; other classes take tab10's remaining colours.
KNOWN_COLOURS = {"water": (31, 119, 180), "forest": (27, 94, 32), "farmland": (222, 190, 70), "residential area": (214, 39, 40),
                 "road": (127, 127, 127), "park": (140, 214, 110), "parking lot": (148, 103, 189)}
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


# ---------------------------------------------------------------- results


@dataclass
class RasterMap:
    """What `map_raster` wrote, and the key numbers."""

    rasters: list[Path]
    classes_tif: Path  # <stem>.classes.tif: uint8 class index per cell, nodata 255
    probs_tif: Path  # <stem>.probs.tif: float32, one band per class, nodata NaN
    geojson: Path  # <stem>.geojson: the regions of each class, EPSG:4326
    quicklook: Path  # <stem>.png
    summary: Path  # <stem>.json
    classnames: list[str]
    shares: dict[str, float]  # fraction of the mapped area per class (cells with data)
    crs: str
    tile_m: float
    stride_m: float
    cells: tuple[int, int]  # rows, columns of the window grid
    n_windows: int  # windows read (those touching a raster)
    n_scored: int  # windows holding enough data to be scored
    n_regions: int  # GeoJSON features
    seconds: float  # reading and scoring the windows
    windows_per_second: float
    pixels_per_second: float  # the scene's own pixels mapped per second (windows read x native pixels per cell)
    warnings: list[str] = field(default_factory=list)
    cached: bool = False  # the windows' embeddings came from the embedding cache (no window read)


@dataclass
class RasterSearch:
    """What `search_rasters` wrote, and the best matches."""

    query: str
    geojson: Path  # search.geojson: the best windows' footprints, EPSG:4326
    contact_sheet: Path  # search.png
    summary: Path  # search.json
    n_rasters: int
    n_windows: int  # windows with data searched
    cached: bool  # whether the window embeddings came from the cache
    best: list[dict[str, Any]] = field(default_factory=list)  # rank, score, raster, row, col, bounds, lon/lat centre
    seconds: float = 0.0


# ---------------------------------------------------------------- inputs


def read_classnames(classes: str | Sequence[str] | None = None, classes_file: Path | None = None) -> list[str]:
    """Class names from "a,b,c" (or a list), or a file with one per line; the remote-sensing CLASSNAMES when neither is given.

    Raises InputError as `pipelines.infer.outputs.read_classnames` does, and for more than 255 names.
    """
    names = outputs.read_classnames(classes, classes_file, CLASSNAMES)
    if len(names) > NODATA_CLASS:
        raise InputError(f"{len(names)} classes{f' in {classes_file}' if classes_file else ''}: at most {NODATA_CLASS} "
                         "(the class raster is 8-bit, 255 marks cells without data)")
    return names


def read_templates(templates_file: Path | None = None) -> list[str]:
    """Prompt templates ("{c}" stands for the class name), one per line; the remote-sensing TEMPLATES when no file is given."""
    return outputs.read_templates(templates_file, TEMPLATES)


def read_bands(bands: str | Sequence[int] | None) -> list[int] | None:
    """1-based band numbers shown as red, green, blue ("4,3,2") or one grey band ("1"); None = the curation's choice."""
    if bands is None:
        return None
    try:
        numbers = [int(b) for b in (bands.split(",") if isinstance(bands, str) else bands) if str(b).strip()]
    except ValueError:
        raise InputError(f"--bands {bands!r}: give 1-based band numbers, e.g. 4,3,2 (or one band for grey)") from None
    if len(numbers) not in (1, 3) or min(numbers) < 1:
        raise InputError(f"--bands {bands!r}: give three 1-based band numbers (red, green, blue) or one (grey)")
    return numbers


def raster_files(raster: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """The rasters given (paths or URLs; a folder stands for the GeoTIFFs directly in it, by name), each once; InputError when none."""
    given = [raster] if isinstance(raster, (str, Path)) else list(raster)
    paths: list[str | Path] = []
    for item in given:
        location = as_location(item)
        if isinstance(location, Path) and location.is_dir():
            found = sorted(p for p in location.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{location}: no GeoTIFF in this folder ({', '.join(RASTER_SUFFIXES)})")
            paths += found
        else:
            paths.append(location)
    if not paths:
        raise InputError("no raster given: pass --raster FILE (several for a mosaic of adjacent rasters)")
    return outputs.each_once(paths)


def mapped_scenes(raster: Sequence[str | Path], each: bool = False) -> list[list[str | Path]]:
    """The scenes `--raster` names: one mosaic of all the rasters, or with `each` a scene per raster.

    InputError, before anything is read, naming a missing file, a folder without GeoTIFFs or (with
    `each`) two rasters whose maps would have the same file names.
    """
    paths = raster_files(raster)
    for path in paths:
        if isinstance(path, Path) and not path.is_file():
            raise InputError(f"{path}: no such raster file or folder")
    if not each:
        return [paths]
    outputs.check_output_names(paths, lambda path: PurePosixPath(str(path)).stem, "{0}.*", "maps", "map")  # map_raster's names
    return [[path] for path in paths]


def export_domain(folder: Path) -> str | None:
    """The domain an export's model card (README.md, "# domainfm: <domain>") names, or None when it has no card."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return None
    match = re.match(r"#\s*domainfm:\s*(\S+)", card.read_text(encoding="utf-8", errors="replace"))
    return match.group(1) if match else None


def training_tiles(folder: Path) -> tuple[int | None, float | None]:
    """(curate.tile_size, curate.target_gsd_m) from an export's model card: the tiles the model was trained on (None when unsaid)."""
    card = Path(folder) / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    found = dict(re.findall(r"^\|\s*curate\.(tile_size|target_gsd_m)\s*\|\s*([0-9.]+)\s*\|", text, flags=re.M))
    size, gsd = found.get("tile_size"), found.get("target_gsd_m")
    return (int(float(size)) if size else None), (float(gsd) if gsd else None)


def load_encoder(model: str | Path | ClipEncoder, device: str = "auto", precision: Precision = "auto") -> ClipEncoder:
    """An exported open_clip model of this domain as an encoder; InputError naming the folder when it is not one.

    Refused: a folder that is not an export, a volume (CT) export, and an image export whose model
    card names another domain (e.g. pathology).
    """
    from pipelines.infer.clip import ClipEncoder  # here: torch and open_clip are imported when a model runs, not for --help

    if isinstance(model, ClipEncoder):
        return model
    folder = outputs.export_folder(model, device)
    domain = export_domain(folder)
    if domain is not None and domain != DOMAIN:
        raise InputError(f"{folder} is an export of the {domain} domain; this command needs a {DOMAIN} export "
                         f"(e.g. exports/{DOMAIN})")
    return ClipEncoder.load(folder, device, precision)


def input_size(encoder: ClipEncoder) -> int:
    """The side in pixels of the images the model takes (windows are read at this size)."""
    size = getattr(getattr(encoder.model, "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else 224


def window_grid(encoder: ClipEncoder, scene: Scene, tile_m: float | None, stride_m: float | None, min_valid: float) -> WindowGrid:
    """The scene's window grid; `tile_m` defaults to the ground size of the tiles the model was trained on.

    That is the export's model card's curate.tile_size pixels at curate.target_gsd_m (never finer
    than the scene's pixels), else the curation's defaults (224 px at 1 m); `stride_m` defaults to `tile_m`.
    """
    if tile_m is None:
        size, gsd = training_tiles(encoder.folder) if encoder.folder is not None else (None, None)
        tile_m = default_tile_m(scene.gsd_m, size, gsd)
    return plan_grid(scene, tile_m, stride_m if stride_m is not None else tile_m, input_size(encoder), min_valid)


# ---------------------------------------------------------------- scoring


def embed_grid(encoder: ClipEncoder, grid: WindowGrid, batch_size: int = 64, workers: int = 2,
               overview: WindowOverview | None = None) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The windows holding data (row, col) and their L2-normalised embeddings (n, embed_dim), in grid order.

    Windows are read by `workers` threads (`embed_windows`: on a CPU the model threads; each with its
    own raster handles) and embedded `batch_size` at a time, each drawn into `overview` when one is
    given; damaged raster data is an InputError naming the raster.
    """
    from pipelines.infer.stream import embed_windows  # here: torch and open_clip are imported when a model runs, not for --help

    if not grid.windows:
        return [], np.zeros((0, encoder.embed_dim), np.float32)
    workers = max(0, min(workers, -(-len(grid.windows) // batch_size)))  # no idle reader threads for a small scene
    kept: list[tuple[int, int]] = []
    chunks = []
    try:
        for batch in embed_windows(grid.windows, WindowReader.of(grid, overview=overview), encoder.to_tensor, encoder.embed_tensors,
                                   batch_size=batch_size, workers=workers, desc=grid.scene.name, to_batch=encoder.to_batch,
                                   device=encoder.device):
            kept.extend(w for w, ok in zip(batch.windows, batch.valid) if ok)
            if len(batch.embeddings):
                chunks.append(batch.embeddings)
    except RasterReadError as exc:  # the message is the raster's path: name it
        named = [m.path for m in grid.scene.members if m.path in str(exc)]
        raise InputError(f"{named[0] if named else grid.scene.name}: {REASON_READ_FAILED}") from None
    embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, encoder.embed_dim), np.float32)
    return kept, embeddings


# ---------------------------------------------------------------- writing


publish = outputs.publish
_json_bytes = outputs.json_bytes


def class_colours(classnames: Sequence[str]) -> list[tuple[int, int, int]]:
    """An RGB colour per class: the usual map colour for land-cover names, else distinct tab10 (then HSV) colours."""
    import colorsys

    spare = [c for c in TAB10 if c not in KNOWN_COLOURS.values()] + [c for c in TAB10 if c in KNOWN_COLOURS.values()]
    colours = []
    for name in classnames:
        known = KNOWN_COLOURS.get(name.lower())
        if known is not None and known not in colours:
            colours.append(known)
        elif spare:
            colours.append(spare.pop(0))
        else:
            hue = len(colours) / max(1, len(classnames))
            colours.append(tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, 0.75, 0.85)))
    return colours


def write_class_rasters(grid: WindowGrid, classes: np.ndarray, probabilities: np.ndarray, classnames: Sequence[str],
                        colours: Sequence[tuple[int, int, int]], classes_path: Path, probs_path: Path) -> None:
    """<stem>.classes.tif (uint8, nodata 255, a colour table) and <stem>.probs.tif (float32, one band per class, nodata NaN)."""
    import rasterio

    profile = {"driver": "GTiff", "width": grid.cols, "height": grid.rows, "crs": grid.scene.crs, "transform": grid.transform,
               "compress": "deflate"}
    legend = ", ".join(f"{i} {name}" for i, name in enumerate(classnames))
    with rasterio.open(classes_path, "w", count=1, dtype="uint8", nodata=NODATA_CLASS, **profile) as dst:
        dst.write(classes, 1)
        dst.set_band_description(1, f"class index ({legend}; {NODATA_CLASS} no data)")
        dst.write_colormap(1, {**{i: (*c, 255) for i, c in enumerate(colours)}, NODATA_CLASS: (0, 0, 0, 0)})
        dst.update_tags(CLASSES=json.dumps(list(classnames)), TILE_M=f"{grid.tile_m:g}", STRIDE_M=f"{grid.stride_m:g}")
    with rasterio.open(probs_path, "w", count=len(classnames), dtype="float32", nodata=float("nan"), interleave="band",
                       predictor=3, **profile) as dst:
        dst.write(probabilities)
        for i, name in enumerate(classnames, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(CLASSES=json.dumps(list(classnames)), TILE_M=f"{grid.tile_m:g}", STRIDE_M=f"{grid.stride_m:g}")


def _area_crs(scene: Scene) -> Any:
    """A Lambert azimuthal equal-area CRS centred on the scene: areas in it are ground areas, whatever the scene's CRS."""
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp_transform

    left, bottom, right, top = scene.bounds
    (lon,), (lat,) = warp_transform(scene.crs, "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2])
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs")


def lonlat_geometry(crs: Any, geometry: dict[str, Any]) -> dict[str, Any]:
    """A polygon in EPSG:4326 as RFC 7946 has it: lon/lat to 7 decimals (1 cm), cut at the antimeridian, exteriors counter-clockwise."""
    return lonlat_geometries(crs, [geometry])[0]


def lonlat_geometries(crs: Any, geometries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`lonlat_geometry` of each polygon or multipolygon: transformed together (`transform_polygons`), oriented by GEOS in one call."""
    import shapely

    transformed = transform_polygons(crs, "EPSG:4326", list(geometries), precision=7)
    polygons, owner = shapely_polygons(transformed)
    oriented = shapely.orient_polygons(polygons, exterior_cw=False)  # exteriors counter-clockwise, holes clockwise
    rings, ring_owner = shapely.get_rings(oriented, return_index=True)  # each polygon's exterior, then its holes
    points, point_ring = shapely.get_coordinates(rings, return_index=True)
    polygon_rings: list[list[list[list[float]]]] = [[] for _ in polygons]
    for polygon, ring in zip(ring_owner, np.split(points, np.flatnonzero(np.diff(point_ring)) + 1)):
        polygon_rings[polygon].append(ring.tolist())
    parts: list[list[Any]] = [[] for _ in transformed]
    for geometry, rings_of_polygon in zip(owner, polygon_rings):
        parts[geometry].append(rings_of_polygon)
    return [from_parts(g["type"], p) for g, p in zip(transformed, parts)]


def class_regions(grid: WindowGrid, classes: np.ndarray, scores: np.ndarray, classnames: Sequence[str]) -> list[dict[str, Any]]:
    """GeoJSON features (RFC 7946: EPSG:4326, lon/lat, exterior rings counter-clockwise): one per 4-connected region of a class.

    Properties: class, class_index, mean_score (the mean probability of the class over the region's
    cells), area_m2 (ground area, in an equal-area projection centred on the scene) and cells.
    """
    import shapely
    from rasterio.features import shapes
    from scipy import ndimage

    labels = np.zeros(classes.shape, np.int32)
    owner: list[int] = []
    for k in range(len(classnames)):
        found, n = ndimage.label(classes == k)  # 4-connected, as shapes() below
        labels[found > 0] = found[found > 0] + len(owner)
        owner.extend([k] * n)
    if not owner:
        return []
    index = np.arange(1, len(owner) + 1)
    mean_scores = ndimage.mean(scores, labels, index)
    cells = ndimage.sum(np.ones_like(scores), labels, index)
    geometries, values = zip(*shapes(labels, mask=labels > 0, connectivity=4, transform=grid.transform))
    polygons, owner_of = shapely_polygons(transform_polygons(grid.scene.crs, _area_crs(grid.scene), list(geometries)))
    areas = np.bincount(owner_of, weights=shapely.area(polygons), minlength=len(geometries))  # a multipolygon's parts summed
    features = []
    for geometry, value, area in zip(lonlat_geometries(grid.scene.crs, geometries), values, areas):
        i = int(value) - 1
        features.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {"class": classnames[owner[i]], "class_index": owner[i], "mean_score": round(float(mean_scores[i]), 4),
                           "area_m2": round(float(area), 1), "cells": int(cells[i])},
        })
    features.sort(key=lambda f: (f["properties"]["class_index"], -f["properties"]["area_m2"]))
    return features


def quicklook_image(rgb: np.ndarray, classes: np.ndarray, classnames: Sequence[str], colours: Sequence[tuple[int, int, int]],
                    shares: dict[str, float], title: str, metres_per_px: float) -> tuple[Any, tuple[int, int]]:
    """The quick-look as a PIL RGB image, and where the scene's top-left pixel lies on it (x, y).

    Each overview pixel takes the class of the cell under it (nearest cell), its colour blended over
    the scene at OVERLAY_ALPHA; cells without data leave the scene as it is.
    """
    height, width = rgb.shape[:2]
    rows = (np.arange(height) * classes.shape[0] // height).clip(0, classes.shape[0] - 1)
    cols = (np.arange(width) * classes.shape[1] // width).clip(0, classes.shape[1] - 1)
    shown = classes[rows][:, cols]
    blended = render.blend_labels(rgb, shown, colours, OVERLAY_ALPHA, clear=NODATA_CLASS)
    legend = [(tuple(c), f"{name} ({shares.get(name, 0.0):.0%})") for name, c in zip(classnames, colours)]
    steps = [v * 10 ** e for e in range(0, 7) for v in (1, 2, 5)]
    return render.figure(blended, title, legend, "most probable class per window (share of the mapped area)",
                         columns=min(4, len(classnames)), scale_bar=render.ScaleBar(metres_per_px, steps, "m", "km"))


def quicklook_png(rgb: np.ndarray, classes: np.ndarray, classnames: Sequence[str], colours: Sequence[tuple[int, int, int]],
                  shares: dict[str, float], title: str, metres_per_px: float) -> bytes:
    """The scene with its class map over it (semi-transparent), a legend with each class's share and a scale bar, as PNG bytes."""
    image, _ = quicklook_image(rgb, classes, classnames, colours, shares, title, metres_per_px)
    return palette_png(image, [(0, 0, 0), (255, 255, 255), *colours])


# ---------------------------------------------------------------- map


def map_settings(classes: Sequence[str] | None, templates: Sequence[str] | None, batch_size: int, workers: int,
                 bands: str | Sequence[int] | None) -> tuple[list[str], list[str], list[int] | None]:
    """`map_raster`'s checks of what is not the scene: (class names, templates, bands); InputError naming the setting."""
    classnames = read_classnames(classes)
    templates = outputs.checked_templates(templates, TEMPLATES)
    if batch_size < 1 or workers < 0:
        raise InputError(f"settings out of range: batch size={batch_size} (>= 1), workers={workers} (>= 0)")
    return classnames, templates, read_bands(bands)


def map_raster(model: str | Path | ClipEncoder, raster: str | Path | Sequence[str | Path], out: str | Path,
               classes: Sequence[str] | None = None, templates: Sequence[str] | None = None, tile_m: float | None = None,
               stride_m: float | None = None, batch_size: int = 64, workers: int = 2, bands: Sequence[int] | None = None,
               min_valid: float = 0.5, device: str = "auto", cache: str | Path | None = None, precision: Precision = "auto") -> RasterMap:
    """Classify every window of a scene zero-shot; write the class and probability rasters, the regions' GeoJSON and a quick-look.

    The maps are on the window grid, one cell per window position: cells of `stride_m` ground metres
    from the scene's top-left corner, in the scene's CRS, each scored from the `tile_m` window
    centred on it (so with the default stride each cell is its window). A cell is nodata when less
    than `min_valid` of its window holds data.

    Args:
        model: an exported open_clip model folder (`exports/remote_sensing`), or a loaded ClipEncoder.
        raster: a GeoTIFF/COG in a projected CRS, or several adjacent ones read as one mosaic (they
            must share a CRS, band count and data type; where they overlap, the newest acquisition
            wins, then the order given); a folder stands for its GeoTIFFs. Outputs are named after the first one.
        out: the folder that receives `<stem>.classes.tif`, `<stem>.probs.tif`, `<stem>.geojson`,
            `<stem>.png` and `<stem>.json` (other files in it are left alone).
        classes: class names (default: the remote-sensing demo's CLASSNAMES).
        templates: prompt templates with "{c}" for the class name (default: the remote-sensing TEMPLATES).
        tile_m: window side in ground metres (default: the ground size of the tiles the model was
            curated with, from its model card, never finer than the scene's pixels; else 224 px at 1 m).
        stride_m: distance between window centres, the maps' cell size (default: `tile_m`; at most `tile_m`).
        batch_size: the most windows per model batch (batches of about one size: pipelines.infer.stream.batch_spans).
        workers: threads reading windows ahead of the model on a GPU (on a CPU the model threads read;
            0 reads in the calling thread).
        bands: 1-based bands shown as red, green, blue (or one grey band); default the curation's
            choice (bands named red/green/blue, Landsat numbering, colour interpretation, else 1-3).
        min_valid: a window is scored when at least this fraction of its pixels holds data.
        device: "auto" (the GPU when there is one), "cpu" or "cuda".
        cache: embedding cache folder (default $DOMAINFM_CACHE/embeddings, else ~/.cache/domainfm/embeddings),
            shared with `search_rasters`: a scene mapped or searched before with the same model and
            windows is not read again (a new class list, say, costs its prompts and the outputs). The
            quick-look's view of the scene drawn from the windows is kept with their embeddings; without
            it (a scene searched first, or windows coarser than the display) the scene is read at the
            quick-look's size.
        precision: "auto" (bf16 where the device computes it natively), "bf16" or "fp32"
            (pipelines.infer.device); ignored for a loaded ClipEncoder, which has its own.

    Returns:
        The paths written, the class shares and the speed.

    Raises:
        InputError: naming the input, for a raster that is missing, unreadable, without a CRS or in
            geographic degrees, rasters that cannot form one mosaic (different CRSs, band counts or
            data types), a scene smaller than one cell or without data, a folder that is not a
            remote-sensing open_clip export, an empty or repeated class list, or bad settings.
            Nothing is written then.
    """
    started_total = time.perf_counter()
    paths, out = raster_files(raster), Path(out)
    classnames, templates, bands = map_settings(classes, templates, batch_size, workers, bands)
    encoder = load_encoder(model, device, precision)
    scene = open_scene(paths, bands)
    grid = window_grid(encoder, scene, tile_m, stride_m, min_valid)
    classifier = encoder.zero_shot(classnames, templates)

    # The quick-look's view of the scene: drawn from the windows as they are read when they are at least as
    # fine as the display (no second read of the scene), else read while the windows are scored.
    drawn = WindowOverview(grid, DISPLAY_PX) if WindowOverview.holds(grid, DISPLAY_PX) else None
    overview: Future[np.ndarray] | None = None
    if drawn is None:
        overview_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overview")
        overview = overview_reader.submit(read_overview, grid, DISPLAY_PX)
        overview_reader.shutdown(wait=False)
    started = time.perf_counter()
    embedding_cache = EmbeddingCache(cache)
    try:
        windows, embeddings, cached, key = window_embeddings(encoder, grid, embedding_cache, batch_size, workers, drawn)
    except BaseException:
        if overview is not None:
            overview.cancel()
            wait([overview])  # no reading left behind once the command has failed
        raise
    seconds = time.perf_counter() - started
    if not windows:
        if overview is not None:
            wait([overview])
        raise InputError(f"{scene.inputs[0]}: no window holds data (none of the {len(grid.windows)} windows of {grid.tile_m:g} m "
                         f"is {min_valid:.0%} valid pixels)")
    probabilities = classifier.probabilities(embeddings)
    rows, cols = (np.array(v, np.int64) for v in zip(*windows))
    best = probabilities.argmax(axis=1)
    class_grid = np.full((grid.rows, grid.cols), NODATA_CLASS, np.uint8)
    class_grid[rows, cols] = best
    prob_grid = np.full((len(classnames), grid.rows, grid.cols), np.nan, np.float32)
    prob_grid[:, rows, cols] = probabilities.T
    score_grid = np.zeros((grid.rows, grid.cols), np.float32)
    score_grid[rows, cols] = probabilities.max(axis=1)

    colours = class_colours(classnames)
    regions = class_regions(grid, class_grid, score_grid, classnames)
    counts = np.bincount(best, minlength=len(classnames))
    areas = {name: 0.0 for name in classnames}
    for feature in regions:
        areas[feature["properties"]["class"]] += feature["properties"]["area_m2"]
    total_area = sum(areas.values())
    shares = {name: round(areas[name] / total_area, 4) if total_area else 0.0 for name in classnames}
    pixels = len(grid.windows) * (grid.stride_m / scene.gsd_m) ** 2
    stem = PurePosixPath(str(scene.inputs[0])).stem
    summary = {
        "rasters": [str(p) for p in scene.inputs],
        "mosaic_order": [m.path for m in scene.members],
        "model": str(model),  # the export's folder, also for a ClipEncoder loaded from one
        "model_fingerprint": encoder.fingerprint,
        "classes": classnames,
        "class_colours": {name: list(c) for name, c in zip(classnames, colours)},
        "templates": templates,
        "shares": shares,
        "area_m2": {name: round(v, 1) for name, v in areas.items()},
        "windows_by_class": {name: int(n) for name, n in zip(classnames, counts)},
        "grid": {"crs": scene.crs_name, "transform": list(grid.transform)[:6], "rows": grid.rows, "cols": grid.cols,
                 "bounds": list(grid.bounds), "scene_bounds": list(scene.bounds), "tile_m": grid.tile_m, "stride_m": grid.stride_m,
                 "window_px": grid.window_px, "scene_gsd_m": scene.gsd_m, "crs_units_per_m": scene.units_per_m,
                 "resampling": grid.resampling.name, "min_valid": min_valid,
                 "cells": "one per window position; each cell is scored from the tile_m window centred on it"},
        "bands": {m.path: {"bands": m.bands, "rule": m.band_rule} for m in scene.members},
        "stretch_limits": scene.limits,
        "windows": {"read": len(grid.windows), "scored": len(windows), "without_data": len(grid.windows) - len(windows),
                    "cells": grid.rows * grid.cols},
        "regions": len(regions),
        # seconds, windows and pixels per second: reading and scoring the windows (or their embeddings from
        # the cache: "cached"); total_seconds adds the model, the scene's checks and the outputs.
        "run": {"batch_size": batch_size, "workers": workers, "device": str(encoder.device), "precision": encoder.precision,
                "seconds": round(seconds, 3),
                "windows_per_second": round(len(grid.windows) / max(seconds, 1e-9), 2),
                "pixels_per_second": round(pixels / max(seconds, 1e-9), 1), "cached": cached, "total_seconds": None},
        "warnings": scene.warnings,
        "outputs": {"classes": f"{stem}.classes.tif", "probabilities": f"{stem}.probs.tif", "geojson": f"{stem}.geojson",
                    "quicklook": f"{stem}.png"},
    }
    title = (f"{scene.name}: zero-shot map, {len(windows)} windows of {grid.tile_m:g} m (stride {grid.stride_m:g} m)\n"
             f"{scene.crs_name}, {scene.gsd_m:.3g} m pixels, {len(classnames)} classes")

    def write(staging: Path) -> None:
        write_class_rasters(grid, class_grid, prob_grid, classnames, colours, staging / f"{stem}.classes.tif",
                            staging / f"{stem}.probs.tif")
        (staging / f"{stem}.geojson").write_bytes(_json_bytes({"type": "FeatureCollection", "features": regions}, compact=True))
        view = f"quicklook-{DISPLAY_PX}px"  # the picture's name in the cache
        if overview is not None:  # read by its thread: windows coarser than the display
            rgb = overview.result()
        elif not cached:
            rgb = drawn.pixels
            embedding_cache.save_picture(key, view, rgb)  # a re-map (other classes) shows the same view without a read
        else:
            rgb = embedding_cache.load_picture(key, view)
            if rgb is None:  # the windows were embedded by a search, which draws nothing: read once, then kept
                rgb = read_overview(grid, DISPLAY_PX)
                embedding_cache.save_picture(key, view, rgb)
        metres_per_px = (grid.bounds[2] - grid.bounds[0]) / scene.units_per_m / rgb.shape[1]
        (staging / f"{stem}.png").write_bytes(quicklook_png(rgb, class_grid, classnames, colours, shares, title, metres_per_px))
        summary["run"]["total_seconds"] = round(time.perf_counter() - started_total, 3)
        (staging / f"{stem}.json").write_bytes(_json_bytes(summary))

    try:
        publish(out, write)
    except RasterReadError as exc:  # the quick-look's overview of the scene failed
        raise InputError(f"{exc}: {REASON_READ_FAILED}") from None
    return RasterMap(rasters=scene.inputs, classes_tif=out / f"{stem}.classes.tif", probs_tif=out / f"{stem}.probs.tif",
                     geojson=out / f"{stem}.geojson", quicklook=out / f"{stem}.png", summary=out / f"{stem}.json",
                     classnames=classnames, shares=shares, crs=scene.crs_name, tile_m=grid.tile_m, stride_m=grid.stride_m,
                     cells=(grid.rows, grid.cols), n_windows=len(grid.windows), n_scored=len(windows), n_regions=len(regions),
                     seconds=seconds, windows_per_second=summary["run"]["windows_per_second"],
                     pixels_per_second=summary["run"]["pixels_per_second"], warnings=scene.warnings, cached=cached)


# ---------------------------------------------------------------- search


def window_embeddings(encoder: ClipEncoder, grid: WindowGrid, cache: EmbeddingCache, batch_size: int = 64, workers: int = 2,
                      overview: WindowOverview | None = None) -> tuple[list[tuple[int, int]], np.ndarray, bool, str]:
    """(windows with data, their embeddings, whether they came from the cache, their key), cached per (model, content, tiling).

    The key names them in the cache (pictures kept beside them use it too). Windows read (not on a cache hit) are
    drawn into `overview` when one is given.
    """
    key = cache.key(encoder.embeddings_identity, [m.path for m in grid.scene.members], grid.settings())
    hit = cache.load(key)
    if hit is not None:
        embeddings, records = hit
        return [(int(r["row"]), int(r["col"])) for r in records], embeddings, True, key
    windows, embeddings = embed_grid(encoder, grid, batch_size, workers, overview)
    cache.save(key, embeddings, [{"row": r, "col": c} for r, c in windows])
    return windows, embeddings, False, key


def _footprint(grid: WindowGrid, row: int, col: int) -> tuple[dict[str, Any], list[float]]:
    """A window's square as an RFC 7946 Polygon (EPSG:4326, counter-clockwise) and its centre (lon, lat)."""
    from rasterio.warp import transform as warp_transform
    from shapely.geometry import box, mapping

    left, bottom, right, top = grid.window_bounds(row, col)
    (lon,), (lat,) = warp_transform(grid.scene.crs, "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2])
    return lonlat_geometry(grid.scene.crs, mapping(box(left, bottom, right, top))), [round(lon, 7), round(lat, 7)]


def _raster_at(grid: WindowGrid, row: int, col: int) -> str:
    """The name of the raster holding the window's centre (first in mosaic order), else the first it touches."""
    left, bottom, right, top = grid.window_bounds(row, col)
    x, y = (left + right) / 2, (bottom + top) / 2
    members = grid.scene.members
    inside = [m for m in members if (b := grid.scene.member_bounds[m.path])[0] <= x < b[2] and b[1] < y <= b[3]]
    touching = [m for m in members if (b := grid.scene.member_bounds[m.path])[0] < right and b[2] > left and b[1] < top and b[3] > bottom]
    return Path((inside or touching or members)[0].path).name


def search_rasters(model: str | Path | ClipEncoder, rasters: str | Path | Sequence[str | Path], query: str, out: str | Path,
                   top_k: int = 8, tile_m: float | None = None, stride_m: float | None = None, batch_size: int = 64, workers: int = 2,
                   bands: Sequence[int] | None = None, min_valid: float = 0.5, cache: str | Path | None = None,
                   device: str = "auto", correction: Correction = "none", precision: Precision = "auto") -> RasterSearch:
    """The windows of a scene that best match a text query, by cosine similarity; writes their footprints and a contact sheet.

    Args:
        model: an exported open_clip model folder, or a loaded ClipEncoder.
        rasters: a GeoTIFF/COG in a projected CRS, or several adjacent ones read as one mosaic (a folder: its GeoTIFFs).
        query: free text, e.g. "a parking lot next to a road" (embedded as is, without templates).
        out: the folder that receives `search.geojson`, `search.png` and `search.json`.
        top_k: how many windows to keep.
        tile_m: window side in ground metres (default as `map_raster`).
        stride_m: distance between window centres (default: `tile_m`).
        batch_size: the most windows per model batch (batches of about one size: pipelines.infer.stream.batch_spans).
        workers: threads reading windows ahead of the model on a GPU (on a CPU the model threads read; 0: none).
        bands: 1-based bands shown as red, green, blue (default: the curation's choice).
        min_valid: a window is searched when at least this fraction of its pixels holds data.
        cache: embedding cache folder (default $DOMAINFM_CACHE/embeddings, else ~/.cache/domainfm/embeddings); rasters already embedded
            by the same model with the same windows are not read again.
        device: "auto", "cpu" or "cuda".
        correction: "none" ranks by cosine similarity; "qb_norm" or "db_norm" rescore it against the
            hubness bank the export ships (pipelines/infer/hubness.py), so windows near every caption
            (hubs) stop crowding the top.
        precision: "auto" (bf16 where the device computes it natively), "bf16" or "fp32"
            (pipelines.infer.device); ignored for a loaded ClipEncoder, which has its own.

    Returns:
        The paths written and the best matches.

    Raises:
        InputError: naming the input, for an empty query, a raster that cannot be used (as `map_raster`),
            a folder that is not a remote-sensing open_clip export, a scene without data, or bad settings.
            Nothing is written then.
    """
    started = time.perf_counter()
    paths, out = raster_files(rasters), Path(out)
    if not query or not query.strip():
        raise InputError("empty --query: say what to look for, e.g. --query 'a parking lot next to a road'")
    if top_k < 1 or batch_size < 1 or workers < 0:
        raise InputError(f"settings out of range: top k={top_k} (>= 1), batch size={batch_size} (>= 1), workers={workers} (>= 0)")
    bands = read_bands(bands)
    encoder = load_encoder(model, device, precision)
    bank = encoder.hubness_bank()
    check_bank(correction, bank, str(encoder.folder))
    scene = open_scene(paths, bands)
    grid = window_grid(encoder, scene, tile_m, stride_m, min_valid)
    embedding_cache = EmbeddingCache(Path(cache) if cache is not None else None)
    windows, embeddings, cached, _ = window_embeddings(encoder, grid, embedding_cache, batch_size, workers)
    if not windows:
        raise InputError(f"{scene.inputs[0]}: no window holds data (none of the {len(grid.windows)} windows of {grid.tile_m:g} m "
                         f"is {min_valid:.0%} valid pixels)")

    text = encoder.embed_texts([query.strip()])[0]
    scores = search_scores(text, embeddings, correction, bank, str(encoder.folder))
    order = np.argsort(-scores, kind="stable")[:top_k]
    rows, features = [], []
    for rank, j in enumerate(order, start=1):
        row, col = windows[j]
        geometry, centre = _footprint(grid, row, col)
        record = {"rank": rank, "score": round(float(scores[j]), 6), "raster": _raster_at(grid, row, col), "row": row, "col": col,
                  "bounds": [round(v, 3) for v in grid.window_bounds(row, col)], "centre_lonlat": centre}
        rows.append(record)
        features.append({"type": "Feature", "geometry": geometry, "properties": record})
    summary = {"query": query.strip(), "model_fingerprint": encoder.fingerprint, "precision": encoder.precision, "top_k": int(top_k),
               "score": describe(correction, bank),
               "rasters": [str(p) for p in scene.inputs], "crs": scene.crs_name,
               "tiling": {"tile_m": grid.tile_m, "stride_m": grid.stride_m, "window_px": grid.window_px, "min_valid": min_valid,
                          "rows": grid.rows, "cols": grid.cols},
               "windows": int(len(windows)), "cached": cached, "cache": str(embedding_cache.folder), "warnings": scene.warnings,
               "best": rows}

    def write(staging: Path) -> None:
        (staging / "search.geojson").write_bytes(_json_bytes({"type": "FeatureCollection", "features": features}))
        reader = WindowReader.of(grid, size=max(grid.window_px, 160))
        try:
            images = [reader.read(grid.window_bounds(r["row"], r["col"]), reader.size)[0] for r in rows]
        finally:
            reader.close()
        labels = [f"{r['rank']}. {PurePosixPath(r['raster']).stem[:12]} {r['score']:.3f}" for r in rows]
        contact_sheet(images, labels, staging / "search.png",
                      title=f"\"{query.strip()}\": best {len(rows)} of {len(windows)} windows of {grid.tile_m:g} m in {scene.name}")
        summary["seconds"] = round(time.perf_counter() - started, 3)
        (staging / "search.json").write_bytes(_json_bytes(summary))

    try:
        publish(out, write)
    except RasterReadError as exc:
        raise InputError(f"{exc}: {REASON_READ_FAILED}") from None
    return RasterSearch(query=query.strip(), geojson=out / "search.geojson", contact_sheet=out / "search.png",
                        summary=out / "search.json", n_rasters=len(scene.inputs), n_windows=int(len(windows)), cached=cached,
                        best=rows, seconds=summary["seconds"])


# ---------------------------------------------------------------- commands


def map_command(
    model: Annotated[Path, typer.Option(help="Exported remote-sensing model folder (`domainfm export`), e.g. exports/remote_sensing.")],
    raster: Annotated[list[str], typer.Option(
        metavar="PATH|URL|DIR", help="GeoTIFF/COG in a projected CRS, a path or a URL read in place, or a folder of them; "
        "repeat for adjacent rasters read as one mosaic (or, with --each, for more scenes).")],
    out: Annotated[Path, typer.Option(help="Output folder: <stem>.classes.tif, .probs.tif, .geojson (EPSG:4326), .png, .json.")],
    each: Annotated[bool, typer.Option(help="Map each raster as its own scene, not one mosaic of them all: one process maps "
                                       "them in turn (the model loaded once).")] = False,
    classes: Annotated[Optional[str], typer.Option(help="Class names, comma-separated (default: the remote-sensing demo's).")] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    templates_file: Annotated[Optional[Path], typer.Option(help="Prompt templates, one per line, {c} = class name.")] = None,
    tile_m: Annotated[Optional[float], typer.Option(help="Window side in ground metres (default: the model's training tiles).")] = None,
    stride_m: Annotated[Optional[float], typer.Option(help="Distance between windows = map cell size, metres (default: --tile-m).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per model batch.")] = 64,
    workers: Annotated[int, typer.Option(help="Reader threads on a GPU (0: none; on a CPU the model threads read).")] = 2,
    bands: Annotated[Optional[str], typer.Option(help="Bands shown as red,green,blue, e.g. 4,3,2 (default: as the file names).")] = None,
    min_valid: Annotated[float, typer.Option(help="Fraction of a window's pixels that must hold data for it to be scored.")] = 0.5,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = "auto",
    cache: Annotated[Optional[Path], typer.Option(help=CACHE_HELP)] = None,
    skip_unreadable: Annotated[bool, typer.Option(help="With --each, leave out the scenes that cannot be mapped (unreadable, "
                                                  f"no CRS, no data), listed in OUT/{outputs.SKIPPED_FILE}, instead of "
                                                  "stopping at the first.")] = False,
) -> None:
    """Map a scene zero-shot, window by window: class and probability GeoTIFFs, class regions as GeoJSON, a quick-look PNG.

    With --each, the scenes are mapped in turn, each one's files written whole before the next
    starts; a scene that fails stops the run there, naming it (the scenes before it keep their maps,
    and a rerun takes their embeddings from the cache), unless --skip-unreadable (`outputs.run_each`).
    """
    classnames, templates, band_list = map_settings(read_classnames(classes, classes_file), read_templates(templates_file),
                                                    batch_size, workers, bands)  # before the model loads: a typo is reported at once
    scenes = mapped_scenes(raster, each)
    encoder = load_encoder(model, device, precision)  # once for all the scenes: its start-up is most of a small scene's map

    def map_one(scene: list[str | Path]) -> None:
        result = map_raster(encoder, scene, out, classnames, templates, tile_m, stride_m, batch_size, workers, band_list, min_valid,
                            device, cache)
        shares = ", ".join(f"{name} {share:.0%}" for name, share in sorted(result.shares.items(), key=lambda kv: -kv[1]) if share > 0)
        more = f" and {len(scene) - 1} more" if len(scene) > 1 else ""
        typer.echo(f"{PurePosixPath(str(scene[0])).name}{more}: {result.n_scored} of {result.n_windows} windows of {result.tile_m:g} m "
                   f"(stride {result.stride_m:g} m, {result.cells[0]}x{result.cells[1]} cells, {result.crs}) in {result.seconds:.1f} s: "
                   + ("embeddings from the cache" if result.cached else
                      f"{result.windows_per_second:.1f} windows/s, {result.pixels_per_second / 1e6:.2f} Mpx/s") + f"; classes: {shares}")
        for note in result.warnings:
            typer.echo(f"  note: {note}")
        for path in (result.classes_tif, result.probs_tif, result.geojson, result.quicklook, result.summary):
            typer.echo(f"  wrote {path}")

    outputs.run_each(scenes, map_one, out, skip_unreadable, typer.echo, name_of=lambda scene: " + ".join(map(str, scene)))


def search_command(
    model: Annotated[Path, typer.Option(help="Exported remote-sensing model folder (`domainfm export`).")],
    raster: Annotated[list[str], typer.Option(
        metavar="PATH|URL|DIR", help="GeoTIFF/COG in a projected CRS, a path or a URL read in place, or a folder of them; "
        "repeat for adjacent rasters read as one mosaic.")],
    query: Annotated[str, typer.Option(help="What to look for, in words.")],
    out: Annotated[Path, typer.Option(help="Output folder: search.geojson (EPSG:4326), search.png (contact sheet), search.json.")],
    top_k: Annotated[int, typer.Option(help="Best windows to keep.")] = 8,
    tile_m: Annotated[Optional[float], typer.Option(help="Window side in ground metres (default: the model's training tiles).")] = None,
    stride_m: Annotated[Optional[float], typer.Option(help="Distance between windows, metres (default: --tile-m).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per model batch.")] = 64,
    workers: Annotated[int, typer.Option(help="Reader threads on a GPU (0: none; on a CPU the model threads read).")] = 2,
    bands: Annotated[Optional[str], typer.Option(help="Bands shown as red,green,blue, e.g. 4,3,2 (default: as the file names).")] = None,
    min_valid: Annotated[float, typer.Option(help="Fraction of a window's pixels that must hold data for it to be searched.")] = 0.5,
    cache: Annotated[Optional[Path], typer.Option(help=CACHE_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = "auto",
    correction: Annotated[Correction, typer.Option(help=CORRECTION_HELP)] = "none",
) -> None:
    """Find the windows of a scene that best match a text query (window embeddings cached per scene and tiling)."""
    result = search_rasters(model, raster, query, out, top_k, tile_m, stride_m, batch_size, workers, read_bands(bands), min_valid,
                            cache, device, correction, precision)
    best = result.best[0]
    typer.echo(f"{result.n_windows} windows in {result.n_rasters} raster{'s' if result.n_rasters > 1 else ''} "
               f"({'from the cache' if result.cached else 'embedded'}) in {result.seconds:.1f} s; best: {best['raster']} "
               f"row {best['row']} col {best['col']} at lon/lat {best['centre_lonlat'][0]:.5f}, {best['centre_lonlat'][1]:.5f} "
               f"({best['score']:.3f})")
    for path in (result.geojson, result.contact_sheet, result.summary):
        typer.echo(f"  wrote {path}")
