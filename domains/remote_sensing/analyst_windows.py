"""Windows of a scene for the analyst commands: the rasters as one mosaic, the window grid, how a window is read.

The rasters go through the curation's own reading (`domains/remote_sensing/curation`): `inspect_raster`
checks each file and samples the valid pixels of those to stretch, `select_bands` picks red, green and blue, data that is
not 8-bit is stretched with one (low, high) pair per band for the whole mosaic (`mosaic_limits`, at
the curation's percentiles), overlapping rasters give way by the curation's priority (newest first),
and a window is read from every raster it touches (`read_mosaic_tile`), resampled straight to the
model's input size, as the curation cut its training tiles. NaN, +-inf and the declared nodata
value are empty pixels.

The grid: square cells of `stride_m` ground metres laid from the mosaic's top-left corner in the
rasters' own CRS; a strip narrower than one cell at the right and bottom edges is left out, so the
maps stay inside the rasters' bounds. The window of a cell is the `tile_m` square centred on it
(with stride = tile, windows are the cells). Distances are ground metres: in a CRS whose units are
not ground metres (EPSG:3857 away from the equator, US survey feet) they are converted with the
scale at the mosaic's centre.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from domains.remote_sensing.curation.curate import RSCurateConfig, inspect_raster, tile_sizes
from domains.remote_sensing.curation.mosaic import Mosaic, RasterInfo, join_problem, priority
from domains.remote_sensing.curation.tiles import (
    WGS84,
    MemberReadError,
    Tile,
    TileSource,
    keeps_own_crs,
    mosaic_limits,
    read_mosaic_tile,
    read_tile,
    to_rgb8,
    utm_crs,
)
from pipelines.errors import InputError
from pipelines.infer.outputs import each_once
from pipelines.io.remote import as_location, gdal_url_defaults, is_url

TILING_VERSION = "rs-window-grid-v1"  # in embedding cache keys: bump when windows are cut differently
CURATION = RSCurateConfig()  # the curation's defaults: stretch percentiles, training tile size and GSD
REASON_READ_FAILED = "unreadable raster data (corrupt or truncated)"


class RasterReadError(Exception):
    """A raster's pixels could not be read (damaged or truncated data); the message is the raster's path."""


@dataclass
class Scene:
    """Rasters read as one mosaic in one projected CRS, and how their pixels become RGB."""

    inputs: list[str | Path]  # as given: paths, or URLs read in place (pipelines/io/remote.py)
    members: list[RasterInfo]  # priority order (newest acquisition first, then input order)
    crs: CRS
    bounds: tuple[float, float, float, float]  # union of the members' bounds, in `crs`
    units_per_m: float  # CRS units per ground metre at the centre (1 for UTM and other metric conformal CRSs)
    limits: list[tuple[float, float]] | None  # per-band stretch for data that is not 8-bit, one pair for the whole mosaic
    member_bounds: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # per raster path, in `crs`
    warnings: list[str] = field(default_factory=list)  # rasters used with a caveat (grey, stretched, guessed bands)

    @property
    def gsd_m(self) -> float:
        """Ground metres per pixel of the coarsest member."""
        return Mosaic(self.members).gsd_m

    @property
    def name(self) -> str:
        """The first raster's name, and how many more there are."""
        more = len(self.inputs) - 1
        return PurePosixPath(str(self.inputs[0])).name + (f" and {more} more" if more else "")

    @property
    def crs_name(self) -> str:
        """"EPSG:32631", or the CRS's PROJ string when it has no EPSG code."""
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_string()


