"""Bad remote-sensing inputs: rasters and OpenStreetMap files as users have them.

Every case curates one good 8-bit scene (`good.tif`) beside its bad input, over a small map of
two parks, a parking lot and a road (`files.features_geojson`), written as GeoJSON, OSM XML
(plain, bz2, gz) or PBF.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from bad_inputs import Case
from bad_inputs.files import (
    SIZE,
    X0,
    Y0,
    features_geojson,
    good_raster,
    scene_lonlat,
    square,
    texture,
    truncate,
    write_geojson,
    write_raster,
)

# Every pair in train: the scene is a cell or two, and the corpus is about inputs, not splits (tests/test_rs_splits.py).
# Only keys every version of the project knows, so the same cases measure the code before and after a change.
PARAMS = {"tile_size": 32, "target_gsd_m": 2.0, "max_shift_fraction": 0.1, "val_fraction": 0.0, "test_fraction": 0.0}
RS = "remote_sensing"


# ---------------------------------------------------------------- writers (this domain only)


def _osm_elements() -> tuple[list[str], list[str]]:
    """OSM XML node and way lines for the standard map (files.features_geojson): closed ways for the polygons, an open way for the road."""
    nodes, ways, next_node = [], [], 1
    for way_id, feature in enumerate(features_geojson()["features"], start=1):
        geometry = feature["geometry"]
        coords = geometry["coordinates"][0][:-1] if geometry["type"] == "Polygon" else geometry["coordinates"]
        refs = []
        for lon, lat in coords:
            nodes.append(f'<node id="{next_node}" version="1" lat="{lat:.8f}" lon="{lon:.8f}"/>')
            refs.append(next_node)
            next_node += 1
        if geometry["type"] == "Polygon":
            refs.append(refs[0])
        tags = {k: v for k, v in feature["properties"].items() if k != "osm_id"}
        ways.append(f'<way id="{way_id}" version="1">' + "".join(f'<nd ref="{r}"/>' for r in refs)
                    + "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items()) + "</way>")
    return nodes, ways


def _osm_xml(extra_nodes: str = "", extra_ways: str = "") -> str:
    """A whole OSM XML document: nodes first, then ways, as osmium wants them sorted."""
    nodes, ways = _osm_elements()
    return ("<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\" generator=\"corpus\">\n"
            + "\n".join(nodes) + "\n" + extra_nodes + "\n".join(ways) + "\n" + extra_ways + "</osm>\n")


def _node_xml(node_id: int, fx: float, fy: float, tags: dict[str, str] | None = None) -> str:
    lon, lat = scene_lonlat(fx, fy)
    inner = "".join(f'<tag k="{k}" v="{v}"/>' for k, v in (tags or {}).items())
    return f'<node id="{node_id}" version="1" lat="{lat:.8f}" lon="{lon:.8f}">{inner}</node>\n'


def _write_pbf(path: Path, missing_node_way: bool = False) -> Path:
    """The standard map as PBF, written by osmium (optionally with a way whose nodes are not in the file)."""
    import osmium

    xml = path.with_name("source.osm")
    extra = '<way id="50" version="1"><nd ref="901"/><nd ref="902"/><tag k="highway" v="service"/></way>\n' if missing_node_way else ""
    xml.write_text(_osm_xml(extra_ways=extra))
    writer = osmium.SimpleWriter(str(path))
    for obj in osmium.FileProcessor(str(xml)):
        if obj.is_node():
            writer.add_node(obj)
        elif obj.is_way():
            writer.add_way(obj)
    writer.close()
    xml.unlink()
    return path


def _scene_3857(doc: dict) -> dict:
    """The document with every geometry reprojected to Web Mercator metres."""
    from rasterio.warp import transform_geom

    feats = [{**f, "geometry": transform_geom("EPSG:4326", "EPSG:3857", f["geometry"])} for f in doc["features"]]
    return {**doc, "features": feats}


def _images(out: Path, source_part: str) -> list[tuple[dict, np.ndarray]]:
    """(provenance, HxWx3 image) of every curated pair whose source contains `source_part`."""
    import pandas as pd
    from PIL import Image

    manifest = pd.read_parquet(out / "manifest.parquet")
    rows = manifest[manifest["source"].astype(str).str.contains(source_part, regex=False)]
    wanted = {r.key: r for r in rows.itertuples()}
    found = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                if key in wanted and ext in ("png", "jpg", "webp"):
                    prov = wanted[key].provenance
                    prov = json.loads(prov) if isinstance(prov, str) else prov
                    found.append((prov, np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))))
    return found


def _inputs(folder: Path, *rasters: Path, osm: Path | None = None) -> list[str]:
    args = []
    for raster in (good_raster(folder / "good.tif"), *rasters):
        args += ["--raster", str(raster)]
    return args + ["--osm", str(osm if osm is not None else write_geojson(folder / "map.geojson"))]


# ---------------------------------------------------------------- rasters


def _truncated_raster(folder: Path) -> list[str]:
    return _inputs(folder, truncate(good_raster(folder / "truncated.tif", seed=2), 1 / 3))


def _no_crs(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "nocrs.tif", np.full((3, 192, 192), 100, np.uint8), crs=None))


def _typo_path(folder: Path) -> list[str]:
    return _inputs(folder, folder / "goood.tif")


def _folder_as_raster(folder: Path) -> list[str]:
    (folder / "scenes").mkdir()
    good_raster(folder / "scenes" / "inside.tif", seed=3)
    return _inputs(folder, folder / "scenes")


def _all_nodata(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "empty.tif", np.zeros((3, SIZE, SIZE), np.uint8)))


def _all_nan(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "allnan.tif", np.full((1, SIZE, SIZE), np.nan, np.float32), nodata=None))


def _far_raster(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "far.tif", texture(3, 30, 220, 4).round().astype(np.uint8), x0=X0 + 50_000))


def _jpeg_as_tif(folder: Path) -> list[str]:
    from PIL import Image

    Image.fromarray(texture(3, 30, 220, 5).round().astype(np.uint8).transpose(1, 2, 0)).save(folder / "photo.tif", format="JPEG")
    return _inputs(folder, folder / "photo.tif")


def _text_as_tif(folder: Path) -> list[str]:
    (folder / "notes.tif").write_text("scene list: good.tif, other.tif\n")
    return _inputs(folder, folder / "notes.tif")


def _empty_file(folder: Path) -> list[str]:
    (folder / "zero.tif").write_bytes(b"")
    return _inputs(folder, folder / "zero.tif")


def _float_with(value: float):
    """A float32 scene whose right 60% is `value` (NaN, inf) and declares no nodata."""
    def build(folder: Path) -> list[str]:
        data = texture(3, 0.02, 0.4, 6).astype(np.float32)  # reflectance
        data[:, :, int(SIZE * 0.4):] = value
        return _inputs(folder, write_raster(folder / "float.tif", data, nodata=None))
    return build


def _no_black_tiles(out: Path) -> str | None:
    """Every tile of float.tif is mostly data, and its recorded nodata fraction says how much is not."""
    images = _images(out, "float.tif")
    if not images:
        return "no tile from float.tif"
    for prov, image in images:
        black = float((image.max(axis=2) == 0).mean())
        if black > 0.15 or abs(black - prov["nodata_fraction"]) > 0.1:
            return f"{prov['osm_id']}: {black:.0%} black pixels, nodata_fraction {prov['nodata_fraction']:.2f}"
    return None


def _one_band(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "pan.tif", texture(1, 30, 220, 7).round().astype(np.uint8)))


def _two_bands(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "sar.tif", texture(2, 30, 220, 8).round().astype(np.uint8)))


def _grey_tiles(source: str):
    def check(out: Path) -> str | None:
        images = _images(out, source)
        if not images:
            return f"no tile from {source}"
        for prov, image in images:
            if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
                return f"{prov['osm_id']}: tile of {source} is not grey"
            if image.std() < 5:
                return f"{prov['osm_id']}: tile of {source} is blank"
        return None
    return check


def _sixteen_bit(folder: Path) -> list[str]:
    data = texture(4, 180, 2600, 9).round().astype(np.uint16)  # 12-bit counts in a 16-bit file, as satellite products ship
    data[:, 100:104, 20:24] = 65535  # a few saturated pixels (a glint)
    return _inputs(folder, write_raster(folder / "deep.tif", data))


def _sensible_stretch(out: Path) -> str | None:
    images = _images(out, "deep.tif")
    if not images:
        return "no tile from deep.tif"
    for prov, image in images:
        mean = float(image.mean())
        white, black = float((image >= 250).mean()), float((image <= 5).mean())
        if not 50 <= mean <= 205 or white > 0.25 or black > 0.25 or image.std() < 20:
            return f"{prov['osm_id']}: 16-bit tile badly stretched (mean {mean:.0f}, {white:.0%} white, {black:.0%} black)"
    return None


def _sixteen_bit_flat_water(folder: Path) -> list[str]:
    data = texture(3, 180, 2600, 12).round().astype(np.uint16)
    data[:, :100, :100] = 300 + np.random.default_rng(0).integers(0, 4, (3, 100, 100))  # calm water under the first park: noise of 3 counts
    return _inputs(folder, write_raster(folder / "deep.tif", data))


def _flat_stays_flat(out: Path) -> str | None:
    images = _images(out, "deep.tif")
    if not images:
        return "no tile from deep.tif"
    for prov, image in images:
        if prov["osm_id"] == "way/1" and image.std() > 10:
            return f"way/1: 3 counts of sensor noise stretched to full contrast (std {image.std():.0f} of 255)"
    return None


def _geographic(folder: Path) -> list[str]:
    """Two EPSG:4326 scenes in degrees: the west half of the scene, and a small one (24 px, about 48 m) apart from it on
    the parking lot, whose tile is mostly empty. No UTM raster: nothing else is there to fill the small one's tile."""
    data = texture(3, 30, 220, 10).round().astype(np.uint8)
    west, north = scene_lonlat(0, 0)
    east, _ = scene_lonlat(1, 1)
    deg = (east - west) / SIZE
    whole = write_raster(folder / "geo.tif", data[:, :, : SIZE // 2], crs="EPSG:4326", x0=west, y0=north, gsd=deg)
    lon, lat = scene_lonlat(0.7 - 0.06, 0.3 - 0.06)
    small = write_raster(folder / "geo_small.tif", data[:, :24, :24], crs="EPSG:4326", x0=lon, y0=lat, gsd=deg)
    return ["--raster", str(whole), "--raster", str(small), "--osm", str(write_geojson(folder / "map.geojson"))]


def _geographic_cut_in_metres(out: Path) -> str | None:
    images = _images(out, "geo.tif")
    if not images:
        return "no tile from geo.tif"
    for prov, _ in images:
        if prov["tile_crs"] != "EPSG:32631" or not 1.5 < prov["gsd_m"] < 20:
            return f"{prov['osm_id']}: geographic raster cut in {prov['tile_crs']} at {prov['gsd_m']} per pixel"
    return None


def _band_selection(folder: Path) -> list[str]:
    return _inputs(folder, write_raster(folder / "grey.tif", texture(1, 30, 220, 11).round().astype(np.uint8)))


# ---------------------------------------------------------------- mosaics: the scene as two rasters meeting at its middle


def _halves(east_writer):
    """west.tif (good) and east.tif from `east_writer(folder, pixels, x0)`; the parks are on the west half."""
    def build(folder: Path) -> list[str]:
        data = texture(3, 30, 220, 1).round().astype(np.uint8)
        half = SIZE // 2
        west = write_raster(folder / "west.tif", data[:, :, :half])
        east = east_writer(folder, data[:, :, half:], X0 + half * 2.0)
        return ["--raster", str(west), "--raster", str(east), "--osm", str(write_geojson(folder / "map.geojson"))]
    return build


def _east_truncated(folder: Path, data: np.ndarray, x0: float) -> Path:
    return truncate(write_raster(folder / "east.tif", data, x0=x0), 1 / 3)


def _east_without_crs(folder: Path, data: np.ndarray, x0: float) -> Path:
    return write_raster(folder / "east.tif", data, crs=None)


def _east_one_band(folder: Path, data: np.ndarray, x0: float) -> Path:
    return write_raster(folder / "east.tif", data[:1], x0=x0)


def _east_sixteen_bit(folder: Path, data: np.ndarray, x0: float) -> Path:
    return write_raster(folder / "east.tif", data.astype(np.uint16) * 16, x0=x0)


def _west_parks_curated(out: Path) -> str | None:
    """The parks on west.tif are curated from it, with no empty pixels."""
    images = {prov["osm_id"]: (prov, image) for prov, image in _images(out, "west.tif")}
    missing = {"way/1", "way/3"} - set(images)
    if missing:
        return f"parks on west.tif not curated: {sorted(missing)}"
    for osm_id in ("way/1", "way/3"):
        prov, image = images[osm_id]
        if prov["nodata_fraction"] > 0 or (image.max(axis=2) == 0).mean() > 0.01:
            return f"{osm_id}: empty pixels in a tile inside west.tif"
    return None


def _coarse_over_good(folder: Path) -> list[str]:
    """A 10 m scene over the whole 2 m one: both are curated, apart."""
    coarse = write_raster(folder / "coarse.tif", texture(3, 30, 220, 13, size=SIZE // 5 + 8).round().astype(np.uint8), x0=X0 - 40,
                          y0=Y0 + 40, gsd=10.0)
    return _inputs(folder, coarse)


# ---------------------------------------------------------------- OSM files


def _josm_xml(extra_ways: str = "") -> str:
    """The standard map as JOSM saves objects drawn in it: negative ids, action="modify", no versions."""
    import re

    text = _osm_xml(extra_ways=extra_ways).replace(' version="1"', ' action="modify" visible="true"')
    return re.sub(r'(id|ref)="(\d+)"', r'\1="-\2"', text).replace('generator="corpus"', 'generator="JOSM"')


def _josm(extra_ways: str = ""):
    def build(folder: Path) -> list[str]:
        (folder / "map.osm").write_text(_josm_xml(extra_ways))
        return _inputs(folder, osm=folder / "map.osm")
    return build


def _ways_before_nodes(folder: Path) -> list[str]:
    nodes, ways = _osm_elements()
    (folder / "map.osm").write_text("<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\">\n" + "\n".join(ways + nodes)
                                    + "\n</osm>\n")
    return _inputs(folder, osm=folder / "map.osm")


def _josm_parks_curated(out: Path) -> str | None:
    import pandas as pd

    manifest = pd.read_parquet(out / "manifest.parquet")
    ids = {(json.loads(p) if isinstance(p, str) else p)["osm_id"] for p in manifest["provenance"]}
    missing = {"way/-1", "way/-2", "way/-3", "way/-4"} - ids
    return f"features not curated: {sorted(missing)}" if missing else None


def _corrupt_pbf(folder: Path) -> list[str]:
    (folder / "map.osm.pbf").write_bytes(np.random.default_rng(0).integers(0, 255, 600, dtype=np.uint8).tobytes())
    return _inputs(folder, osm=folder / "map.osm.pbf")


def _truncated_pbf(folder: Path) -> list[str]:
    return _inputs(folder, osm=truncate(_write_pbf(folder / "map.osm.pbf"), 0.6))


def _truncated_xml(folder: Path) -> list[str]:
    text = _osm_xml()
    (folder / "map.osm").write_text(text[: int(len(text) * 0.7)])
    return _inputs(folder, osm=folder / "map.osm")


def _truncated_bz2(folder: Path) -> list[str]:
    (folder / "map.osm.bz2").write_bytes(bz2.compress(_osm_xml().encode())[:-40])
    return _inputs(folder, osm=folder / "map.osm.bz2")


def _truncated_gz(folder: Path) -> list[str]:
    (folder / "map.osm.gz").write_bytes(gzip.compress(_osm_xml().encode())[:-40])
    return _inputs(folder, osm=folder / "map.osm.gz")


def _html_as_osm(folder: Path) -> list[str]:
    (folder / "map.osm").write_text("<html><body>Too many requests: try again later</body></html>\n")  # an Overpass error page
    return _inputs(folder, osm=folder / "map.osm")


def _xml_way(way: str, nodes: str = ""):
    def build(folder: Path) -> list[str]:
        (folder / "map.osm").write_text(_osm_xml(extra_nodes=nodes, extra_ways=way))
        return _inputs(folder, osm=folder / "map.osm")
    return build


def _pbf_missing_nodes(folder: Path) -> list[str]:
    return _inputs(folder, osm=_write_pbf(folder / "map.osm.pbf", missing_node_way=True))


def _geojson_text(text: str):
    def build(folder: Path) -> list[str]:
        (folder / "map.geojson").write_text(text)
        return _inputs(folder, osm=folder / "map.geojson")
    return build


def _geojson_doc(doc: object):
    def build(folder: Path) -> list[str]:
        return _inputs(folder, osm=write_geojson(folder / "map.geojson", doc))
    return build


def _geojson_extra(*features: object):
    return _geojson_doc({**features_geojson(), "features": features_geojson()["features"] + list(features)})


def _park(osm_id: str, geometry: object) -> dict:
    return {"type": "Feature", "properties": {"osm_id": osm_id, "leisure": "park"}, "geometry": geometry}


def _legacy_crs(name: str):
    def build(folder: Path) -> list[str]:
        doc = {**_scene_3857(features_geojson()), "crs": {"type": "name", "properties": {"name": name}}}
        return _inputs(folder, osm=write_geojson(folder / "mercator.geojson", doc))
    return build


def _projected_without_crs(folder: Path) -> list[str]:
    return _inputs(folder, osm=write_geojson(folder / "mercator.geojson", _scene_3857(features_geojson())))


def _parks_curated(out: Path) -> str | None:
    import pandas as pd

    manifest = pd.read_parquet(out / "manifest.parquet")
    ids = {(json.loads(p) if isinstance(p, str) else p)["osm_id"] for p in manifest["provenance"]}
    missing = {"way/1", "way/2", "way/3", "way/4"} - ids
    return f"features not curated: {sorted(missing)}" if missing else None


def _no_visible_tags(folder: Path) -> list[str]:
    doc = features_geojson()
    for feature in doc["features"]:
        feature["properties"] = {"osm_id": feature["properties"]["osm_id"], "name": "somewhere", "note": "surveyed"}
    return _inputs(folder, osm=write_geojson(folder / "names.geojson", doc))


def _map_elsewhere(folder: Path) -> list[str]:
    doc = features_geojson()
    for feature in doc["features"]:  # the same features, 1 degree east: another town
        coords = feature["geometry"]["coordinates"]
        if feature["geometry"]["type"] == "Polygon":
            feature["geometry"]["coordinates"] = [[[x + 1.0, y] for x, y in ring] for ring in coords]
        else:
            feature["geometry"]["coordinates"] = [[x + 1.0, y] for x, y in coords]
    return _inputs(folder, osm=write_geojson(folder / "elsewhere.geojson", doc))


_DOC = features_geojson()
_TEXT = json.dumps(_DOC)
_SW = scene_lonlat(0.5, 0.8)

CASES = [
    # rasters
    Case("rs-truncated-raster", RS, _truncated_raster, bad="truncated.tif", reason=r"corrupt|truncat|unreadable", good=["good.tif"],
         params=PARAMS),
    Case("rs-raster-without-crs", RS, _no_crs, bad="nocrs.tif", reason=r"CRS", good=["good.tif"], params=PARAMS),
    Case("rs-raster-path-typo", RS, _typo_path, bad="goood.tif", reason=r"not found", good=["good.tif"], params=PARAMS),
    Case("rs-raster-path-is-a-folder", RS, _folder_as_raster, bad="scenes", reason=r"folder", good=["good.tif"], params=PARAMS),
    Case("rs-all-nodata-raster", RS, _all_nodata, bad="empty.tif", reason=r"no valid pixels", good=["good.tif"], params=PARAMS),
    Case("rs-all-nan-float-raster", RS, _all_nan, bad="allnan.tif", reason=r"no valid pixels", good=["good.tif"], params=PARAMS),
    Case("rs-raster-outside-osm-extent", RS, _far_raster, bad="far.tif", reason=r"no OSM features", good=["good.tif"], params=PARAMS),
    Case("rs-jpeg-renamed-tif", RS, _jpeg_as_tif, bad="photo.tif", reason=r"raster: .*(not a GeoTIFF|no CRS)", good=["good.tif"],
         params=PARAMS),
    Case("rs-text-file-as-raster", RS, _text_as_tif, bad="notes.tif", reason=r"raster: not a raster", good=["good.tif"], params=PARAMS),
    Case("rs-empty-raster-file", RS, _empty_file, bad="zero.tif", reason=r"raster: empty file", good=["good.tif"], params=PARAMS),
    Case("rs-float-nan-without-nodata", RS, _float_with(np.nan), bad="float.tif#", reason=r"tile: too much nodata",
         good=["good.tif", "float.tif"], params=PARAMS, check=_no_black_tiles),
    Case("rs-float-inf-without-nodata", RS, _float_with(np.inf), bad="float.tif#", reason=r"tile: too much nodata",
         good=["good.tif", "float.tif"], params=PARAMS, check=_no_black_tiles),
    Case("rs-one-band-raster", RS, _one_band, bad="pan.tif", reason=r"1 band.*grey", good=["good.tif", "pan.tif"], expect="warning",
         params=PARAMS, check=_grey_tiles("pan.tif")),
    Case("rs-two-band-raster", RS, _two_bands, bad="sar.tif", reason=r"2 bands.*band 2 (is )?not used", good=["good.tif", "sar.tif"],
         expect="warning", params=PARAMS, check=_grey_tiles("sar.tif")),
    Case("rs-16bit-raster", RS, _sixteen_bit, bad="deep.tif", reason=r"uint16.*stretched", good=["good.tif", "deep.tif"],
         expect="warning", params=PARAMS, check=_sensible_stretch),
    Case("rs-16bit-raster-flat-water", RS, _sixteen_bit_flat_water, bad="deep.tif", reason=r"uint16.*stretched",
         good=["good.tif", "deep.tif"], expect="warning", params=PARAMS, check=_flat_stays_flat),
    Case("rs-small-geographic-raster", RS, _geographic, bad="geo_small.tif#", reason=r"tile: too much nodata",
         good=["geo.tif"], params=PARAMS, check=_geographic_cut_in_metres),
    Case("rs-bands-do-not-fit-raster", RS, _band_selection, bad="grey.tif", reason=r"band selection", good=["good.tif"],
         params={**PARAMS, "bands": [1, 2, 3]}),
    # OSM files: the one map of the run, so a broken one stops the run
    Case("rs-corrupt-pbf", RS, _corrupt_pbf, bad="map.osm.pbf", reason=r"corrupt|not a readable", expect="error", params=PARAMS),
    Case("rs-truncated-pbf", RS, _truncated_pbf, bad="map.osm.pbf", reason=r"corrupt|truncat", expect="error", params=PARAMS),
    Case("rs-truncated-osm-xml", RS, _truncated_xml, bad="map.osm", reason=r"corrupt|truncat", expect="error", params=PARAMS),
    Case("rs-truncated-osm-bz2", RS, _truncated_bz2, bad="map.osm.bz2", reason=r"corrupt|truncat", expect="error", params=PARAMS),
    Case("rs-truncated-osm-gz", RS, _truncated_gz, bad="map.osm.gz", reason=r"corrupt|truncat", expect="error", params=PARAMS),
    Case("rs-html-page-as-osm", RS, _html_as_osm, bad="map.osm", reason=r"not an OSM|corrupt", expect="error", params=PARAMS),
    Case("rs-geojson-not-json", RS, _geojson_text("type,geometry\nFeature,POINT(3 43)\n"), bad="map.geojson", reason=r"not (valid )?JSON",
         expect="error", params=PARAMS),
    Case("rs-geojson-truncated", RS, _geojson_text(_TEXT[: len(_TEXT) // 2]), bad="map.geojson", reason=r"not (valid )?JSON.*truncat",
         expect="error", params=PARAMS),
    Case("rs-geojson-bare-list-of-features", RS, _geojson_doc(_DOC["features"]), bad="map.geojson", reason=r"list of .*features",
         good=["good.tif"], expect="warning", params=PARAMS, check=_parks_curated),
    Case("rs-geojson-collection-without-features", RS, _geojson_doc({"type": "FeatureCollection", "name": "export"}), bad="map.geojson",
         reason=r"no 'features'", expect="error", params=PARAMS),
    Case("rs-geojson-not-a-feature-collection", RS, _geojson_doc({"elements": [], "version": 0.6}), bad="map.geojson",
         reason=r"not a GeoJSON", expect="error", params=PARAMS),
    Case("rs-geojson-legacy-crs-3857", RS, _legacy_crs("urn:ogc:def:crs:EPSG::3857"), bad="mercator.geojson",
         reason=r"EPSG:3857.*reprojected", good=["good.tif"], expect="warning", params=PARAMS, check=_parks_curated),
    Case("rs-geojson-legacy-crs-900913", RS, _legacy_crs("EPSG:900913"), bad="mercator.geojson", reason=r"EPSG:3857.*reprojected",
         good=["good.tif"], expect="warning", params=PARAMS, check=_parks_curated),
    Case("rs-geojson-unknown-legacy-crs", RS, _legacy_crs("urn:ogc:def:crs:EPSG::999999"), bad="mercator.geojson",
         reason=r"unknown CRS", expect="error", params=PARAMS),
    Case("rs-geojson-metres-without-crs", RS, _projected_without_crs, bad="mercator.geojson", reason=r"outside (the )?lon/lat",
         expect="error", params=PARAMS),
    Case("rs-osm-without-visible-tags", RS, _no_visible_tags, bad="names.geojson", reason=r"no features with visible tags",
         expect="any", params=PARAMS),
    Case("rs-osm-not-over-any-raster", RS, _map_elsewhere, bad="elsewhere.geojson", reason=r"no features (intersect|over)",
         expect="any", params=PARAMS),
    # single OSM features: a rejects row naming the feature, the rest is curated
    Case("rs-osm-way-missing-nodes", RS, _xml_way('<way id="50" version="1"><nd ref="1"/><nd ref="999"/>'
                                                  '<tag k="highway" v="service"/></way>\n'),
         bad="map.osm#way/50", reason=r"missing node", good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-pbf-way-missing-nodes", RS, _pbf_missing_nodes, bad="map.osm.pbf#way/50", reason=r"missing node", good=["good.tif"],
         params=PARAMS, check=_parks_curated),
    Case("rs-osm-unclosed-area", RS, _xml_way('<way id="50" version="1"><nd ref="1"/><nd ref="2"/><nd ref="3"/>'
                                              '<tag k="building" v="yes"/></way>\n'),
         bad="map.osm#way/50", reason=r"unclosed", good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-osm-degenerate-area", RS, _xml_way('<way id="50" version="1"><nd ref="1"/><nd ref="2"/><nd ref="2"/><nd ref="1"/>'
                                                '<tag k="building" v="yes"/></way>\n'),
         bad="map.osm#way/50", reason=r"invalid polygon|could not be repaired", good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-osm-node-outside-lonlat", RS, _xml_way("", _node_xml(900, 0.5, 0.5, {"leisure": "playground"}).replace('lat="', 'lat="1')),
         bad="map.osm#node/900", reason=r"invalid node location|outside", good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-geojson-null-geometry", RS, _geojson_extra(_park("way/9", None)), bad="map.geojson#way/9", reason=r"missing geometry",
         good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-geojson-unknown-geometry-type", RS, _geojson_extra(_park("way/9", {"type": "Circle", "coordinates": [*_SW], "radius": 9})),
         bad="map.geojson#way/9", reason=r"unsupported geometry type", good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-geojson-geometry-collection", RS, _geojson_extra(_park("way/9", {"type": "GeometryCollection", "geometries": [
        {"type": "Point", "coordinates": [*_SW]}]})), bad="map.geojson#way/9", reason=r"unsupported geometry type", good=["good.tif"],
         params=PARAMS, check=_parks_curated),
    Case("rs-geojson-bad-coordinates", RS, _geojson_extra(_park("way/9", {"type": "Polygon", "coordinates": [[_SW[0], _SW[1]]]})),
         bad="map.geojson#way/9", reason=r"unparseable geometry|invalid coordinates", good=["good.tif"], params=PARAMS,
         check=_parks_curated),
    Case("rs-geojson-feature-outside-lonlat", RS, _geojson_extra(_park("way/9", {"type": "Polygon", "coordinates": [
        [[x * 1000, y * 1000] for x, y in square(0.5, 0.8)]]})), bad="map.geojson#way/9", reason=r"outside (the )?lon/lat",
         good=["good.tif"], params=PARAMS, check=_parks_curated),
    Case("rs-geojson-feature-not-an-object", RS, _geojson_extra("way/9 park"), bad="map.geojson#feature/4",
         reason=r"not a GeoJSON Feature", good=["good.tif"], params=PARAMS, check=_parks_curated),
    # mosaics: rasters that touch are curated as one; one that cannot join is named, the rest still curated
    Case("rs-mosaic-member-truncated", RS, _halves(_east_truncated), bad="east.tif", reason=r"raster: .*(unreadable|corrupt|truncat)",
         good=["west.tif"], params=PARAMS, check=_west_parks_curated),
    Case("rs-mosaic-member-without-crs", RS, _halves(_east_without_crs), bad="east.tif", reason=r"raster: .*no CRS",
         good=["west.tif"], params=PARAMS, check=_west_parks_curated),
    Case("rs-mosaic-member-other-band-count", RS, _halves(_east_one_band), bad="east.tif",
         reason=r"mosaic: cannot join the mosaic \(different band count\)", good=["west.tif", "east.tif"], params=PARAMS,
         check=_west_parks_curated),
    Case("rs-mosaic-member-other-dtype", RS, _halves(_east_sixteen_bit), bad="east.tif",
         reason=r"mosaic: cannot join the mosaic \(different data type\)", good=["west.tif", "east.tif"], params=PARAMS,
         check=_west_parks_curated),
    Case("rs-overlapping-rasters-other-resolution", RS, _coarse_over_good, bad="coarse.tif",
         reason=r"mosaic: cannot join the mosaic \(different resolution\)", good=["good.tif"], params=PARAMS, check=_parks_curated),
    # OSM files as editors save them
    Case("rs-josm-negative-ids", RS, _josm(), bad="map.osm", reason=r"negative ids", good=["good.tif"], expect="warning",
         params=PARAMS, check=_josm_parks_curated),
    Case("rs-josm-way-missing-nodes", RS, _josm('<way id="50" version="1"><nd ref="1"/><nd ref="999"/>'
                                                '<tag k="highway" v="service"/></way>\n'),
         bad="map.osm#way/-50", reason=r"missing node", good=["good.tif"], params=PARAMS, check=_josm_parks_curated),
    Case("rs-osm-ways-before-nodes", RS, _ways_before_nodes, bad="map.osm", reason=r"not in OSM order", good=["good.tif"],
         expect="warning", params=PARAMS, check=_parks_curated),
]
