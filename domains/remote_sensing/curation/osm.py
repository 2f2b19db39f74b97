"""Read OpenStreetMap data (.osm, .osm.pbf, .osm.bz2, .osm.gz through pyosmium, or GeoJSON) into features.

Tagged nodes become points, open ways lines, closed ways with area tags and multipolygon
relations polygons (lon/lat, EPSG:4326). Broken geometries (missing node locations, unclosed
areas, rings that cannot be repaired, empty shapes) are returned as rejects; invalid polygons are
repaired with shapely's `make_valid`, keeping only the polygonal parts, which is sound for
self-intersecting rings (a bow-tie becomes two triangles) and drops nothing with area.

The OSM file is the one map of a run, so a file that cannot be read whole (corrupt, truncated, not
OSM or GeoJSON at all) raises `InputError` naming it: curating from half a map would silently
drop every object past the break. GeoJSON is lon/lat unless it names another CRS in the legacy
`crs` member (GeoJSON 2008), which is honoured by reprojecting; coordinates outside the lon/lat
range in a file that names no CRS (metres exported without reprojection) are refused.
"""
from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from pipelines.curation import Reject
from pipelines.errors import InputError
from pipelines.io.text import read_text

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
    warnings: list[str] = field(default_factory=list)  # the file was used with a caveat (reprojected, decoded as Latin-1...)


TagFilter = Callable[[Mapping[str, str]], bool]


class OSMFileError(InputError):
    """The OSM file as a whole cannot be used (corrupt, truncated, not OSM or GeoJSON, no features, unknown CRS).

    The message starts with the file's name and ends with its folder: a long path folded across
    lines by a terminal then still shows the name whole.
    """

    def __init__(self, path: Path | str, problem: str):
        path = Path(path)
        super().__init__(f"{path.name}: {problem} (in {path.parent})")
        self.path = path


def osm_format(path: Path) -> str:
    """'osm' (pyosmium) or 'geojson' from the file name; ValueError for anything else."""
    name = path.name.lower()
    if name.endswith(GEOJSON_SUFFIXES):
        return "geojson"
    if name.endswith(OSM_SUFFIXES):
        return "osm"
    raise ValueError(f"unknown OSM file type {path.name!r}; expected one of {', '.join(OSM_SUFFIXES + GEOJSON_SUFFIXES)}")


def read_features(path: Path, keep: TagFilter | None = None) -> ReadResult:
    """All tagged features of `path`; `keep(tags)` drops uninteresting ones before any geometry is built.

    Raises InputError, naming the file, when the file cannot be read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OSM file not found: {path}")
    if path.stat().st_size == 0:
        raise OSMFileError(path, "empty file")
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
    """Tagged nodes, ways and multipolygon/boundary relations of an OSM file (XML or PBF), through pyosmium.

    osmium's node location index takes positive ids only and fills way geometries in one pass, so a
    file with negative ids (new objects, as JOSM and ogr2osm save them) or with ways before their
    nodes is first copied, sorted and with negative ids moved above the file's positive ones, into a
    temporary PBF; features keep their ids as the file gives them ("way/-5").
    """
    layout = _scan_osm(path)
    if not layout.needs_copy:
        return _read_osm_objects(path, str(path), keep, lambda _type, osm_id: osm_id)
    with tempfile.TemporaryDirectory(prefix="domainfm-osm-") as tmp:
        copy = Path(tmp) / "sorted.osm.pbf"
        _write_sorted_copy(path, copy, layout)
        result = _read_osm_objects(copy, str(path), keep, layout.original_id)
    if layout.negative:
        counts = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(layout.negative.items()))
        result.warnings.append(f"{path}: {counts} with negative ids (new objects not uploaded to OpenStreetMap, as JOSM saves them); "
                               "their ids are local to this file")
    if layout.unsorted:
        result.warnings.append(f"{path}: objects not in OSM order ({layout.unsorted}); read sorted")
    return result


@dataclass
class _Layout:
    """What a first pass over an OSM file found: negative ids, objects out of order, the largest positive id per type."""

    negative: Counter = field(default_factory=Counter)  # object type -> objects with a negative id
    unsorted: str = ""  # e.g. "way 5 before its nodes"
    max_id: dict[str, int] = field(default_factory=lambda: {"n": 0, "w": 0, "r": 0})

    @property
    def needs_copy(self) -> bool:
        """Whether osmium can read the file as it is."""
        return bool(self.negative) or bool(self.unsorted)

    def sorted_id(self, osm_type: str, osm_id: int) -> int:
        """The id in the sorted copy: positive ids unchanged, negative ones above the file's largest."""
        return osm_id if osm_id > 0 else self.max_id[osm_type] - osm_id

    def original_id(self, osm_type: str, osm_id: int) -> int:
        """The file's own id for an id of the sorted copy."""
        top = self.max_id[osm_type]
        return osm_id if osm_id <= top else -(osm_id - top)


