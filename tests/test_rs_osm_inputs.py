"""OpenStreetMap data as users have it: JOSM's negative ids, objects out of order, compressed and PBF files, GeoJSON from any tool."""
from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest
from bad_inputs.files import good_raster, scene_lonlat, square

from domains.remote_sensing.curation.curate import RSCurateConfig, curate
from domains.remote_sensing.curation.osm import read_features
from pipelines.io.manifest import read_manifest
from pipelines.params import build

CFG = dict(tile_size=32, target_gsd_m=2.0, max_shift_fraction=0.1, val_fraction=0.0, test_fraction=0.0)


def node(node_id: int, lon: float, lat: float, tags: dict | None = None, extra: str = "") -> str:
    inner = "".join(f'<tag k="{k}" v="{v}"/>' for k, v in (tags or {}).items())
    return f'<node id="{node_id}"{extra} lat="{lat:.8f}" lon="{lon:.8f}">{inner}</node>'


def way(way_id: int, refs: list[int], tags: dict, extra: str = "") -> str:
    return (f'<way id="{way_id}"{extra}>' + "".join(f'<nd ref="{r}"/>' for r in refs)
            + "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items()) + "</way>")


def josm_map(first_id: int = -1, step: int = -1, extra: str = ' action="modify" visible="true"') -> tuple[list[str], list[str], list[str]]:
    """(nodes, ways, relations) of a park, a parking lot, a road, a playground and a pond with an island (multipolygon), as JOSM
    saves objects drawn in it (negative ids) when first_id < 0."""
    ids = iter(range(first_id, first_id + step * 10_000, step))
    nodes, ways, relations = [], [], []

    def ring(fx: float, fy: float, half: float = 0.08) -> list[int]:
        refs = []
        for lon, lat in square(fx, fy, half)[:-1]:
            refs.append(next(ids))
            nodes.append(node(refs[-1], lon, lat, extra=extra))
        return refs + refs[:1]

    ways.append(way(next(ids), ring(0.3, 0.3), {"leisure": "park"}, extra))
    ways.append(way(next(ids), ring(0.7, 0.3), {"amenity": "parking"}, extra))
    road = [next(ids), next(ids)]
    nodes += [node(road[0], *scene_lonlat(0.1, 0.5), extra=extra), node(road[1], *scene_lonlat(0.9, 0.5), extra=extra)]
    ways.append(way(next(ids), road, {"highway": "primary"}, extra))
    nodes.append(node(next(ids), *scene_lonlat(0.5, 0.85), {"leisure": "playground"}, extra))
    outer, inner = next(ids), next(ids)
    ways += [way(outer, ring(0.3, 0.7, 0.1), {}, extra), way(inner, ring(0.3, 0.7, 0.03), {}, extra)]
    relations.append(f'<relation id="{next(ids)}"{extra}><member type="way" ref="{outer}" role="outer"/>'
                     f'<member type="way" ref="{inner}" role="inner"/><tag k="type" v="multipolygon"/><tag k="natural" v="water"/>'
                     "</relation>")
    return nodes, ways, relations


def osm_document(*parts: list[str], generator: str = "JOSM") -> str:
    body = "\n".join(line for part in parts for line in part)
    return f"<?xml version='1.0' encoding='UTF-8'?>\n<osm version='0.6' generator='{generator}'>\n{body}\n</osm>\n"


def kinds(path: Path) -> dict[str, str]:
    read = read_features(path)
    assert not read.rejects, read.rejects
    return {f.osm_id: f.kind for f in read.features}


def test_negative_ids_as_josm_saves_them(tmp_path):
    nodes, ways, relations = josm_map()
    path = tmp_path / "drawn.osm"
    path.write_text(osm_document(nodes, ways, relations))
    read = read_features(path)
    assert not read.rejects
    got = {f.osm_id: f for f in read.features}
    assert {k: f.kind for k, f in got.items()} == {"way/-1": "polygon", "way/-6": "polygon", "way/-13": "line", "node/-14": "point",
                                                   "relation/-25": "polygon"}
    assert len(got["relation/-25"].geometry.interiors) == 1  # the island
    assert read.warnings == [f"{path}: 19 nodes, 1 relation, 5 ways with negative ids (new objects not uploaded to OpenStreetMap, "
                             "as JOSM saves them); their ids are local to this file"]
    # compressed, and as PBF: the same features
    (tmp_path / "drawn.osm.gz").write_bytes(gzip.compress(path.read_bytes()))
    (tmp_path / "drawn.osm.bz2").write_bytes(bz2.compress(path.read_bytes()))
    for name in ("drawn.osm.gz", "drawn.osm.bz2"):
        again = read_features(tmp_path / name)
        assert [(f.osm_id, f.geometry.wkb) for f in again.features] == [(f.osm_id, f.geometry.wkb) for f in read.features], name


def test_negative_ids_in_pbf(tmp_path):
    import osmium

    nodes, ways, relations = josm_map(extra="")
    xml = tmp_path / "drawn.osm"
    xml.write_text(osm_document(nodes, ways, relations))
    pbf = tmp_path / "drawn.osm.pbf"
    with osmium.SimpleWriter(str(pbf)) as writer:  # negative ids kept, as ogr2osm and osmium write them
        for obj in osmium.FileProcessor(str(xml)):
            writer.add(obj)
    assert kinds(pbf) == kinds(xml)


def test_edited_download_mixes_positive_and_negative_ids(tmp_path):
    """Downloaded objects keep their ids; a new way drawn on downloaded nodes has a negative id."""
    nodes, ways, relations = josm_map(first_id=1000, step=1, extra=' version="3"')
    new = way(-1, [1001, 1002, 1003, 1004, 1001], {"building": "yes"}, ' action="modify"')
    path = tmp_path / "edited.osm"
    path.write_text(osm_document(nodes, ways, [new], relations))
    got = kinds(path)
    assert got["way/-1"] == "polygon" and got["way/1000"] == "polygon" and got["relation/1024"] == "polygon"


def test_ways_and_relations_before_their_nodes(tmp_path):
    nodes, ways, relations = josm_map(first_id=1, step=1, extra="")
    reference = tmp_path / "sorted.osm"
    reference.write_text(osm_document(nodes, ways, relations))
    for order in ((relations, ways, nodes), (ways, nodes, relations), (ways, relations, nodes)):
        path = tmp_path / "unsorted.osm"
        path.write_text(osm_document(*order))
        read = read_features(path)
        assert not read.rejects
        expected = read_features(reference).features
        assert [(f.osm_id, f.geometry.wkb) for f in read.features] == [(f.osm_id, f.geometry.wkb) for f in expected]
        assert len(read.warnings) == 1 and "not in OSM order" in read.warnings[0]


def test_missing_nodes_are_still_named(tmp_path):
    nodes, ways, relations = josm_map()
    broken = way(-99, [-1, -9999], {"highway": "service"}, ' action="modify"')
    path = tmp_path / "drawn.osm"
    path.write_text(osm_document(nodes, ways, [broken], relations))
    read = read_features(path)
    assert [(r.input, r.reason) for r in read.rejects] == [(f"{path}#way/-99", "missing node locations")]
    assert len(read.features) == 5


def test_negative_id_map_is_curated(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    nodes, ways, relations = josm_map()
    osm = tmp_path / "drawn.osm"
    osm.write_text(osm_document(nodes, ways, relations))
    summary = curate([good], osm, tmp_path / "out", build(RSCurateConfig, CFG))
    manifest = read_manifest(tmp_path / "out")
    by_id = {p["osm_id"]: c for p, c in zip(manifest.provenance, manifest.caption)}
    assert by_id == {"way/-1": "park", "way/-6": "parking lot", "way/-13": "primary road", "node/-14": "playground",
                     "relation/-25": "water"}
    assert any("negative ids" in w for w in summary["warnings"])


# ---------------------------------------------------------------- GeoJSON as tools write it


def _lot() -> dict:
    return {"type": "Polygon", "coordinates": [square(0.7, 0.3)]}


@pytest.mark.parametrize(
    "feature, osm_id, tags",
    [
        # overpass-turbo export
        ({"type": "Feature", "id": "way/42", "properties": {"@id": "way/42", "amenity": "parking", "capacity": 30, "@relations": []}},
         "way/42", {"amenity": "parking", "capacity": "30"}),
        # osmtogeojson without --flat: tags nested, metadata beside them
        ({"type": "Feature", "id": "way/42", "properties": {"type": "way", "id": 42, "tags": {"amenity": "parking", "fee": True},
                                                           "relations": [], "meta": {"user": "x"}}},
         "way/42", {"amenity": "parking", "fee": "yes"}),
        # GDAL's OSM driver (ogr2ogr ... multipolygons): an area from a closed way, other tags in hstore text
        ({"type": "Feature", "properties": {"osm_id": None, "osm_way_id": "42", "amenity": "parking", "name": None,
                                            "other_tags": '"surface"=>"asphalt","note"=>"say \\"hi\\""'}},
         "way/42", {"amenity": "parking", "surface": "asphalt", "note": 'say "hi"'}),
        # ... and from a multipolygon relation
        ({"type": "Feature", "properties": {"osm_id": "7", "osm_way_id": None, "amenity": "parking"}}, "relation/7",
         {"amenity": "parking"}),
        # a plain export: numbers as numbers, booleans as booleans
        ({"type": "Feature", "properties": {"amenity": "parking", "levels": 2.0, "covered": False}}, "feature/0",
         {"amenity": "parking", "levels": "2", "covered": "no"}),
    ],
    ids=["overpass-turbo", "osmtogeojson", "gdal-way", "gdal-relation", "plain"],
)
def test_geojson_properties_from_any_tool(tmp_path, feature, osm_id, tags):
    path = tmp_path / "map.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{**feature, "geometry": _lot()}]}))
    (got,) = read_features(path).features
    assert (got.osm_id, got.tags) == (osm_id, tags)