def _hint_utm(path: Path, src: rasterio.io.DatasetReader) -> str:
    """`gdalwarp` to the UTM zone of the raster's centre."""
    x, y = src.xy(src.height // 2, src.width // 2)
    (lon,), (lat,) = warp_transform(src.crs, WGS84, [x], [y])
    epsg = utm_crs(lon, lat).to_epsg() if -180 <= lon <= 180 and -90 <= lat <= 90 else "<utm zone>"
    return f"gdalwarp -t_srs EPSG:{epsg} {path} {path.with_name(path.stem + '_utm.tif')}"


def units_per_metre(crs: CRS, x: float, y: float) -> float:
    """CRS units per ground metre at (x, y): 1 in metric conformal CRSs, else measured against the local UTM zone."""
    if keeps_own_crs(crs):
        return 1.0
    step = 1.0
    lons, lats = warp_transform(crs, WGS84, [x, x + step, x], [y, y, y + step])
    utm = utm_crs(lons[0], lats[0])
    ux, uy = warp_transform(WGS84, utm, lons, lats)
    metres = (math.hypot(ux[1] - ux[0], uy[1] - uy[0]) + math.hypot(ux[2] - ux[0], uy[2] - uy[0])) / 2
    return step / metres


def open_scene(paths: Sequence[Path], bands: Sequence[int] | None = None) -> Scene:
    """Check the rasters and read them as one mosaic; InputError naming the raster that cannot be used.

    Refused: a missing, empty or unreadable file, a raster without a CRS or in geographic degrees
    (windows are measured in metres: reproject it), bands that do not fit, a raster to stretch
    without valid pixels, and rasters that cannot share a mosaic (another CRS, band count or data
    type). 8-bit pixels are first read with the windows (an 8-bit raster without data holds no
    window with data; damaged data fails its window's read).
    """
    if not paths:
        raise InputError("no raster given: pass --raster FILE (several for a mosaic of adjacent rasters)")
    cfg = RSCurateConfig(bands=list(bands) if bands else None)
    infos: list[RasterInfo] = []
    samples: dict[str, Any] = {}
    warnings: list[str] = []
    crss: list[CRS] = []
    bounds: list[tuple[float, float, float, float]] = []
    paths = each_once([as_location(p) for p in paths])  # a raster given twice is read once
    if any(is_url(p) for p in paths):
        gdal_url_defaults()
    for order, path in enumerate(paths):
        # 8-bit rasters are not read here: the windows read every pixel (and find an empty or damaged raster)
        info, reject, values, caveats = inspect_raster(path, order, cfg, read_pixels=False)
        if reject is not None:
            if reject.reason == "raster has no CRS":
                raise InputError(f"{path}: raster has no CRS; give it its CRS (gdal_edit.py -a_srs EPSG:<code> {path}) "
                                 "or reproject it to a projected CRS in metres (gdalwarp -t_srs EPSG:<utm zone> ...)")
            raise InputError(f"{reject.input}: {reject.reason}")
        with rasterio.open(path) as src:
            if not src.crs.is_projected:
                raise InputError(f"{path}: CRS {src.crs.to_string()} is geographic (degrees), but windows are measured in metres; "
                                 f"reproject it to a projected CRS first, e.g. the UTM zone of its centre: {_hint_utm(path, src)}")
            crss.append(src.crs)
            bounds.append(tuple(src.bounds))
        infos.append(info)
        samples[info.path] = values
        warnings.extend(caveats)
    first = infos[0]
    for info, crs in zip(infos[1:], crss[1:]):
        if crs != crss[0]:
            raise InputError(f"{info.path}: CRS {info.crs} differs from {first.path}'s ({first.crs}); the rasters of one mosaic "
                             f"must share a CRS: reproject it, e.g. gdalwarp -t_srs {first.crs} {info.path} "
                             f"{Path(info.path).with_name(Path(info.path).stem + '_reprojected.tif')}")
        problem = join_problem(info, first)
        if problem and problem != "different resolution":  # windows are resampled anyway
            raise InputError(f"{info.path}: cannot join the mosaic of {first.name} ({problem}: {info.describe()}, "
                             f"{first.name} has {first.describe()})")
    union = (min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds))
    members = priority(infos)
    limits = None
    if any(m.needs_stretch for m in members):
        limits = mosaic_limits([(samples[m.path], m.valid_area_m2) for m in members], *CURATION.stretch_percentiles)
        low, high = CURATION.stretch_percentiles
        ranges = ", ".join(f"{lo:.6g}-{hi:.6g}" for lo, hi in limits)
        for m in members:
            if m.needs_stretch:
                warnings.append(f"{m.path}: {'/'.join(sorted({m.dtypes[b - 1] for b in m.bands}))} values stretched to 8 bits "
                                f"with one range per band for the scene ({ranges}: percentiles {low:g}-{high:g} of its valid pixels)")
    centre = ((union[0] + union[2]) / 2, (union[1] + union[3]) / 2)
    return Scene(inputs=paths, members=members, crs=crss[0], bounds=union,
                 units_per_m=units_per_metre(crss[0], *centre), limits=limits,
                 member_bounds={info.path: b for info, b in zip(infos, bounds)}, warnings=warnings)