_TYPE_NAMES = {"n": "node", "w": "way", "r": "relation"}
_TYPE_RANK = {"n": 0, "w": 1, "r": 2}


def _osm_type(obj: Any) -> str:
    return "n" if obj.is_node() else "w" if obj.is_way() else "r"


def _scan_osm(path: Path) -> _Layout:
    """One pass over the ids: negative ones, and the first object that comes before one of a type osmium expects first."""
    import osmium

    layout = _Layout()
    rank = 0
    for obj in _osm_objects(osmium.FileProcessor(str(path)), path):
        kind = _osm_type(obj)
        if obj.id < 0:
            layout.negative[_TYPE_NAMES[kind]] += 1
        else:
            layout.max_id[kind] = max(layout.max_id[kind], obj.id)
        if _TYPE_RANK[kind] < rank and not layout.unsorted:
            layout.unsorted = f"{_TYPE_NAMES[kind]} {obj.id} after {'ways' if rank == 1 else 'relations'}"
        rank = max(rank, _TYPE_RANK[kind])
    return layout


def _write_sorted_copy(path: Path, copy: Path, layout: _Layout) -> None:
    """Nodes, then ways, then relations of `path`, each sorted by id and with positive ids only, as PBF at `copy`."""
    import osmium
    from osmium.osm import Location, mutable

    undefined = Location().x
    nodes, ways, relations = [], [], []
    for obj in _osm_objects(osmium.FileProcessor(str(path)), path):
        tags = dict(obj.tags)
        if obj.is_node():
            loc = obj.location
            # kept as read, valid or not: the reader rejects invalid locations with the node named
            where = Location() if loc.x == undefined else Location(loc.x / 1e7, loc.y / 1e7)
            nodes.append(mutable.Node(id=layout.sorted_id("n", obj.id), location=where, tags=tags))
        elif obj.is_way():
            refs = [layout.sorted_id("n", n.ref) for n in obj.nodes]
            ways.append(mutable.Way(id=layout.sorted_id("w", obj.id), nodes=refs, tags=tags))
        elif obj.is_relation():
            members = [(m.type, layout.sorted_id(m.type, m.ref), m.role) for m in obj.members]
            relations.append(mutable.Relation(id=layout.sorted_id("r", obj.id), members=members, tags=tags))
    writer = osmium.SimpleWriter(str(copy))
    try:
        for node in sorted(nodes, key=lambda o: o.id):
            writer.add_node(node)
        for way in sorted(ways, key=lambda o: o.id):
            writer.add_way(way)
        for relation in sorted(relations, key=lambda o: o.id):
            writer.add_relation(relation)
    finally:
        writer.close()


