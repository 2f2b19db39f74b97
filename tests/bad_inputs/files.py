"""Small input files for the corpus, written with the libraries users' files come from (no project code)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# remote sensing: a 192 px textured UTM scene near 3E 43.3N with OSM features on it
CRS = "EPSG:32631"
X0, Y0, GSD, SIZE = 500_000.0, 4_800_000.0, 2.0, 192


def texture(count: int, lo: float, hi: float, seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth random bands scaled to [lo, hi]."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    bands = [ndimage.gaussian_filter(rng.standard_normal((size, size)), 2) for _ in range(count)]
    return np.stack([lo + (b - b.min()) / (b.max() - b.min()) * (hi - lo) for b in bands])


def write_raster(path: Path, data: np.ndarray, crs: str | None = CRS, nodata: float | None = 0, x0: float = X0,
                 y0: float = Y0, gsd: float = GSD, **profile: object) -> Path:
    """A GeoTIFF of `data` (bands, rows, cols) with its top-left corner at (x0, y0)."""
    import rasterio
    from rasterio.transform import from_origin

    count, h, w = data.shape
    meta = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, nodata=nodata, **profile)
    if crs is not None:
        meta.update(crs=crs, transform=from_origin(x0, y0, gsd, gsd))
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return path


def good_raster(path: Path, seed: int = 1) -> Path:
    """An 8-bit RGB scene the curation turns into pairs."""
    return write_raster(path, texture(3, 30, 220, seed).round().astype(np.uint8))


def scene_lonlat(fx: float, fy: float) -> tuple[float, float]:
    """lon/lat of the point at fractions (fx, fy) of the scene from its top-left corner."""
    from rasterio.warp import transform

    xs, ys = transform(CRS, "EPSG:4326", [X0 + fx * SIZE * GSD], [Y0 - fy * SIZE * GSD])
    return xs[0], ys[0]


def square(fx: float, fy: float, half: float = 0.08) -> list[list[float]]:
    """A closed lon/lat ring of a square around scene fractions (fx, fy)."""
    pts = [scene_lonlat(fx + dx, fy + dy) for dx, dy in ((-half, -half), (half, -half), (half, half), (-half, half), (-half, -half))]
    return [list(p) for p in pts]


def features_geojson(extra: list[dict] | None = None) -> dict:
    """Visible OSM features across the scene: two parks, a parking lot, a road."""
    def polygon(osm_id: str, tags: dict, fx: float, fy: float) -> dict:
        geometry = {"type": "Polygon", "coordinates": [square(fx, fy)]}
        return {"type": "Feature", "properties": {"osm_id": osm_id, **tags}, "geometry": geometry}

    feats = [
        polygon("way/1", {"leisure": "park"}, 0.3, 0.3),
        polygon("way/2", {"amenity": "parking"}, 0.7, 0.3),
        polygon("way/3", {"leisure": "park"}, 0.3, 0.7),
        {"type": "Feature", "properties": {"osm_id": "way/4", "highway": "primary"},
         "geometry": {"type": "LineString", "coordinates": [list(scene_lonlat(0.1, 0.5)), list(scene_lonlat(0.9, 0.5))]}},
    ]
    return {"type": "FeatureCollection", "features": feats + (extra or [])}


def write_geojson(path: Path, doc: object | None = None) -> Path:
    """Write a GeoJSON document (the standard features by default)."""
    path.write_text(json.dumps(features_geojson() if doc is None else doc))
    return path


# images for `pairs`
def write_png(path: Path, seed: int, size: int = 24, mode: str = "RGB") -> Path:
    """A small noisy image."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def write_pairs_csv(folder: Path, n: int = 4, extra_rows: list[tuple[str, str]] = (), sep: str = ",",
                    encoding: str = "utf-8", header: tuple[str, str] = ("filepath", "title")) -> Path:
    """`pairs.csv` with n good images (good0.png ...) plus `extra_rows` (filepath, caption)."""
    rows = [(f"images/good{i}.png", f"a good picture number {i}") for i in range(n)]
    for i in range(n):
        write_png(folder / "images" / f"good{i}.png", seed=i)
    lines = [sep.join(header)] + [sep.join(r) for r in [*rows, *extra_rows]]
    (folder / "pairs.csv").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return folder / "pairs.csv"


def truncate(path: Path, keep_fraction: float) -> Path:
    """Cut a file to its first `keep_fraction` of bytes, as an interrupted download or copy leaves it."""
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep_fraction)])
    return path