def default_tile_m(gsd_m: float, tile_size: int | None = None, target_gsd_m: float | None = None) -> float:
    """The ground side of the curation's tiles for a scene of `gsd_m` metres per pixel.

    `tile_size` pixels at the curation's GSD, never finer than the scene's own pixels (224 px at 1 m
    by default: 224 m for imagery of 1 m or finer); pass the settings a model was curated with.
    """
    cfg = RSCurateConfig(tile_size=tile_size or CURATION.tile_size, target_gsd_m=target_gsd_m or CURATION.target_gsd_m)
    return float(tile_sizes(cfg, gsd_m).point_tile)


@dataclass
class WindowGrid:
    """Square cells of `stride_m` over a scene, each scored from the `tile_m` window centred on it."""

    scene: Scene
    tile_m: float  # window side, ground metres
    stride_m: float  # cell side, ground metres
    window_px: int  # windows are read at this size (the model's input)
    min_valid: float  # a window is scored when at least this fraction of its pixels holds data
    rows: int
    cols: int
    windows: list[tuple[int, int]]  # (row, col) of the cells whose window touches a raster, row-major

    @property
    def stride(self) -> float:
        """Cell side in CRS units."""
        return self.stride_m * self.scene.units_per_m

    @property
    def side(self) -> float:
        """Window side in CRS units."""
        return self.tile_m * self.scene.units_per_m

    @property
    def transform(self) -> Affine:
        """The cells' geotransform (north up, origin at the scene's top-left corner)."""
        left, _, _, top = self.scene.bounds
        return Affine(self.stride, 0.0, left, 0.0, -self.stride, top)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The cells' bounds (left, bottom, right, top) in the scene's CRS."""
        left, _, _, top = self.scene.bounds
        return left, top - self.rows * self.stride, left + self.cols * self.stride, top

    @property
    def resampling(self) -> Resampling:
        """Average when windows are read coarser than the rasters (as the curation), else bilinear."""
        return Resampling.average if self.tile_m / self.window_px > 1.5 * self.scene.gsd_m else Resampling.bilinear

    def window_bounds(self, row: int, col: int) -> tuple[float, float, float, float]:
        """The window of cell (row, col): left, bottom, right, top in the scene's CRS."""
        left, _, _, top = self.scene.bounds
        cx, cy = left + (col + 0.5) * self.stride, top - (row + 0.5) * self.stride
        half = self.side / 2
        return cx - half, cy - half, cx + half, cy + half

    def settings(self) -> dict[str, Any]:
        """What shapes the windows and their pixels (embedding cache keys, the JSON summaries)."""
        return {"tiling": TILING_VERSION, "crs": self.scene.crs.to_wkt(), "tile_m": self.tile_m, "stride_m": self.stride_m,
                "window_px": self.window_px, "min_valid": self.min_valid, "rows": self.rows, "cols": self.cols,
                "members": [[Path(m.path).name, m.bands] for m in self.scene.members], "limits": self.scene.limits,
                "resampling": self.resampling.name}


