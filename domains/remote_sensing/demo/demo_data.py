"""Demo inputs for the remote-sensing domain.

A procedural landscape as a GeoTIFF + OSM file, and a held-out zero-shot tile set rendered from a
second, independent landscape.

Everything is procedural (no downloads). One generator, `render_landscape`, draws both the scene
and the zero-shot tiles, so the two share one visual vocabulary while never sharing pixels.
Land-cover classes are made visually distinct in colour AND texture (a tiny CLIP must tell them
apart at 64x64 px) with mild noise and illumination changes so the task is not trivial.

Geometry is laid out in local metres (x right, y down from the top-left corner), rasterised at the
requested GSD, and returned in pixel coordinates (col, row) of the returned raster.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.affinity
import shapely.ops
import webdataset as wds
from PIL import Image
from rasterio.transform import Affine
from scipy import ndimage
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import unary_union

# Class indices: must match CLASSNAMES in domains/remote_sensing/__init__.py (not imported here
# because that module imports this one).
CLASSNAMES = ("water", "forest", "farmland", "residential area", "road", "park", "parking lot")
WATER, FOREST, FARMLAND, RESIDENTIAL, ROAD, PARK, PARKING = range(7)
BACKGROUND = -1  # unlabelled scrubland between land-use blocks


@dataclass
class RSDemoConfig:
    """params.yaml `remote_sensing.demo`. Sizes in pixels of the source scene unless named _m."""

    seed: int = 0
    scene_size_px: int = 2048
    scene_gsd: float = 1.0  # metres per pixel of scene.tif
    crs: str = "EPSG:32631"  # UTM 31N
    origin_easting: float = 372_000.0  # top-left corner, near Toulouse (about 43.6N, 1.4E)
    origin_northing: float = 4_834_000.0
    nodata: int = 0
    nodata_border_px: int = 24  # a strip of nodata along the right edge, as at a swath edge
    block_spacing_m: float = 420.0  # mean distance between major roads
    # Zero-shot set: rendered like curation's tiles (tile_size px at target_gsd).
    tile_size: int = 64
    target_gsd: float = 2.0
    zeroshot_per_class: int = 40
    zeroshot_seed: int = 1000
    zeroshot_size_px: int = 1536  # per landscape, at scene_gsd; more landscapes are drawn if short
    centre_fraction: float = 0.25  # side of the centre window, as a fraction of the tile
    centre_purity: float = 0.85  # share of the centre window that must be the tile's class


@dataclass(eq=False)
class Feature:
    """One mapped object. geometry is in pixel coordinates (col, row) of the rendered raster."""

    tags: dict[str, str]
    geometry: Any  # shapely Polygon | LineString | Point
    cls: int  # land-cover class drawn under it (CLASSNAMES index)
    style: dict[str, Any] = field(default_factory=dict)  # rendering hints (colours, widths)


# ---------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed noise; large sigmas are filtered at low resolution (fast)."""
    h, w = shape
    f = max(1, int(sigma // 3))
    small = rng.standard_normal((h // f + 3, w // f + 3)).astype(np.float32)
    small = ndimage.gaussian_filter(small, sigma / f, mode="wrap")
    if f > 1:
        small = ndimage.zoom(small, f, order=1)
    out = small[:h, :w]
    return (out - out.mean()) / (out.std() + 1e-6)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], density: float, radius: float) -> np.ndarray:
    """Field of soft round blobs in [0, 1] (tree crowns): Poisson impulses blurred to discs."""
    h, w = shape
    n = rng.poisson(density * h * w)
    img = np.zeros(shape, np.float32)
    np.add.at(img, (rng.integers(0, h, n), rng.integers(0, w, n)), 1.0)
    img = ndimage.gaussian_filter(img, radius / 1.6)
    peak = 1.0 / (2 * math.pi * (radius / 1.6) ** 2)  # height of a lone blob
    return np.clip(img / (0.6 * peak), 0, 1)


def _radial_blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int = 48) -> Polygon:
    """Irregular closed shape (lake, forest edge): an ellipse with a few random harmonics."""
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 5):
        r += rng.uniform(0.03, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    pts = np.c_[cx + rx * r * np.cos(theta), cy + ry * r * np.sin(theta)]
    return Polygon(pts).buffer(0)


# ---------------------------------------------------------------- layout (in metres)


def _axis_positions(rng: np.random.Generator, size_m: float, spacing: float) -> list[float]:
    pos, x = [], rng.uniform(0.35, 0.8) * spacing
    while x < size_m - 0.3 * spacing:
        pos.append(x)
        x += spacing * rng.uniform(0.75, 1.25)
    return pos


def _split_rect(rng: np.random.Generator, r: tuple[float, float, float, float], max_side: float) -> list[tuple]:
    """Recursively cut a rectangle across its longer side into fields no longer than max_side."""
    x0, y0, x1, y1 = r
    w, h = x1 - x0, y1 - y0
    if max(w, h) <= max_side:
        return [r]
    t = rng.uniform(0.35, 0.65)
    if w >= h:
        xm = x0 + t * w
        return _split_rect(rng, (x0, y0, xm, y1), max_side) + _split_rect(rng, (xm, y0, x1, y1), max_side)
    ym = y0 + t * h
    return _split_rect(rng, (x0, y0, x1, ym), max_side) + _split_rect(rng, (x0, ym, x1, y1), max_side)


def _parts(geom: Any, min_area: float) -> list[Polygon]:
    """Polygon parts of a geometry at least min_area large (a cut block may fall apart)."""
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon)]
    return [p for p in polys if p.area >= min_area]


