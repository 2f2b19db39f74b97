"""Cut object-centred tiles out of a raster: reprojection, band choice, 8-bit scaling, checks.

Tiles are read through a `WarpedVRT` onto a square grid in a projected metric CRS, so the
output has exactly the requested ground sampling distance (GSD, metres/pixel). The raster's
own CRS is kept when it is projected in metres and conformal without large scale error
(UTM and the like); geographic and Web-Mercator rasters are warped to the UTM zone of the
tile centre, since EPSG:3857 metres are ground metres only at the equator (scale 1/cos(lat)).

NaN and +-inf in float rasters are empty pixels wherever validity is decided (tile masks, the
all-empty check, the stretch), whether or not the raster declares a nodata value: float products
commonly mark "no data" with NaN alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform

WGS84 = CRS.from_epsg(4326)
# Mercator-family projections: metres on the map are not metres on the ground away from the equator.
_MERCATOR_EPSG = {3857, 3395, 3785, 900913, 54004}


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 / UTM zone CRS holding (lon, lat), north or south by the latitude's sign."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def keeps_own_crs(crs: CRS) -> bool:
    """Whether tiles can be cut in the raster's CRS: projected, metre units, not Mercator."""
    if not crs.is_projected:
        return False
    if crs.to_epsg() in _MERCATOR_EPSG:
        return False
    wkt = crs.to_wkt().lower()
    if "mercator" in wkt and "transverse" not in wkt:
        return False
    try:
        units = crs.linear_units_factor[1]
    except Exception:  # CRS without a clear linear unit
        return False
    return abs(units - 1.0) < 1e-9


def tile_crs(raster_crs: CRS, lon: float, lat: float) -> CRS:
    """The CRS to cut a tile centred at (lon, lat) in: the raster's own when it keeps it, else UTM."""
    return raster_crs if keeps_own_crs(raster_crs) else utm_crs(lon, lat)


def native_gsd_m(src: rasterio.io.DatasetReader) -> float:
    """Ground metres per pixel at the raster centre (measured in UTM when the CRS is not metric)."""
    if keeps_own_crs(src.crs):
        return float(min(abs(src.res[0]), abs(src.res[1])))
    cx, cy = src.width / 2.0, src.height / 2.0
    xs, ys = [], []
    for col, row in ((cx, cy), (cx + 1, cy), (cx, cy + 1)):
        x, y = src.transform @ (col, row)
        xs.append(x)
        ys.append(y)
    lons, lats = warp_transform(src.crs, WGS84, xs, ys)
    utm = utm_crs(lons[0], lats[0])
    ux, uy = warp_transform(WGS84, utm, lons, lats)
    dx = math.hypot(ux[1] - ux[0], uy[1] - uy[0])
    dy = math.hypot(ux[2] - ux[0], uy[2] - uy[0])
    return float(min(dx, dy))


def default_bands(count: int) -> list[int]:
    """Bands 1-3 (1-based) when the raster has three or more, else band 1 alone."""
    return [1, 2, 3] if count >= 3 else [1]


def has_validity_info(src: rasterio.io.DatasetReader) -> bool:
    """True when the raster says which pixels are empty (nodata, alpha or a mask band)."""
    flags = src.mask_flag_enums[0]
    return src.nodata is not None or MaskFlags.all_valid not in flags


@dataclass
class Tile:
    """Pixels read for one tile and which of them hold data."""

    data: np.ndarray  # (bands, H, W) in the raster's dtype
    valid: np.ndarray  # (H, W) bool: pixels with data


def read_tile(
    src: rasterio.io.DatasetReader,
    crs: CRS,
    bounds: tuple[float, float, float, float],
    size: int,
    bands: Sequence[int],
    resampling: Resampling = Resampling.bilinear,
) -> Tile:
    """The square `bounds` (left, bottom, right, top in `crs`) as a size x size tile."""
    transform = from_bounds(*bounds, width=size, height=size)
    # Without nodata or a mask, an alpha band is the only way to tell "outside the raster" from 0.
    add_alpha = not has_validity_info(src)
    with WarpedVRT(src, crs=crs, transform=transform, width=size, height=size, resampling=resampling, add_alpha=add_alpha) as vrt:
        data = vrt.read(indexes=list(bands))
        valid = (vrt.dataset_mask() > 0) & finite_pixels(data)
    return Tile(data, valid)


def finite_pixels(data: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose every band is a finite number (always true for integer data)."""
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.complexfloating):
        return np.ones(data.shape[1:], dtype=bool)
    return np.isfinite(data).all(axis=0)


def to_rgb8(
    tile: Tile,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
    raster_ranges: Sequence[tuple[float, float]] | None = None,
    min_range_fraction: float = 0.0,
) -> np.ndarray:
    """An HxWx3 uint8 image of a tile.

    uint8 passes through, other types get a per-band percentile stretch computed on valid pixels
    only; one band becomes grey RGB; empty pixels are black. A band whose tile range is narrower
    than `min_range_fraction` of its `raster_ranges` entry (the raster's own percentile range) is
    stretched with the raster's range instead: a near-flat tile (calm water, a roof) would
    otherwise come out as full-contrast sensor noise.
    """
    data = tile.data
    out = np.zeros(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        if band.dtype == np.uint8:
            out[i] = band
            continue
        values = band[tile.valid & np.isfinite(band)].astype(np.float64)
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [low_pct, high_pct])
        if raster_ranges is not None:
            raster_lo, raster_hi = raster_ranges[i]
            if hi - lo < min_range_fraction * (raster_hi - raster_lo):
                lo, hi = raster_lo, raster_hi
        if hi <= lo:  # flat band: anything above the floor is full scale
            hi = lo + 1.0
        scaled = (band.astype(np.float64) - lo) / (hi - lo) * 255.0
        out[i] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
    out[:, ~tile.valid] = 0
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out[:3].transpose(1, 2, 0))


def raster_ranges(
    src: rasterio.io.DatasetReader, bands: Sequence[int], low_pct: float, high_pct: float, max_side: int = 1024
) -> list[tuple[float, float]]:
    """Each band's (low, high) percentiles over the raster's valid, finite pixels, read at most `max_side` a side."""
    scale = max(1.0, max(src.width, src.height) / max_side)
    shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
    data = src.read(indexes=list(bands), out_shape=(len(bands), *shape))
    valid = (src.dataset_mask(out_shape=shape) > 0) & finite_pixels(data)
    ranges = []
    for band in data:
        values = band[valid].astype(np.float64)
        ranges.append(tuple(float(v) for v in np.percentile(values, [low_pct, high_pct])) if values.size else (0.0, 0.0))
    return ranges


def tile_problem(tile: Tile, rgb: np.ndarray, max_nodata_fraction: float, min_std: float) -> str | None:
    """A rejects reason, or None for a usable tile."""
    nodata = 1.0 - float(tile.valid.mean())
    if nodata > max_nodata_fraction:
        return "too much nodata"
    pixels = rgb[tile.valid]
    if pixels.size == 0 or float(pixels.astype(np.float32).std()) < min_std:
        return "blank tile"
    return None


def overview_mask(src: rasterio.io.DatasetReader, max_side: int = 1024) -> np.ndarray:
    """The dataset mask at most `max_side` pixels a side, NaN and inf counted empty (cheap check for all-empty rasters)."""
    scale = max(1.0, max(src.width, src.height) / max_side)
    shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
    mask = src.dataset_mask(out_shape=shape) > 0
    if any(np.issubdtype(np.dtype(d), np.floating) for d in src.dtypes):
        mask &= finite_pixels(src.read(out_shape=(src.count, *shape)))
    return mask