def plan_grid(scene: Scene, tile_m: float, stride_m: float, window_px: int, min_valid: float = 0.5) -> WindowGrid:
    """The cells of `stride_m` over the scene and the windows to read (those touching a raster); InputError when none fits."""
    if not tile_m > 0 or not 0 < stride_m <= tile_m or not 0 < min_valid <= 1 or window_px < 8:
        raise InputError(f"settings out of range: tile {tile_m:g} m (> 0), stride {stride_m:g} m (in (0, tile]), "
                         f"min valid {min_valid:g} (in (0, 1]), window {window_px} px (>= 8)")
    left, bottom, right, top = scene.bounds
    stride = stride_m * scene.units_per_m
    cols, rows = int(math.floor((right - left) / stride + 1e-9)), int(math.floor((top - bottom) / stride + 1e-9))
    if not rows or not cols:
        width_m, height_m = (right - left) / scene.units_per_m, (top - bottom) / scene.units_per_m
        raise InputError(f"{scene.inputs[0]}: the scene ({width_m:.0f} x {height_m:.0f} m) is smaller than one "
                         f"{stride_m:g} m cell; pass a smaller --stride-m/--tile-m")
    grid = WindowGrid(scene, float(tile_m), float(stride_m), int(window_px), float(min_valid), rows, cols, [])
    with_data = np.zeros((rows, cols), bool)
    half = grid.side / 2
    centres_x = left + (np.arange(cols) + 0.5) * stride
    centres_y = top - (np.arange(rows) + 0.5) * stride
    for b_left, b_bottom, b_right, b_top in scene.member_bounds.values():
        touch_x = (centres_x + half > b_left) & (centres_x - half < b_right)
        touch_y = (centres_y + half > b_bottom) & (centres_y - half < b_top)
        with_data |= touch_y[:, None] & touch_x[None, :]
    grid.windows = [(int(r), int(c)) for r, c in zip(*np.nonzero(with_data))]
    return grid


