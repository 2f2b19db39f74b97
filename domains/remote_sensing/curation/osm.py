"""Read OpenStreetMap data (.osm, .osm.pbf, .osm.bz2 through pyosmium, or GeoJSON) into features.

Tagged nodes become points, open ways lines, closed ways with area tags and multipolygon
relations polygons (lon/lat, EPSG:4326). Broken geometries (missing node locations, unclosed
areas, rings that cannot be repaired, empty shapes) are returned as rejects; invalid polygons are
repaired with shapely's `make_valid`, keeping only the polygonal parts, which is sound for
self-intersecting rings (a bow-tie becomes two triangles) and drops nothing with area.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, shape
from shapely.geometry.base import BaseGeometry

from pipelines.curation import Reject

OSM_SUFFIXES = (".osm", ".osm.pbf", ".pbf", ".osm.bz2", ".osm.gz", ".osm.xml")
GEOJSON_SUFFIXES = (".geojson", ".json")
STAGE = "osm"

# Keys whose closed ways are areas (after the OSM wiki's area heuristics); other closed ways
# (a roundabout, a fence) stay lines unless tagged area=yes.
AREA_KEYS = frozenset(
    "building landuse natural leisure amenity aeroway man_made power military tourism shop place "
    "historic boundary golf craft office public_transport parking water wetland area:highway".split()
)
LINEAR_NATURAL = frozenset({"coastline", "tree_row", "cliff", "ridge", "arete"})


@dataclass
class Feature:
    """One tagged OSM object with its lon/lat geometry."""

    osm_id: str  # "way/123", or the GeoJSON id
    osm_type: str  # node | way | relation | feature (GeoJSON without an OSM type)
    tags: dict[str, str]
    geometry: BaseGeometry  # EPSG:4326 lon/lat
    kind: str  # point | line | polygon


@dataclass
class ReadResult:
    """The features read from an OSM file, the objects rejected and the counts per step."""

    features: list[Feature] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


TagFilter = Callable[[Mapping[str, str]], bool]


def osm_format(path: Path) -> str:
    """'osm' (pyosmium) or 'geojson' from the file name; ValueError for anything else."""
    name = path.name.lower()
    if name.endswith(GEOJSON_SUFFIXES):
        return "geojson"
    if name.endswith(OSM_SUFFIXES):
        return "osm"
    raise ValueError(f"unknown OSM file type {path.name!r}; expected one of {', '.join(OSM_SUFFIXES + GEOJSON_SUFFIXES)}")


def read_features(path: Path, keep: TagFilter | None = None) -> ReadResult:
    """All tagged features of `path`; `keep(tags)` drops uninteresting ones before any geometry is built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OSM file not found: {path}")
    if osm_format(path) == "geojson":
        return read_geojson(path, keep)
    return read_osm(path, keep)


def is_area(tags: Mapping[str, str]) -> bool:
    """Whether a closed way with these tags is an area rather than a closed line (OSM wiki heuristics)."""
    if tags.get("area") == "no":
        return False
    if tags.get("area") == "yes":
        return True
    if tags.get("natural") in LINEAR_NATURAL:
        return False
    return any(k in AREA_KEYS for k in tags)


def repair_polygon(geom: BaseGeometry) -> BaseGeometry | None:
    """A valid (Multi)Polygon, or None where nothing with area is left."""
    if geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, (Polygon, MultiPolygon)) and g.area > 0]
    if not parts:
        return None
    polys = [p for g in parts for p in getattr(g, "geoms", [g])]
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _line(coords: list[tuple[float, float]]) -> LineString | None:
    distinct = list(dict.fromkeys(coords))
    return LineString(coords) if len(distinct) >= 2 else None


