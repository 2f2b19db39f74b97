"""Remote-sensing demo data: GeoTIFF, OSM file and zero-shot set, at small sizes."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import osmium
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.wkb
import webdataset as wds

from domains.remote_sensing.demo.demo_data import (
    BACKGROUND,
    FARMLAND,
    FOREST,
    PARK,
    PARKING,
    RESIDENTIAL,
    ROAD,
    WATER,
    RSDemoConfig,
    render_landscape,
    write_demo_data,
)
from domains.remote_sensing.prompts import CLASSNAMES
from pipelines.params import ParamsError, build

SMALL = {
    "scene_size_px": 900,
    "block_spacing_m": 300.0,
    "zeroshot_per_class": 12,
    "zeroshot_size_px": 1024,
    "nodata_border_px": 10,
}
EXPECTED_CLASS = {  # OSM tag -> class drawn under the object
    ("natural", "water"): WATER,
    ("landuse", "forest"): FOREST,
    ("landuse", "farmland"): FARMLAND,
    ("landuse", "residential"): RESIDENTIAL,
    ("leisure", "park"): PARK,
    ("amenity", "parking"): PARKING,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rs_demo")
    write_demo_data(out, build(RSDemoConfig, SMALL))
    return out


@pytest.fixture(scope="module")
def rendered() -> tuple[np.ndarray, np.ndarray, list]:
    cfg = build(RSDemoConfig, SMALL)
    return render_landscape(cfg.scene_size_px, cfg.scene_gsd, cfg.seed, cfg.block_spacing_m)


class _Collect(osmium.SimpleHandler):
    def __init__(self) -> None:
        super().__init__()
        self.wkb = osmium.geom.WKBFactory()
        self.lonlat: list[tuple[float, float]] = []
        self.areas: list[tuple[dict, object]] = []
        self.lines: list[tuple[dict, object]] = []
        self.trees: list[tuple[float, float]] = []

    def node(self, n) -> None:
        self.lonlat.append((n.location.lon, n.location.lat))
        if n.tags.get("natural") == "tree":
            self.trees.append((n.location.lon, n.location.lat))

    def way(self, w) -> None:
        if not w.is_closed():
            self.lines.append((dict(w.tags), shapely.wkb.loads(self.wkb.create_linestring(w), hex=True)))

    def area(self, a) -> None:
        self.areas.append((dict(a.tags), shapely.wkb.loads(self.wkb.create_multipolygon(a), hex=True)))


@pytest.fixture(scope="module")
def osm(demo: Path) -> _Collect:
    h = _Collect()
    h.apply_file(str(demo / "features.osm"), locations=True)
    return h


def _to_pixels(ds: rasterio.DatasetReader, lonlat: np.ndarray) -> np.ndarray:
    """lon/lat -> fractional (col, row) of the scene raster."""
    xs, ys = rasterio.warp.transform("EPSG:4326", ds.crs, lonlat[:, 0].tolist(), lonlat[:, 1].tolist())
    t = ds.transform  # north up
    cols, rows = (np.asarray(xs) - t.c) / t.a, (np.asarray(ys) - t.f) / t.e
    return np.c_[cols, rows]


def test_geotiff_is_georeferenced_tiled_rgb_with_nodata_strip(demo: Path, rendered) -> None:
    rgb, _, _ = rendered
    with rasterio.open(demo / "scene.tif") as ds:
        assert ds.crs.is_projected and ds.crs.to_epsg() == 32631
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
        assert ds.res == (1.0, 1.0) and ds.transform.e < 0  # north up
        assert 300_000 < ds.bounds.left < 700_000  # a plausible UTM easting
        assert ds.nodata == 0
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        data = ds.read()
        mask = ds.dataset_mask()
    n = SMALL["nodata_border_px"]
    assert (data[:, :, -n:] == 0).all() and (mask[:, -n:] == 0).all()
    assert (mask[:, :-n] == 255).all()  # no accidental nodata inside the image
    # The file holds exactly the rendered landscape (rendering is deterministic).
    assert np.array_equal(np.moveaxis(data, 0, -1)[:, :-n], rgb[:, :-n])


def test_osm_parses_with_all_feature_kinds(osm: _Collect) -> None:
    kinds = Counter((k, v) for tags, _ in osm.areas for k, v in tags.items() if (k, v) in EXPECTED_CLASS)
    assert set(kinds) == set(EXPECTED_CLASS), kinds
    assert sum("building" in tags for tags, _ in osm.areas) > 20
    highways = Counter(tags.get("highway") for tags, _ in osm.lines)
    assert highways["primary"] >= 2 and highways["residential"] >= 2
    assert len(osm.trees) > 0


def test_osm_nodes_fall_inside_raster_footprint(demo: Path, osm: _Collect) -> None:
    with rasterio.open(demo / "scene.tif") as ds:
        px = _to_pixels(ds, np.asarray(osm.lonlat))
        size = ds.width
    assert px.min() > -0.01 and px.max() < size + 0.01
    # Not all squeezed in one corner either: the features cover the scene.
    assert px[:, 0].max() - px[:, 0].min() > 0.9 * size


def test_osm_objects_match_the_drawn_classes(demo: Path, osm: _Collect, rendered) -> None:
    """Round trip through lon/lat: each OSM area covers pixels of its class, buildings sit on
    residential land, roads on road pixels, trees in parks."""
    _, cmap, _ = rendered
    with rasterio.open(demo / "scene.tif") as ds:
        to_px = lambda g: shapely.transform(g, lambda xy: _to_pixels(ds, xy))  # noqa: E731
        checked = 0
        for tags, geom in osm.areas:
            key = next(((k, v) for k, v in tags.items() if (k, v) in EXPECTED_CLASS), None)
            if key is None:
                continue
            poly = to_px(geom)
            inside = rasterio.features.geometry_mask([poly], cmap.shape, rasterio.Affine.identity(), invert=True)
            share = (cmap[inside] == EXPECTED_CLASS[key]).mean()
            if key == ("landuse", "residential"):
                # As in OSM, a residential area includes its streets, parking lots and pocket parks.
                allowed = np.isin(cmap[inside], [RESIDENTIAL, ROAD, PARKING, PARK]).mean()
                assert share > 0.3 and allowed > 0.95, (tags, share, allowed)
            else:  # roads may bridge a river, nothing else lies on top
                allowed = np.isin(cmap[inside], [EXPECTED_CLASS[key], ROAD]).mean()
                assert share > 0.6 and allowed > 0.97, (tags, share, allowed)
            checked += 1
        assert checked >= 10
        for tags, geom in osm.areas:
            if "building" in tags:
                c = to_px(geom).representative_point()
                assert cmap[int(c.y), int(c.x)] == RESIDENTIAL, tags
        for tags, geom in osm.lines:
            if tags.get("highway") in ("primary", "secondary", "residential"):
                mid = to_px(geom).interpolate(0.5, normalized=True)
                assert cmap[int(mid.y), int(mid.x)] in (ROAD,), tags
        trees = _to_pixels(ds, np.asarray(osm.trees))
    assert np.isin(cmap[trees[:, 1].astype(int), trees[:, 0].astype(int)], [PARK]).all()


def test_render_landscape_is_deterministic_per_seed() -> None:
    a = render_landscape(400, 1.0, seed=3, block_spacing_m=250)
    b = render_landscape(400, 1.0, seed=3, block_spacing_m=250)
    c = render_landscape(400, 1.0, seed=4, block_spacing_m=250)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert a[1].min() >= BACKGROUND and a[1].max() < len(CLASSNAMES)
    assert a[0].min() >= 1  # 0 is reserved for nodata


def test_config_rejects_unknown_options() -> None:
    with pytest.raises(ParamsError, match=r"remote_sensing\.demo\.scene_size: unknown key; did you mean scene_size_px\?"):
        build(RSDemoConfig, {"scene_size": 10}, "remote_sensing.demo")


def _zeroshot(demo: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    ds = wds.WebDataset(str(demo / "zeroshot" / "test-000000.tar"), shardshuffle=False).decode("pil")
    images, labels, metas = [], [], []
    for s in ds:
        images.append(np.asarray(s["png"].convert("RGB")))
        assert s["png"].mode == "RGB"
        labels.append(int(s["cls"]))
        metas.append(s["json"])
    return np.stack(images), np.asarray(labels), metas


def test_zeroshot_set_is_balanced_and_well_formed(demo: Path) -> None:
    images, labels, metas = _zeroshot(demo)
    cfg = build(RSDemoConfig, SMALL)
    assert images.shape[1:] == (cfg.tile_size, cfg.tile_size, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < len(CLASSNAMES)
    assert Counter(labels.tolist()) == {c: cfg.zeroshot_per_class for c in range(len(CLASSNAMES))}
    assert all(m["classname"] == CLASSNAMES[c] for m, c in zip(metas, labels))
    assert (demo / "zeroshot" / "classnames.txt").read_text().splitlines() == list(CLASSNAMES)
    # No templates file: the evaluation writes the templates it used beside its metrics.
    assert not (demo / "zeroshot" / "templates.txt").exists()
    # Held out: drawn from other landscapes than the scene's.
    assert all(m["landscape_seed"] != cfg.seed for m in metas)


def _features(images: np.ndarray) -> np.ndarray:
    """Mean RGB, per-channel spread and gradient energy: the cheapest colour + texture summary."""
    x = images.astype(np.float32) / 255.0
    grey = x.mean(-1)
    grad = np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))
    return np.c_[x.mean((1, 2)), x.std((1, 2)), 4 * grad]


def test_zeroshot_classes_are_visually_distinct(demo: Path) -> None:
    images, labels, _ = _zeroshot(demo)
    feats = _features(images)
    train = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([feats[train & (labels == c)].mean(0) for c in range(len(CLASSNAMES))])
    pred = np.argmin(((feats[~train, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (pred == labels[~train]).mean()
    assert accuracy > 0.5, accuracy
    # And the colours are where they should be.
    mean = defaultdict(list)
    for img, c in zip(images.astype(float), labels):
        mean[c].append(img[32 - 8:32 + 8, 32 - 8:32 + 8].mean((0, 1)))
    m = {c: np.mean(v, 0) for c, v in mean.items()}
    assert m[WATER][2] > m[WATER][0] + 30  # blue
    assert m[FOREST].sum() < m[PARK].sum() - 100  # dark canopy vs light grass
    assert m[PARK][1] > m[PARK][0] + 30 and m[PARK][1] > m[PARK][2] + 30  # green