def _layout(rng: np.random.Generator, size_m: float, spacing: float) -> list[Feature]:
    """Place every mapped object. Returned geometry is in metres; classes set per feature."""
    feats: list[Feature] = []
    scene = box(0, 0, size_m, size_m)
    major_w = 14.0

    # River: a meandering band crossing the scene; roads bridge it (drawn over it).
    xs = np.linspace(-50, size_m + 50, 80)
    y0 = rng.uniform(0.3, 0.7) * size_m
    ys = y0 + 0.08 * size_m * np.sin(2 * math.pi * xs / (0.7 * size_m) + rng.uniform(0, 6.3))
    ys += 0.03 * size_m * np.sin(2 * math.pi * xs / (0.23 * size_m) + rng.uniform(0, 6.3))
    river_line = LineString(np.c_[xs, ys]).intersection(scene)
    river = river_line.buffer(rng.uniform(14, 20)).intersection(scene)
    cutters = [river.buffer(4)]  # land use keeps a bank strip clear of the river

    roads: list[Feature] = []
    vx, hy = _axis_positions(rng, size_m, spacing), _axis_positions(rng, size_m, spacing)
    for x in vx:
        roads.append(Feature({"highway": "primary"}, LineString([(x, 0), (x, size_m)]), ROAD, {"width": major_w}))
    for y in hy:
        roads.append(Feature({"highway": "primary"}, LineString([(0, y), (size_m, y)]), ROAD, {"width": major_w}))
    # One diagonal secondary road cuts through blocks, so land use is not all axis-aligned.
    a, b = rng.uniform(0.1, 0.4) * size_m, rng.uniform(0.6, 0.9) * size_m
    diag = LineString([(0, a), (size_m, b)]) if rng.random() < 0.5 else LineString([(a, 0), (b, size_m)])
    roads.append(Feature({"highway": "secondary"}, diag, ROAD, {"width": 10.0}))
    cutters.append(diag.buffer(5 + 4))
    cut = unary_union(cutters)

    # Blocks between major roads, each given one land use; every use appears at least once.
    edges_x = [0.0, *vx, size_m]
    edges_y = [0.0, *hy, size_m]
    blocks = []
    m = major_w / 2 + 5
    for i in range(len(edges_x) - 1):
        for j in range(len(edges_y) - 1):
            x0 = edges_x[i] + (m if i > 0 else 0)
            x1 = edges_x[i + 1] - (m if i + 1 < len(edges_x) - 1 else 0)
            y0_ = edges_y[j] + (m if j > 0 else 0)
            y1 = edges_y[j + 1] - (m if j + 1 < len(edges_y) - 1 else 0)
            if x1 - x0 > 60 and y1 - y0_ > 60:
                blocks.append((x0, y0_, x1, y1))
    order = rng.permutation(len(blocks))
    required = ["residential", "farmland", "forest", "park", "lake", "residential", "farmland", "forest", "residential"]
    uses = ["residential", "farmland", "forest", "park", "lake"]
    weights = np.array([0.24, 0.26, 0.26, 0.12, 0.12])
    for n, k in enumerate(order):
        use = required[n] if n < len(required) else uses[rng.choice(len(uses), p=weights)]
        x0, y0_, x1, y1 = blocks[k]
        rect = box(x0, y0_, x1, y1)
        if use == "farmland":
            for f in _split_rect(rng, blocks[k], rng.uniform(140, 240)):
                for p in _parts(box(*f).difference(cut), 800):
                    feats.append(Feature({"landuse": "farmland"}, p, FARMLAND, _field_style(rng, f)))
        elif use == "forest":
            cx, cy = (x0 + x1) / 2, (y0_ + y1) / 2
            shape = _radial_blob(rng, cx, cy, 0.62 * (x1 - x0), 0.62 * (y1 - y0_)).intersection(rect).difference(cut)
            # Mapped as adjacent stands, as OSM often does: more, smaller objects to tile on.
            for stand in _split_rect(rng, blocks[k], 180):
                for p in _parts(shape.intersection(box(*stand)), 1500):
                    feats.append(Feature({"landuse": "forest"}, p, FOREST))
        elif use == "park":
            feats += _park(rng, rect.buffer(-6, join_style="mitre"), cut)
        elif use == "lake":
            cx, cy = (x0 + x1) / 2, (y0_ + y1) / 2
            lake = _radial_blob(rng, cx, cy, 0.36 * (x1 - x0), 0.36 * (y1 - y0_)).intersection(rect.buffer(-15))
            for p in _parts(lake.difference(cut), 1500):
                feats.append(Feature({"natural": "water", "water": "lake"}, p, WATER))
        else:
            feats += _residential(rng, blocks[k], cut)

    for x in np.arange(0, size_m, 250.0):  # river mapped in sections, as in OSM
        for p in _parts(river.intersection(box(x, 0, x + 250, size_m)), 500):
            feats.append(Feature({"natural": "water", "water": "river"}, p, WATER))
    for g in getattr(river_line, "geoms", [river_line]):
        feats.append(Feature({"waterway": "river"}, g, WATER))
    # Clip to the scene so every mapped vertex lies on the raster (edge blocks' streets overhang).
    clipped = []
    for f in feats + roads:
        if isinstance(f.geometry, Point):
            clipped.append(f)
            continue
        g = f.geometry.intersection(scene)
        if isinstance(f.geometry, Polygon):
            # Buffered-river cuts leave dense arc vertices; thin them so the OSM rings stay
            # valid after reprojection and osmium's area assembly accepts them.
            g = g.simplify(0.25 * 1.0).buffer(0)
        kind = LineString if isinstance(f.geometry, LineString) else Polygon
        for part in getattr(g, "geoms", [g]):
            if isinstance(part, kind) and not part.is_empty:
                clipped.append(Feature(f.tags, part, f.cls, f.style))
    return clipped