class WindowReader:
    """Reads the window of a cell (row, col) as `size`^2 RGB, or None when too little of it holds data.

    Copies (copy.copy, pickle) leave the handles behind: each reader thread opens its own, on first use. A raster whose pixels
    cannot be read raises RasterReadError with its path.
    """

    def __init__(self, members: list[tuple[str, list[int], tuple[float, float, float, float]]], crs_wkt: str, origin: tuple[float, float],
                 stride: float, side: float, size: int, limits: list[tuple[float, float]] | None, min_valid: float,
                 resampling: Resampling, overview: WindowOverview | None = None) -> None:
        self.members, self.crs_wkt, self.origin, self.stride, self.side = members, crs_wkt, origin, stride, side
        self.size, self.limits, self.min_valid, self.resampling = size, limits, min_valid, resampling
        self.overview = overview  # shared by the reader threads' copies: each window read is drawn into it
        self._sources: dict[int, TileSource] = {}
        self._crs: CRS | None = None

    @classmethod
    def of(cls, grid: WindowGrid, size: int | None = None, overview: WindowOverview | None = None) -> WindowReader:
        """The reader of a grid's windows, at the model's input size or at `size` pixels, drawing them into `overview` if given."""
        members = [(m.path, list(m.bands), grid.scene.member_bounds[m.path]) for m in grid.scene.members]
        left, _, _, top = grid.scene.bounds
        return cls(members, grid.scene.crs.to_wkt(), (left, top), grid.stride, grid.side, size or grid.window_px, grid.scene.limits,
                   grid.min_valid, grid.resampling, overview)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sources": {}, "_crs": None}  # each reader thread (a copy) opens its own handles

    def _source(self, index: int) -> TileSource:
        # The validity rule is decided once per raster and process (TileSource), not once per window.
        if index not in self._sources:
            path, bands, _ = self.members[index]
            try:
                self._sources[index] = TileSource.of(rasterio.open(path), bands)
            except rasterio.errors.RasterioError:
                raise RasterReadError(path) from None
        return self._sources[index]

    def open(self) -> None:
        """Open every raster's handle now, in the calling thread (pipelines.infer.stream opens the threads' copies so).

        The thread that planned the scene has opened rasters before: GDAL and PROJ are set up for it, where a reader
        thread's first open costs about 7 ms more. First maps of the benchmark's 2048 px scene 1.06x, ViT-B-32's 1.01x.
        """
        for index in range(len(self.members)):
            self._source(index)

    def read(self, bounds: tuple[float, float, float, float], size: int) -> tuple[np.ndarray, float] | None:
        """(RGB size x size uint8, fraction of pixels with data) of any square `bounds`, or None when no raster touches it."""
        if self._crs is None:
            self._crs = CRS.from_wkt(self.crs_wkt)
        left, bottom, right, top = bounds
        touching = [i for i, (_, _, b) in enumerate(self.members) if left < b[2] and right > b[0] and bottom < b[3] and top > b[1]]
        if not touching:
            return None
        sources = [self._source(i) for i in touching]
        try:
            tile, _ = read_mosaic_tile(sources, self._crs, bounds, size, self.resampling)
        except MemberReadError as exc:
            raise RasterReadError(self.members[touching[exc.index]][0]) from None
        return to_rgb8(tile, self.limits), float(tile.valid.mean())

    def __call__(self, window: tuple[int, int]) -> np.ndarray | None:
        """The RGB pixels of the window of cell (row, col), or None when less than `min_valid` of it holds data."""
        found = [self._cell(int(window[0]), int(window[1]))]
        self._draw([window], found)
        return self._scored(found[0])

    def _cell(self, row: int, col: int) -> tuple[np.ndarray | None, float] | None:
        """(RGB, fraction with data) of the window of cell (row, col), None when no raster touches it."""
        cx, cy = self.origin[0] + (col + 0.5) * self.stride, self.origin[1] - (row + 0.5) * self.stride
        half = self.side / 2
        return self.read((cx - half, cy - half, cx + half, cy + half), self.size)

    def _scored(self, found: tuple[np.ndarray | None, float] | None) -> np.ndarray | None:
        return None if found is None or found[1] < self.min_valid else found[0]

    def _draw(self, windows: Sequence[tuple[int, int]], found: Sequence[tuple[np.ndarray | None, float] | None]) -> None:
        """Draw into the overview each window that touches a raster, with data enough to be scored or not."""
        if self.overview is not None:
            self.overview.draw([(int(w[0]), int(w[1]), f[0]) for w, f in zip(windows, found) if f is not None and f[0] is not None])

    def read_batch(self, windows: Sequence[tuple[int, int]]) -> list[np.ndarray | None]:
        """What one call per window gives (pixels or None), runs of neighbouring windows in a row read by one warp.

        A warp's pixels depend on its output grid, not on its extent, so a strip of windows that lie
        on one pixel grid (the stride a whole number of window pixels) is cut into the same windows
        the window-by-window warps give, at a fraction of the cost (one warper set-up per strip).
        A strip and a window of it may take different paths (a direct read where every pixel under
        one holds data, `tiles.on_own_grid`); then they agree within `tiles.DIRECT_READ_TOLERANCE`.
        Rasters in another CRS than the scene's are read window by window: the warper's approximate
        transformer interpolates along each output line, so a longer line could move a pixel.
        """
        step = self.stride / self.side * self.size
        strips = abs(step - round(step)) < 1e-9 and round(step) >= 1
        if strips:
            if self._crs is None:
                self._crs = CRS.from_wkt(self.crs_wkt)
            strips = all(self._source(i).crs == self._crs for i in range(len(self.members)))
        found: list[tuple[np.ndarray | None, float] | None] = []
        start = 0
        while start < len(windows):
            end = start + 1
            while strips and end < len(windows) and windows[end][0] == windows[start][0] and windows[end][1] == windows[end - 1][1] + 1:
                end += 1
            row, col = int(windows[start][0]), int(windows[start][1])
            found += self._strip(row, col, end - start, int(round(step))) if end - start > 1 else [self._cell(row, col)]
            start = end
        self._draw(windows, found)  # once a batch: the overview resizes a batch's cells together
        return [self._scored(f) for f in found]

    def _strip(self, row: int, col: int, n: int, step: int) -> list[tuple[np.ndarray | None, float] | None]:
        """Windows (row, col) ... (row, col + n - 1), `step` px apart: each raster warped once over them all, then cut.

        Each window is then put together as `read` does: from the rasters its own bounds touch, the
        first with data winning (a raster that touches the strip but not the window gives it nothing,
        not even an edge pixel the warp's rounding may grant it). Per window as `_cell` gives it: (RGB, the
        fraction with data), the RGB None when it is neither scored nor drawn; None when no raster touches it.
        """
        half = self.side / 2
        cy = self.origin[1] - (row + 0.5) * self.stride
        lefts = [self.origin[0] + (col + k + 0.5) * self.stride - half for k in range(n)]
        bounds = (lefts[0], cy - half, lefts[-1] + self.side, cy + half)
        shape = (self.size, (n - 1) * step + self.size)
        parts: dict[int, Tile] = {}
        found: list[np.ndarray | None] = []
        for k, left in enumerate(lefts):
            right = left + self.side
            touching = [i for i, (_, _, b) in enumerate(self.members)
                        if left < b[2] and right > b[0] and bounds[1] < b[3] and bounds[3] > b[1]]
            if not touching:
                found.append(None)
                continue
            cut = slice(k * step, k * step + self.size)
            window: Tile | None = None
            for i in touching:
                if window is not None and window.valid.all():
                    break
                if i not in parts:
                    try:
                        parts[i] = read_tile(self._source(i), self._crs, bounds, shape, resampling=self.resampling)
                    except rasterio.errors.RasterioError:
                        raise RasterReadError(self.members[i][0]) from None
                part = Tile(parts[i].data[:, :, cut], parts[i].valid[:, cut])
                if window is None:
                    window = Tile(part.data.copy(), part.valid.copy())
                    continue
                fill = part.valid & ~window.valid
                window.data[:, fill] = part.data[:, fill]
                window.valid |= fill
            fraction = float(window.valid.mean())
            found.append((to_rgb8(window, self.limits) if fraction >= self.min_valid or self.overview is not None else None, fraction))
        return found

    def close(self) -> None:
        """Close this process's handles."""
        for source in self._sources.values():
            source.src.close()
        self._sources = {}