def _read_osm_objects(path: Path, source: str, keep: TagFilter | None, original: Callable[[str, int], int]) -> ReadResult:
    """The features of a sorted OSM file with positive ids; `original(type, id)` gives the id to name them by."""
    import osmium
    from osmium.geom import WKBFactory

    wkb = WKBFactory()
    c = _Collector(source, keep)
    # Closed ways with area tags wait for osmium's assembled area; if osmium finds the ring
    # invalid, the way's own coordinates are repaired instead.
    pending_ways: dict[int, tuple[dict[str, str], list[tuple[float, float]]]] = {}
    pending_relations: dict[int, dict[str, str]] = {}

    def way_id(osm_id: int) -> str:
        return f"way/{original('w', osm_id)}"

    def relation_id(osm_id: int) -> str:
        return f"relation/{original('r', osm_id)}"

    processor = osmium.FileProcessor(str(path)).with_locations().with_areas()
    for obj in _osm_objects(processor, Path(source)):
        if obj.is_node():
            tags = dict(obj.tags)
            if c.wanted(tags):
                loc = obj.location
                osm_id = f"node/{original('n', obj.id)}"
                if loc.valid():
                    c.add(osm_id, "node", tags, Point(loc.lon, loc.lat), "point")
                else:
                    c.reject(osm_id, "invalid node location")
        elif obj.is_way():
            tags = dict(obj.tags)
            if not c.wanted(tags):
                continue
            osm_id = way_id(obj.id)
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
                c.add(way_id(obj.orig_id()), "way", tags, _single(geom), "polygon")
            elif obj.orig_id() in pending_relations:
                tags = pending_relations.pop(obj.orig_id())
                try:
                    geom = shapely.from_wkb(wkb.create_multipolygon(obj))
                except RuntimeError:
                    c.reject(relation_id(obj.orig_id()), "invalid multipolygon")
                    continue
                c.add(relation_id(obj.orig_id()), "relation", tags, _single(geom), "polygon")

    for osm_id, (tags, coords) in sorted(pending_ways.items()):
        c.add(way_id(osm_id), "way", tags, Polygon(coords), "polygon")
    for osm_id in sorted(pending_relations):
        # osmium emits no area when members are missing (cut by the extract) or rings do not close
        c.reject(relation_id(osm_id), "multipolygon could not be assembled")
    return c.result


def _osm_objects(processor: Any, path: Path) -> Iterator[Any]:
    """The objects of an osmium FileProcessor; a file osmium cannot parse to its end raises InputError naming it."""
    objects = iter(processor)
    while True:
        try:
            obj = next(objects)
        except StopIteration:
            return
        except RuntimeError as exc:  # libosmium's PBF, XML, bzip2 and gzip errors ("PBF error: unexpected EOF")
            raise OSMFileError(path, f"corrupt or truncated OSM file, or not OSM data ({exc})") from None
        yield obj


def _has_linear_key(tags: Mapping[str, str]) -> bool:
    # highway=pedestrian + area tags, barrier=..., waterway=...: an open way is then a plain line
    return any(k in tags for k in ("highway", "railway", "waterway", "barrier", "power", "natural", "man_made"))


def _single(geom: BaseGeometry) -> BaseGeometry:
    return geom.geoms[0] if isinstance(geom, MultiPolygon) and len(geom.geoms) == 1 else geom


# ---------------------------------------------------------------- GeoJSON


OSM_TYPES = ("node", "way", "relation")
# Properties that say which object a feature is, never tags: ours and overpass-turbo's ("@id"), GDAL's OSM driver's
# ("osm_id", "osm_way_id"), osmtogeojson's ("id", "type"); other "@" keys are overpass-turbo metadata.
_IDENTITY_KEYS = frozenset({"id", "osm_id", "osm_type", "osm_way_id", "@id", "@type"})
_HSTORE_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*"((?:[^"\\]|\\.)*)"')


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _geojson_identity(feature: Mapping[str, Any], props: Mapping[str, Any], index: int) -> tuple[str, str]:
    """("way/123", "way") from whichever convention the file follows; ("feature/<id or index>", "feature") otherwise."""
    if props.get("osm_way_id") not in (None, ""):  # GDAL's multipolygons layer: an area drawn as a closed way
        return f"way/{_id_text(props['osm_way_id'])}", "way"
    raw = next((props[k] for k in ("osm_id", "@id", "id") if props.get(k) not in (None, "")), feature.get("id"))
    osm_type = str(props.get("osm_type") or props.get("@type") or "")
    if not osm_type and str(props.get("type", "")) in OSM_TYPES:  # osmtogeojson's non-flat properties
        osm_type = str(props["type"])
    if not osm_type and "osm_way_id" in props:  # GDAL's multipolygons layer without a way id: a relation
        osm_type = "relation"
    if raw is None:
        return f"feature/{index}", osm_type or "feature"
    raw = _id_text(raw)
    if "/" in raw:  # overpass-turbo style "way/123"
        t, _, n = raw.partition("/")
        return f"{t}/{n}", t
    if osm_type:
        return f"{osm_type}/{raw}", osm_type
    return f"feature/{raw}", "feature"


def _tag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _id_text(value)


def _hstore(text: str) -> dict[str, str]:
    """GDAL's `other_tags` column ('"k"=>"v","k2"=>"v2"') as a dict."""
    def unescape(v: str) -> str:
        return v.replace('\\"', '"').replace("\\\\", "\\")

    return {unescape(k): unescape(v) for k, v in _HSTORE_PAIR.findall(text)}