def _field_style(rng: np.random.Generator, r: tuple) -> dict:
    palette = [(105, 145, 45), (205, 185, 95), (145, 110, 70), (150, 160, 60), (185, 150, 75)]
    horizontal = (r[2] - r[0]) >= (r[3] - r[1])  # furrows run along the longer side
    angle = (0.0 if horizontal else 90.0) + rng.uniform(-4, 4)
    return {"colour": palette[rng.integers(len(palette))], "angle": angle, "period": rng.uniform(4.5, 8.0)}


def _park(rng: np.random.Generator, area: Polygon, cut: Any) -> list[Feature]:
    feats = []
    for p in _parts(area.difference(cut), 600):
        feats.append(Feature({"leisure": "park"}, p, PARK))
        # Footpaths: gentle curves from one side to the other through a random interior point.
        minx, miny, maxx, maxy = p.bounds
        paths = []
        for _ in range(int(rng.integers(1, 3))):
            mid = (rng.uniform(minx, maxx), rng.uniform(miny, maxy))
            if rng.random() < 0.5:
                line = LineString([(minx - 5, rng.uniform(miny, maxy)), mid, (maxx + 5, rng.uniform(miny, maxy))])
            else:
                line = LineString([(rng.uniform(minx, maxx), miny - 5), mid, (rng.uniform(minx, maxx), maxy + 5)])
            seg = line.intersection(p.buffer(-3))
            for g in getattr(seg, "geoms", [seg]):
                if isinstance(g, LineString) and g.length > 20:
                    feats.append(Feature({"highway": "footway"}, g, PARK, {"width": 3.0}))
                    paths.append(g)
        # Scattered single trees, mapped as natural=tree nodes.
        keep_out = unary_union([g.buffer(5) for g in paths]) if paths else None
        n = int(p.area / 600)
        pts = np.c_[rng.uniform(minx, maxx, 3 * n + 5), rng.uniform(miny, maxy, 3 * n + 5)]
        inner = p.buffer(-4)
        placed = 0
        for x, y in pts:
            pt = Point(x, y)
            if placed >= n or not inner.contains(pt) or (keep_out is not None and keep_out.contains(pt)):
                continue
            feats.append(Feature({"natural": "tree"}, pt, PARK, {"radius": rng.uniform(3.0, 5.0)}))
            placed += 1
    return feats