OVERVIEW_OVERSAMPLE = 2


def read_overview(grid: WindowGrid, max_px: int = 800) -> np.ndarray:
    """The mapped area of the scene as RGB at most `max_px` a side (for the quick-look), empty pixels black.

    A second read of the scene: `map_raster` reads it only when its windows are coarser than the
    quick-look, and otherwise draws the quick-look from them (WindowOverview).

    Read with nearest-neighbour resampling at OVERVIEW_OVERSAMPLE times the size, then box-averaged
    down: a display image about three times faster than the warper's average over every scene pixel
    (1.9 s instead of 5.0 s for a 4096 px scene on one core; mean difference 6 grey levels).
    """
    from PIL import Image

    left, bottom, right, top = grid.bounds
    side = max(right - left, top - bottom)
    reader = WindowReader.of(grid)
    reader.resampling = Resampling.nearest
    try:
        found = reader.read((left, top - side, left + side, top), max_px * OVERVIEW_OVERSAMPLE)
    finally:
        reader.close()
    if found is not None:
        found = (np.asarray(Image.fromarray(found[0]).reduce(OVERVIEW_OVERSAMPLE)), found[1])
    height, width = overview_shape(grid, max_px)
    if found is None:
        return np.zeros((height, width, 3), np.uint8)
    return np.ascontiguousarray(found[0][:height, :width])