def _geojson_tags(props: Mapping[str, Any]) -> dict[str, str]:
    """OSM tags from a feature's properties, whatever tool wrote them.

    Flat properties are tags (numbers and booleans written as OSM writes them: 3, yes/no); a nested
    `tags` object (osmtogeojson) and GDAL's `other_tags` hstore text are unpacked; identity keys,
    "@" metadata, nulls and other nested values (osmtogeojson's `meta`, `relations`) are not tags.
    """
    tags: dict[str, str] = {}
    for key, value in props.items():
        key = str(key)
        if key in _IDENTITY_KEYS or key.startswith("@") or value is None:
            continue
        if key == "type" and str(value) in OSM_TYPES:
            continue
        if key == "other_tags" and isinstance(value, str):
            tags.update(_hstore(value))
            continue
        if isinstance(value, (dict, list)):
            continue
        tags[key] = _tag_value(value)
    nested = props.get("tags")
    if isinstance(nested, dict):
        tags.update({str(k): _tag_value(v) for k, v in nested.items() if v is not None and not isinstance(v, (dict, list))})
    return tags


def _rings_closed(geometry: Mapping[str, Any]) -> bool:
    coords = geometry.get("coordinates") or []
    polys = [coords] if geometry.get("type") == "Polygon" else coords
    return all(ring and list(ring[0]) == list(ring[-1]) for poly in polys for ring in poly)


GEOMETRY_KINDS = {"Point": "point", "MultiPoint": "point", "LineString": "line", "MultiLineString": "line",
                  "Polygon": "polygon", "MultiPolygon": "polygon"}
# Names of Web Mercator that PROJ reads as other (deprecated or ESRI) codes; GeoJSON writers of the 2010s used them all.
_WEB_MERCATOR_NAMES = ("900913", "3785", "102100", "102113", "3857")


def _json_document(path: Path) -> tuple[Any, list[str]]:
    """The parsed JSON of `path` and any decoding warning; InputError naming the file when it is not JSON."""
    try:
        decoded = read_text(path)
    except InputError as exc:  # binary content: name the file the way every OSM file error does
        raise OSMFileError(path, str(exc).removeprefix(f"{path}: ")) from None
    text = decoded.text
    try:
        return json.loads(text), decoded.warnings
    except json.JSONDecodeError as exc:
        ends_early = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        hint = "; it ends in the middle of the document: truncated?" if ends_early else ""
        if text.lstrip().startswith("<"):
            hint = "; it looks like XML: OSM XML files are read when named .osm"
        raise OSMFileError(path, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}){hint}") from None


def _geojson_feature_list(data: Any, path: Path) -> tuple[list[Any], list[str]]:
    """The features of a GeoJSON document (and warnings); InputError for a document that holds none."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        if "features" not in data:
            raise OSMFileError(path, "FeatureCollection has no 'features' member")
        if not isinstance(data["features"], list):
            raise OSMFileError(path, f"FeatureCollection has no 'features' list ('features' is a {type(data['features']).__name__})")
        return data["features"], []
    if kind == "Feature":
        return [data], []
    if isinstance(data, list) and any(isinstance(f, dict) and f.get("type") == "Feature" for f in data):
        # what some scripts write (a dump of the features); the content is unambiguous
        return data, [f"{path}: top level is a list of features ({len(data)}), not a FeatureCollection; read as one"]
    if kind in GEOMETRY_KINDS or kind == "GeometryCollection":
        raise OSMFileError(path, f"a bare {kind} geometry has no properties to caption; give a FeatureCollection of tagged Features")
    if isinstance(data, dict) and "elements" in data:
        raise OSMFileError(path, "not a GeoJSON FeatureCollection but Overpass JSON ('elements'); export the query as GeoJSON or .osm")
    what = f"type {kind!r}" if kind else (f"keys {sorted(data)[:5]}" if isinstance(data, dict) else f"a JSON {type(data).__name__}")
    raise OSMFileError(path, f"not a GeoJSON FeatureCollection or Feature ({what})")


def _declared_crs(data: Any, path: Path) -> tuple[Any, str] | None:
    """The CRS a legacy GeoJSON `crs` member names and the member's name for it; None for lon/lat (none, EPSG:4326, CRS84)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    member = data.get("crs") if isinstance(data, dict) else None
    if not member:
        return None
    props = member.get("properties") if isinstance(member, dict) else None
    props = props if isinstance(props, dict) else {}
    name = props.get("name") or (f"EPSG:{props['code']}" if "code" in props else None)
    if not name:
        raise OSMFileError(path, f"the 'crs' member names no CRS ({json.dumps(member)[:120]}); only named CRSs are supported")
    name = str(name)
    if name.rstrip(":").split(":")[-1] in _WEB_MERCATOR_NAMES:
        return CRS.from_epsg(3857), name
    try:
        crs = CRS.from_user_input(name)
    except CRSError:
        raise OSMFileError(path, f"unknown CRS {name!r} in the 'crs' member") from None
    if crs.to_epsg() == 4326 or "CRS84" in crs.to_string().upper():
        return None
    return crs, name