def _residential(rng: np.random.Generator, r: tuple, cut: Any) -> list[Feature]:
    """A residential block.

    A landuse polygon, a grid of residential streets, houses with gardens, and some sub-blocks
    given over to parking lots or a pocket park.
    """
    x0, y0, x1, y1 = r
    feats: list[Feature] = []
    street_w, depth = 8.0, rng.uniform(62, 76)  # two rows of houses back to back per sub-block
    ys = list(np.arange(y0 + depth, y1 - 30, depth + street_w))
    xs = list(np.arange(x0 + rng.uniform(120, 180), x1 - 60, rng.uniform(140, 200)))
    for y in ys:
        street = LineString([(x0 - 6, y + street_w / 2), (x1 + 6, y + street_w / 2)])
        feats.append(Feature({"highway": "residential"}, street, ROAD, {"width": street_w}))
    for x in xs:
        street = LineString([(x + street_w / 2, y0 - 6), (x + street_w / 2, y1 + 6)])
        feats.append(Feature({"highway": "residential"}, street, ROAD, {"width": street_w}))
    cx = [x0, *[x + street_w for x in xs]], [*xs, x1]
    cy = [y0, *[y + street_w for y in ys]], [*ys, y1]
    subs = [(sx0 + 1, sy0 + 1, sx1 - 1, sy1 - 1) for sx0, sx1 in zip(*cx) for sy0, sy1 in zip(*cy)]
    subs = [b for b in subs if b[2] - b[0] >= 30 and b[3] - b[1] >= 30]
    lot_for_cars = int(rng.integers(len(subs))) if subs else -1  # every block gets a parking lot
    houses, home_land = [], []
    for i, sub in enumerate(subs):
        u = rng.random()
        if u < 0.12 or i == lot_for_cars:
            for p in _parts(box(*sub).buffer(-1.5, join_style="mitre").difference(cut), 900):
                feats.append(Feature({"amenity": "parking", "parking": "surface"}, p, PARKING))
        elif u < 0.22:
            feats += _park(rng, box(*sub).buffer(-2, join_style="mitre"), cut)
        else:
            houses += _houses(rng, sub, cut)
            home_land.append(box(*sub))
    # The landuse polygon: block parts that are mostly houses and gardens (a part that is mostly
    # street, parking or park would be a misleading "residential area" caption).
    home = unary_union(home_land).difference(cut) if home_land else Polygon()
    pieces = [q for piece in _split_rect(rng, r, 240) for q in _parts(box(*piece).difference(cut), 4000)]
    parts = [p for p in pieces if p.intersection(home).area >= 0.45 * p.area]
    feats += [Feature({"landuse": "residential"}, p, RESIDENTIAL) for p in parts]
    kept = unary_union(parts) if parts else Polygon()
    # Houses are drawn on residential land only: none on a dropped part.
    feats += [f for f in houses if kept.contains(f.geometry)]
    return feats


def _houses(rng: np.random.Generator, sub: tuple, cut: Any) -> list[Feature]:
    x0, y0, x1, y1 = sub
    feats = []
    mid = (y0 + y1) / 2
    for row_top, row_bottom, facing_top in ((y0, mid, True), (mid, y1, False)):
        x = x0 + rng.uniform(1, 5)
        while True:
            lot = rng.uniform(18, 28)
            if x + lot > x1:
                break
            w, d = rng.uniform(8, min(13, lot - 3)), rng.uniform(8, 12)
            setback = rng.uniform(4, 7)
            bx = x + (lot - w) / 2
            by = row_top + setback if facing_top else row_bottom - setback - d
            b = box(bx, by, bx + w, by + d)
            if rng.random() < 0.2:  # a few L-shaped houses
                b = b.union(box(bx, by, bx + w * 0.45, by + d + 5 * (1 if facing_top else -1)))
            if not b.intersects(cut):
                tag = "house" if rng.random() < 0.8 else "yes"
                roof = [(170, 75, 55), (145, 62, 50), (125, 125, 130), (95, 95, 105), (180, 115, 80)]
                feats.append(Feature({"building": tag}, b, RESIDENTIAL, {"roof": roof[rng.integers(len(roof))]}))
            x += lot
    return feats


# ---------------------------------------------------------------- rendering


def _rasterize(shapes: list[tuple[Any, int]], shape: tuple[int, int], transform: Affine, fill: int = 0, dtype: str = "int32") -> np.ndarray:
    if not shapes:
        return np.full(shape, fill, dtype)
    return rasterio.features.rasterize(shapes, out_shape=shape, transform=transform, fill=fill, dtype=dtype)