class _Collector:
    """Shared bookkeeping: counts, rejects and the tag filter."""

    def __init__(self, source: str, keep: TagFilter | None):
        self.source = source
        self.keep = keep
        self.result = ReadResult()
        self.seen: set[str] = set()

    def wanted(self, tags: Mapping[str, str]) -> bool:
        if not tags:
            return False
        self.result.counts["osm_objects_tagged"] += 1
        if self.keep is not None and not self.keep(tags):
            self.result.counts["objects_without_visible_tags"] += 1
            return False
        return True

    def reject(self, osm_id: str, reason: str) -> None:
        self.result.rejects.append(Reject(f"{self.source}#{osm_id}", STAGE, reason))
        self.result.counts["osm_geometries_rejected"] += 1

    def add(self, osm_id: str, osm_type: str, tags: Mapping[str, str], geom: BaseGeometry | None, kind: str) -> None:
        if osm_id in self.seen:  # ids name pairs and resume keys: the first one wins
            self.reject(osm_id, "duplicate feature id")
            return
        if geom is None or geom.is_empty:
            self.reject(osm_id, "empty geometry")
            return
        if kind == "polygon":
            repaired = repair_polygon(geom)
            if repaired is None:
                self.reject(osm_id, "invalid polygon could not be repaired")
                return
            if not geom.is_valid:
                self.result.counts["osm_geometries_repaired"] += 1
            geom = repaired
        self.seen.add(osm_id)
        self.result.features.append(Feature(osm_id, osm_type, dict(tags), geom, kind))
        self.result.counts[f"osm_{kind}s"] += 1


# ---------------------------------------------------------------- OSM through pyosmium


def read_osm(path: Path, keep: TagFilter | None = None) -> ReadResult:
    """Tagged nodes, ways and multipolygon/boundary relations of an OSM file (XML or PBF), through pyosmium."""
    import osmium
    from osmium.geom import WKBFactory

    wkb = WKBFactory()
    c = _Collector(str(path), keep)
    # Closed ways with area tags wait for osmium's assembled area; if osmium finds the ring
    # invalid, the way's own coordinates are repaired instead.
    pending_ways: dict[int, tuple[dict[str, str], list[tuple[float, float]]]] = {}
    pending_relations: dict[int, dict[str, str]] = {}

    processor = osmium.FileProcessor(str(path)).with_locations().with_areas()
    for obj in processor:
        if obj.is_node():
            tags = dict(obj.tags)
            if c.wanted(tags):
                loc = obj.location
                if loc.valid():
                    c.add(f"node/{obj.id}", "node", tags, Point(loc.lon, loc.lat), "point")
                else:
                    c.reject(f"node/{obj.id}", "invalid node location")
        elif obj.is_way():
            tags = dict(obj.tags)
            if not c.wanted(tags):
                continue
            osm_id = f"way/{obj.id}"
            try:
                coords = [(n.lon, n.lat) for n in obj.nodes]
            except osmium.InvalidLocationError:
                c.reject(osm_id, "missing node locations")
                continue
            closed = len(coords) >= 4 and coords[0] == coords[-1]
            line = _line(coords)
            if is_area(tags) and closed:
                pending_ways[obj.id] = (tags, coords)
            elif is_area(tags) and (tags.get("area") == "yes" or not _has_linear_key(tags)):
                c.reject(osm_id, "unclosed way with area tags")
            elif line is None:
                c.reject(osm_id, "degenerate line")
            else:
                c.add(osm_id, "way", tags, line, "line")
        elif obj.is_relation():
            tags = dict(obj.tags)
            if tags.get("type") in ("multipolygon", "boundary"):
                rest = {k: v for k, v in tags.items() if k != "type"}
                if c.wanted(rest):
                    pending_relations[obj.id] = rest
        elif obj.is_area():
            if obj.from_way():
                if obj.orig_id() not in pending_ways:
                    continue
                try:
                    geom = shapely.from_wkb(wkb.create_multipolygon(obj))
                except RuntimeError:  # osmium could not build a valid area: repair the ring below
                    continue
                tags, _ = pending_ways.pop(obj.orig_id())
                c.add(f"way/{obj.orig_id()}", "way", tags, _single(geom), "polygon")
            elif obj.orig_id() in pending_relations:
                tags = pending_relations.pop(obj.orig_id())
                try:
                    geom = shapely.from_wkb(wkb.create_multipolygon(obj))
                except RuntimeError:
                    c.reject(f"relation/{obj.orig_id()}", "invalid multipolygon")
                    continue
                c.add(f"relation/{obj.orig_id()}", "relation", tags, _single(geom), "polygon")

    for way_id, (tags, coords) in sorted(pending_ways.items()):
        c.add(f"way/{way_id}", "way", tags, Polygon(coords), "polygon")
    for rel_id in sorted(pending_relations):
        # osmium emits no area when members are missing (cut by the extract) or rings do not close
        c.reject(f"relation/{rel_id}", "multipolygon could not be assembled")
    return c.result