def _in_lonlat_range(geom: BaseGeometry) -> bool:
    coords = shapely.get_coordinates(geom)
    return bool(((np.abs(coords[:, 0]) <= 180) & (np.abs(coords[:, 1]) <= 90)).all())


def read_geojson(path: Path, keep: TagFilter | None = None) -> ReadResult:
    """The features of a GeoJSON FeatureCollection (or single Feature, or bare list of Features); properties are the tags.

    Raises InputError, naming the file, when it is not JSON, holds no features, names an unknown
    CRS, or has every coordinate outside the lon/lat range without naming a CRS.
    """
    from rasterio.warp import transform_geom

    data, warnings = _json_document(path)
    features, more = _geojson_feature_list(data, path)
    warnings += more
    declared = _declared_crs(data, path)
    if declared is not None:
        crs, name = declared
        resolved = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_string()
        warnings.append(f"{path}: legacy 'crs' member {name!r} read as {resolved}; coordinates reprojected to EPSG:4326 lon/lat")
    c = _Collector(str(path), keep)
    c.result.warnings.extend(warnings)
    outside: list[str] = []  # features whose coordinates are not lon/lat
    for i, feat in enumerate(features):
        if not isinstance(feat, dict) or feat.get("type", "Feature") != "Feature":
            c.reject(f"feature/{i}", "not a GeoJSON Feature")
            continue
        props = feat.get("properties") or {}
        osm_id, osm_type = _geojson_identity(feat, props if isinstance(props, dict) else {}, i)
        if not isinstance(props, dict):
            c.reject(osm_id, "properties is not an object")
            continue
        tags = _geojson_tags(props)
        if not c.wanted(tags):
            continue
        geometry = feat.get("geometry")
        if not geometry:
            c.reject(osm_id, "missing geometry")
            continue
        gtype = geometry.get("type") if isinstance(geometry, dict) else None
        if gtype not in GEOMETRY_KINDS:
            c.reject(osm_id, "unsupported geometry type")
            continue
        try:
            if gtype in ("Polygon", "MultiPolygon") and not _rings_closed(geometry):
                c.reject(osm_id, "unclosed polygon ring")
                continue
            geom = shape(geometry)
            if not geom.is_empty and not np.isfinite(shapely.get_coordinates(geom)).all():
                c.reject(osm_id, "non-finite coordinates")
                continue
            if declared is not None and not geom.is_empty:
                geom = shape(transform_geom(declared[0], "EPSG:4326", mapping(geom)))
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, shapely.errors.ShapelyError):
            c.reject(osm_id, "unparseable geometry")
            continue
        if not geom.is_empty and not _in_lonlat_range(geom):
            outside.append(osm_id)
            c.reject(osm_id, "coordinates outside the lon/lat range")
            continue
        kind = GEOMETRY_KINDS[gtype]
        if kind == "line" and not geom.is_empty and geom.length == 0:
            c.reject(osm_id, "degenerate line")
            continue
        c.add(osm_id, osm_type, tags, geom, kind)
    if outside and not c.result.features and declared is None:
        raise OSMFileError(
            path, f"coordinates are outside the lon/lat range ({len(outside)} features, e.g. {outside[0]}) and the file names no "
            "CRS; GeoJSON is read as EPSG:4326 lon/lat: reproject it, or name its CRS in a 'crs' member"
        )
    return c.result