def render_landscape(size_px: int, gsd: float, seed: int, block_spacing_m: float = 420.0) -> tuple[np.ndarray, np.ndarray, list[Feature]]:
    """Draw a procedural landscape.

    Returns (rgb uint8 HxWx3, class_map int16 HxW with CLASSNAMES indices or -1 for unlabelled
    background, features). Feature geometry is in pixel coordinates (col, row) of the raster.
    """
    rng = np.random.default_rng(seed)
    size_m = size_px * gsd
    feats = _layout(rng, size_m, block_spacing_m)
    shape = (size_px, size_px)
    tf = Affine(gsd, 0, 0, 0, gsd, 0)  # local metres -> pixels (y down)
    px = 1.0 / gsd  # pixels per metre

    def line_area(f: Feature) -> Any:
        return f.geometry.buffer(f.style["width"] / 2, cap_style="flat")

    areas = [f for f in feats if isinstance(f.geometry, Polygon)]
    by_tag = lambda k, v=None: [f for f in feats if k in f.tags and (v is None or f.tags[k] == v)]  # noqa: E731
    buildings = by_tag("building")
    landuse = [f for f in areas if f.cls in (FOREST, FARMLAND, RESIDENTIAL, PARK) and "building" not in f.tags]
    landuse.sort(key=lambda f: f.cls != RESIDENTIAL)  # residential first: pocket parks lie on it
    parking = by_tag("amenity", "parking")
    water = [f for f in areas if f.cls == WATER]
    roads = [f for f in feats if "highway" in f.tags and f.tags["highway"] != "footway"]
    paths = by_tag("highway", "footway")
    trees = by_tag("natural", "tree")

    # Class map: later shapes win, so the order is land use < parking < water < roads (bridges).
    cls_shapes = [(f.geometry, f.cls) for f in landuse + parking + water]
    cls_shapes += [(line_area(f), ROAD) for f in roads]
    cmap = _rasterize(cls_shapes, shape, tf, fill=BACKGROUND, dtype="int16")

    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32) * gsd  # metres
    noise_px = rng.standard_normal(shape).astype(np.float32)
    img = np.zeros((size_px, size_px, 3), np.float32)

    def paint(mask: np.ndarray, colour: Any, shade: np.ndarray | float = 1.0) -> None:
        c = np.asarray(colour, np.float32)
        if np.ndim(shade) == 0:
            img[mask] = c * shade
        else:
            img[mask] = c[None, :] * shade[mask][:, None]

    # Background scrub: tan-olive, patchy.
    patch = _smooth_noise(rng, shape, 25 * px)
    img[:] = np.array([150, 138, 98], np.float32) * (1 + 0.07 * patch + 0.05 * _smooth_noise(rng, shape, 3 * px))[..., None]

    # Farmland: per-field crop colour with furrow stripes and darker field boundaries (hedges).
    fields = [f for f in landuse if f.cls == FARMLAND]
    fid = _rasterize([(f.geometry, i + 1) for i, f in enumerate(fields)], shape, tf)
    if fields:
        lut_col = np.array([(0, 0, 0)] + [f.style["colour"] for f in fields], np.float32)
        lut_ang = np.radians([0.0] + [f.style["angle"] for f in fields]).astype(np.float32)
        lut_per = np.array([1.0] + [f.style["period"] for f in fields], np.float32)
        m = (cmap == FARMLAND) & (fid > 0)
        ids = fid[m]
        ang, per = lut_ang[ids], lut_per[ids]
        phase = (xx[m] * np.cos(ang) + yy[m] * np.sin(ang)) / per
        stripes = 0.82 + 0.18 * np.sin(2 * math.pi * phase) + 0.03 * noise_px[m]
        img[m] = lut_col[ids] * stripes[:, None]
        edge = (fid != ndimage.grey_erosion(fid, size=int(max(2, round(3 * px))))) & (cmap == FARMLAND)
        paint(edge, (70, 85, 45))

    # Forest: dark canopy of round crowns with shadowed gaps.
    m = cmap == FOREST
    crowns = _blobs(rng, shape, 1 / (28 * px * px), 3.2 * px)
    shade = 0.45 + 0.75 * crowns + 0.05 * noise_px
    img[m] = np.array([38, 78, 36], np.float32) * shade[m][:, None]

    # Park: light mown grass with faint mowing stripes, dark tree crowns, pale footpaths.
    m = cmap == PARK
    grass = 1 + 0.06 * np.sin(2 * math.pi * xx / 9.0) + 0.05 * _smooth_noise(rng, shape, 4 * px) + 0.03 * noise_px
    paint(m, (118, 178, 78), grass)
    tmask = _rasterize([(f.geometry.buffer(f.style["radius"]), 1) for f in trees], shape, tf).astype(bool) & m
    canopy = 0.7 + 0.3 * _blobs(rng, shape, 1 / (6 * px * px), 1.2 * px)
    paint(tmask, (40, 95, 42), canopy)
    pmask = _rasterize([(line_area(f), 1) for f in paths], shape, tf).astype(bool) & m
    paint(pmask, (210, 198, 160), 1 + 0.03 * noise_px)

    # Residential: light yards, green gardens around houses, coloured roofs with cast shadows.
    m = cmap == RESIDENTIAL
    paint(m, (188, 182, 170), 1 + 0.04 * _smooth_noise(rng, shape, 2 * px) + 0.03 * noise_px)
    gmask = _rasterize([(f.geometry.buffer(4.5, join_style="mitre"), 1) for f in buildings], shape, tf).astype(bool) & m
    paint(gmask, (98, 148, 72), 1 + 0.12 * _smooth_noise(rng, shape, 1.5 * px))
    bid = _rasterize([(f.geometry, i + 1) for i, f in enumerate(buildings)], shape, tf)
    bmask = (bid > 0) & m
    shift = max(1, round(2.5 * px))
    shadow = np.zeros_like(bmask)
    shadow[shift:, shift:] = bmask[:-shift, :-shift]
    img[shadow & ~bmask & m] *= 0.55
    if buildings:
        roofs = np.array([(0, 0, 0)] + [f.style["roof"] for f in buildings], np.float32)
        img[bmask] = roofs[bid[bmask]] * (1 + 0.04 * noise_px[bmask])[:, None]

    # Parking: dark asphalt, rows of white stall lines, cars as bright coloured rectangles.
    m = cmap == PARKING
    paint(m, (62, 62, 68), 1 + 0.04 * noise_px)
    if m.any():
        period, stall_d, aisle = 16.0, 5.0, 6.0  # two stall rows per 16 m, 6 m aisle between
        v = np.mod(yy, period)
        in_row = (v < stall_d) | (v >= stall_d + aisle)
        stall_w = 2.8
        u = np.mod(xx, stall_w)
        line = in_row & (u < max(1.0, gsd)) & m
        cell_x = np.floor(xx / stall_w).astype(np.int64)
        cell_y = np.floor(yy / period * 2).astype(np.int64)
        h = (cell_x * 73856093) ^ (cell_y * 19349663) ^ seed
        h = np.mod(h, 1009)
        occupied = (h % 10) < 6
        car = m & in_row & occupied & (u > 0.6 + gsd) & (u < stall_w - 0.3) & (np.mod(v - 0.5, stall_d + aisle) < stall_d - 1)
        car_cols = np.array(
            [(200, 30, 30), (230, 230, 235), (30, 40, 140), (20, 20, 20), (170, 170, 175), (220, 180, 30), (40, 110, 60)], np.float32
        )
        img[car] = car_cols[(h[car] // 10) % len(car_cols)]
        paint(line & ~car, (235, 235, 230))

    # Water: blue, darker away from the shore, subtle wind ripples.
    m = cmap == WATER
    if m.any():
        depth = np.minimum(ndimage.distance_transform_edt(m) * gsd, 25.0) / 25.0
        theta = rng.uniform(0, math.pi)
        ripple = np.sin(2 * math.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 7.0 + 2 * _smooth_noise(rng, shape, 6 * px))
        base = np.array([48, 92, 128], np.float32)
        shade = 1.1 - 0.35 * depth + 0.04 * ripple + 0.02 * noise_px
        img[m] = base * shade[m][:, None]

    # Roads: asphalt over whatever they cross; major roads get white edge and dashed centre lines.
    m = cmap == ROAD
    paint(m, (98, 98, 102), 1 + 0.04 * noise_px)
    for f in roads:
        if f.tags["highway"] in ("primary", "secondary"):
            g = f.geometry
            edges = line_area(f).boundary.buffer(max(0.6, gsd / 2))
            dashes = [shapely.ops.substring(g, d, d + 6).buffer(max(0.8, gsd / 2), cap_style="flat") for d in np.arange(0, g.length, 12.0)]
            mk = _rasterize([(edges, 1)] + [(d, 1) for d in dashes], shape, tf).astype(bool) & m
            paint(mk, (225, 225, 215))
        else:
            img[m & _rasterize([(line_area(f), 1)], shape, tf).astype(bool)] *= 1.12  # lighter, unmarked

    # Global look: slow illumination changes, a per-scene tint, sensor noise.
    illum = 1 + 0.06 * _smooth_noise(rng, shape, 150 * px)
    tint = 1 + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    img = img * illum[..., None] * tint + 3.0 * noise_px[..., None]
    rgb = np.clip(np.rint(img), 1, 255).astype(np.uint8)  # 0 is reserved for nodata

    # Features back to pixel coordinates of the raster.
    out = []
    for f in feats:
        g = shapely.affinity.scale(f.geometry, px, px, origin=(0, 0))
        out.append(Feature(f.tags, g, f.cls, f.style))
    return rgb, cmap, out


# ---------------------------------------------------------------- writers


def scene_transform(cfg: RSDemoConfig) -> Affine:
    """Pixel -> projected CRS transform of scene.tif (north up)."""
    return Affine(cfg.scene_gsd, 0, cfg.origin_easting, 0, -cfg.scene_gsd, cfg.origin_northing)


def write_geotiff(path: Path, rgb: np.ndarray, cfg: RSDemoConfig) -> None:
    """3-band uint8 tiled GeoTIFF with a nodata strip along the right edge."""
    data = np.moveaxis(rgb, -1, 0).copy()
    if cfg.nodata_border_px > 0:
        data[:, :, -cfg.nodata_border_px:] = cfg.nodata
    profile = {
        "driver": "GTiff", "width": rgb.shape[1], "height": rgb.shape[0], "count": 3, "dtype": "uint8",
        "crs": cfg.crs, "transform": scene_transform(cfg), "nodata": cfg.nodata, "tiled": True,
        "blockxsize": 256, "blockysize": 256, "compress": "deflate", "photometric": "RGB", "interleave": "pixel",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _rings(geom: Any) -> list[np.ndarray]:
    if isinstance(geom, Polygon):
        return [np.asarray(geom.exterior.coords)] + [np.asarray(r.coords) for r in geom.interiors]
    return [np.asarray(geom.coords)]


def write_osm(path: Path, features: list[Feature], cfg: RSDemoConfig) -> None:
    """Write the features as OSM XML (0.6).

    Trees become tagged nodes, lines open ways, areas closed ways (or a multipolygon relation when a
    polygon has holes). Node lon/lat are the raster's pixel coordinates reprojected from cfg.crs to
    EPSG:4326.
    """
    tf = scene_transform(cfg)
    # Gather every vertex, reproject in one call (exact correspondence with the raster).
    coords = [_rings(f.geometry) if not isinstance(f.geometry, Point) else [np.array([f.geometry.coords[0]])] for f in features]
    flat = np.concatenate([r for rings in coords for r in rings])
    e, n = tf.c + tf.a * flat[:, 0], tf.f + tf.e * flat[:, 1]  # north-up: no rotation terms
    lon, lat = rasterio.warp.transform(cfg.crs, "EPSG:4326", list(e), list(n))
    lonlat = np.c_[lon, lat]

    meta = 'version="1" timestamp="2024-01-01T00:00:00Z" changeset="1" uid="1" user="domainfm-demo" visible="true"'
    nodes, ways, rels = [], [], []
    nid = wid = rid = 0
    k = 0

    def tag_xml(tags: dict[str, str]) -> str:
        return "".join(f"\n    <tag k={quoteattr(a)} v={quoteattr(b)}/>" for a, b in tags.items())

    def add_way(ring: np.ndarray, closed: bool, tags: dict[str, str]) -> int:
        nonlocal nid, wid, k
        pts = lonlat[k:k + len(ring)]
        k += len(ring)
        if closed:  # the closing vertex repeats the first: reuse its node id
            pts = pts[:-1]
        ids = []
        for x, y in pts:
            nid += 1
            nodes.append(f'  <node id="{nid}" {meta} lat="{y:.8f}" lon="{x:.8f}"/>')
            ids.append(nid)
        if closed:
            ids.append(ids[0])
        wid += 1
        refs = "".join(f'\n    <nd ref="{i}"/>' for i in ids)
        ways.append(f'  <way id="{wid}" {meta}>{refs}{tag_xml(tags)}\n  </way>')
        return wid

    for f, rings in zip(features, coords):
        g = f.geometry
        if isinstance(g, Point):
            x, y = lonlat[k]
            k += 1
            nid += 1
            nodes.append(f'  <node id="{nid}" {meta} lat="{y:.8f}" lon="{x:.8f}">{tag_xml(f.tags)}\n  </node>')
        elif isinstance(g, LineString):
            add_way(rings[0], False, f.tags)
        elif len(rings) == 1:
            add_way(rings[0], True, f.tags)
        else:
            members = [("outer", add_way(rings[0], True, {}))] + [("inner", add_way(r, True, {})) for r in rings[1:]]
            rid += 1
            mem = "".join(f'\n    <member type="way" ref="{w}" role="{role}"/>' for role, w in members)
            rels.append(f'  <relation id="{rid}" {meta}>{mem}{tag_xml({"type": "multipolygon", **f.tags})}\n  </relation>')

    minlon, minlat = lonlat.min(0)
    maxlon, maxlat = lonlat.max(0)
    text = "\n".join(
        ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="domainfm demo_data">',
         f'  <bounds minlat="{minlat:.8f}" minlon="{minlon:.8f}" maxlat="{maxlat:.8f}" maxlon="{maxlon:.8f}"/>',
         *nodes, *ways, *rels, "</osm>", ""]
    )
    path.write_text(text, encoding="utf-8")


def _resample(tile: np.ndarray, size: int) -> np.ndarray:
    """Area-average resampling to size x size (what a WarpedVRT with 'average' does)."""
    if tile.shape[0] == size:
        return tile
    return np.asarray(Image.fromarray(tile).resize((size, size), Image.BOX))


def zeroshot_tiles(cfg: RSDemoConfig) -> list[tuple[np.ndarray, int, dict]]:
    """Pick tiles whose centre window is predominantly one class from fresh landscapes."""
    win = int(round(cfg.tile_size * cfg.target_gsd / cfg.scene_gsd))  # tile side in scene pixels
    cwin = max(3, int(round(win * cfg.centre_fraction)))
    road_cwin = max(3, cwin // 4)  # roads are narrow: only the very centre must be road
    stride = max(4, win // 5)
    chosen: dict[int, list] = {c: [] for c in range(len(CLASSNAMES))}
    rng = np.random.default_rng(cfg.zeroshot_seed)
    for attempt in range(8):
        if all(len(v) >= cfg.zeroshot_per_class for v in chosen.values()):
            break
        seed = cfg.zeroshot_seed + attempt
        rgb, cmap, _ = render_landscape(cfg.zeroshot_size_px, cfg.scene_gsd, seed, cfg.block_spacing_m)
        half = win // 2
        centres = np.arange(half, cfg.zeroshot_size_px - win + half, stride)
        cyx = np.stack(np.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)
        for c in range(len(CLASSNAMES)):
            need = cfg.zeroshot_per_class - len(chosen[c])
            if need <= 0:
                continue
            w = road_cwin if c == ROAD else cwin
            frac = ndimage.uniform_filter((cmap == c).astype(np.float32), size=w, mode="constant")
            purity = cfg.centre_purity if c != ROAD else 0.95
            ok = cyx[frac[cyx[:, 0], cyx[:, 1]] >= purity]
            if c == ROAD:  # and a visible road strip, not just a crossing corner
                share = ndimage.uniform_filter((cmap == ROAD).astype(np.float32), size=win // 2, mode="constant")
                ok = ok[share[ok[:, 0], ok[:, 1]] >= 0.15]
            taken: list[np.ndarray] = []
            for r, col in ok[rng.permutation(len(ok))]:
                # Keep tiles of one class at least half a tile apart: few near-duplicates.
                if len(taken) >= need:
                    break
                if taken and np.abs(np.array(taken) - (r, col)).max(1).min() < win // 2:
                    continue
                taken.append(np.array((r, col)))
                tile = rgb[r - half:r - half + win, col - half:col - half + win]
                meta = {"classname": CLASSNAMES[c], "landscape_seed": seed, "row": int(r), "col": int(col)}
                chosen[c].append((_resample(tile, cfg.tile_size), c, meta))
    short = {CLASSNAMES[c]: len(v) for c, v in chosen.items() if len(v) < cfg.zeroshot_per_class}
    if short:
        raise RuntimeError(f"zero-shot set: too few pure tiles for {short}; raise zeroshot_size_px")
    return [t for c in sorted(chosen) for t in chosen[c]]


def write_zeroshot(out: Path, cfg: RSDemoConfig) -> int:
    """WebDataset shard out/test-000000.tar (png, cls, json) plus classnames.txt; returns the sample count.

    No templates file: the evaluation takes its templates from params or prompts.py and writes the
    ones it used beside its metrics (metrics/<domain>/clip_benchmark/zeroshot/).
    """
    out.mkdir(parents=True, exist_ok=True)
    tiles = zeroshot_tiles(cfg)
    order = np.random.default_rng(cfg.zeroshot_seed).permutation(len(tiles))  # mixed classes in the shard
    with wds.TarWriter(str(out / "test-000000.tar"), mtime=0) as sink:
        for i, j in enumerate(order):
            img, c, meta = tiles[j]
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            sink.write({"__key__": f"zs{i:06d}", "png": buf.getvalue(), "cls": str(c).encode(), "json": json.dumps(meta).encode()})
    (out / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    return len(tiles)


def write_demo_data(out: Path, cfg: RSDemoConfig) -> None:
    """Write out/scene.tif, out/features.osm and out/zeroshot/ (see module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rgb, _, features = render_landscape(cfg.scene_size_px, cfg.scene_gsd, cfg.seed, cfg.block_spacing_m)
    write_geotiff(out / "scene.tif", rgb, cfg)
    write_osm(out / "features.osm", features, cfg)
    write_zeroshot(out / "zeroshot", cfg)