def _has_linear_key(tags: Mapping[str, str]) -> bool:
    # highway=pedestrian + area tags, barrier=..., waterway=...: an open way is then a plain line
    return any(k in tags for k in ("highway", "railway", "waterway", "barrier", "power", "natural", "man_made"))


def _single(geom: BaseGeometry) -> BaseGeometry:
    return geom.geoms[0] if isinstance(geom, MultiPolygon) and len(geom.geoms) == 1 else geom


# ---------------------------------------------------------------- GeoJSON


def _geojson_identity(feature: Mapping[str, Any], props: Mapping[str, Any], index: int) -> tuple[str, str]:
    raw = props.get("osm_id", props.get("id", feature.get("id")))
    osm_type = str(props.get("osm_type", props.get("@type", "")) or "")
    if raw is None:
        return f"feature/{index}", osm_type or "feature"
    raw = str(raw)
    if "/" in raw:  # overpass-turbo style "way/123"
        t, _, n = raw.partition("/")
        return f"{t}/{n}", t
    if osm_type:
        return f"{osm_type}/{raw}", osm_type
    return f"feature/{raw}", "feature"


def _rings_closed(geometry: Mapping[str, Any]) -> bool:
    coords = geometry.get("coordinates") or []
    polys = [coords] if geometry.get("type") == "Polygon" else coords
    return all(ring and list(ring[0]) == list(ring[-1]) for poly in polys for ring in poly)


def read_geojson(path: Path, keep: TagFilter | None = None) -> ReadResult:
    """The features of a GeoJSON FeatureCollection (or single Feature); properties are the tags."""
    data = json.loads(Path(path).read_text())
    features = data.get("features", []) if data.get("type") == "FeatureCollection" else [data]
    c = _Collector(str(path), keep)
    for i, feat in enumerate(features):
        props = feat.get("properties") or {}
        osm_id, osm_type = _geojson_identity(feat, props, i)
        tags = {str(k): str(v) for k, v in props.items() if k not in ("id", "osm_id", "osm_type", "@type") and v is not None}
        if not c.wanted(tags):
            continue
        geometry = feat.get("geometry")
        if not geometry:
            c.reject(osm_id, "missing geometry")
            continue
        gtype = geometry.get("type")
        if gtype in ("Polygon", "MultiPolygon") and not _rings_closed(geometry):
            c.reject(osm_id, "unclosed polygon ring")
            continue
        try:
            geom = shape(geometry)
        except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.ShapelyError):
            c.reject(osm_id, "unparseable geometry")
            continue
        kind = {"Point": "point", "MultiPoint": "point", "LineString": "line", "MultiLineString": "line"}.get(gtype, "polygon")
        if gtype not in ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"):
            c.reject(osm_id, "unsupported geometry type")
            continue
        if kind == "line" and not geom.is_empty and geom.length == 0:
            c.reject(osm_id, "degenerate line")
            continue
        c.add(osm_id, osm_type, tags, geom, kind)
    return c.result