def overview_shape(grid: WindowGrid, max_px: int) -> tuple[int, int]:
    """(height, width) of the mapped area shown at most `max_px` a side."""
    left, bottom, right, top = grid.bounds
    side = max(right - left, top - bottom)
    return max(1, int(round(max_px * (top - bottom) / side))), max(1, int(round(max_px * (right - left) / side)))


class WindowOverview:
    """The mapped area at most `max_px` a side, drawn from the windows as they are read to be scored.

    Reading the windows already reads every pixel the map covers: drawing each window's cell (its
    centre, `stride` wide) into its place spares the quick-look a second read of the scene
    (`read_overview`). That is only as sharp as the windows, so it is for grids whose windows are at
    least as fine as the display (`holds`). Cells whose window touches no raster stay black, as
    empty pixels do; a window with too little data to be scored still shows what it has. The
    reader threads share one overview and each draws its own windows' cells, each cell once.
    """

    def __init__(self, grid: WindowGrid, max_px: int) -> None:
        height, width = overview_shape(grid, max_px)
        self.pixels = np.zeros((height, width, 3), np.uint8)
        self.ys = np.round(np.arange(grid.rows + 1) * height / grid.rows).astype(int)  # cell edges on the overview
        self.xs = np.round(np.arange(grid.cols + 1) * width / grid.cols).astype(int)
        self.margin = (1 - grid.stride_m / grid.tile_m) / 2  # of a window's side around its cell

    @staticmethod
    def holds(grid: WindowGrid, max_px: int) -> bool:
        """Whether the grid's windows are at least as fine as an overview of at most `max_px` a side."""
        height, width = overview_shape(grid, max_px)
        cell_px = grid.window_px * grid.stride_m / grid.tile_m
        return cell_px * grid.rows >= height and cell_px * grid.cols >= width

    def draw(self, cells: Sequence[tuple[int, int, np.ndarray]]) -> None:
        """Draw each cell (row, col) of its window's pixels (HxWx3 uint8, the window centred on the cell).

        Cells that are whole windows (stride = tile, the default) are resized together, a batch per cell
        size, by torch's antialiased bilinear kernel: on the benchmark's 64 px windows 4x as fast as Pillow
        window by window, within 1 grey level of Pillow's bilinear. A cell that is its window's centre
        (stride < tile) is cut from a fractional box, which Pillow resizes window by window.
        """
        from PIL import Image

        whole: dict[tuple[int, int, tuple[int, ...]], list[tuple[slice, slice, np.ndarray]]] = {}
        for row, col, rgb in cells:
            top, bottom, left, right = self.ys[row], self.ys[row + 1], self.xs[col], self.xs[col + 1]
            if bottom == top or right == left:
                continue
            if self.margin == 0:
                whole.setdefault((bottom - top, right - left, rgb.shape), []).append((slice(top, bottom), slice(left, right), rgb))
                continue
            size = rgb.shape[0]
            box = (self.margin * size, self.margin * size, (1 - self.margin) * size, (1 - self.margin) * size)
            self.pixels[top:bottom, left:right] = np.asarray(
                Image.fromarray(rgb).resize((right - left, bottom - top), Image.Resampling.BILINEAR, box=box))
        if whole:
            from pipelines.infer.clip import resize_batch  # here: torch is imported when windows are drawn, not with the module

            for (height, width, _), group in whole.items():
                for (rows, cols, _), pixels in zip(group, resize_batch([rgb for _, _, rgb in group], (height, width), "bilinear")):
                    self.pixels[rows, cols] = pixels
