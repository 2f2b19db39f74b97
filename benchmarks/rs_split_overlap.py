"""Ground shared between train and evaluation tiles of a curated remote-sensing folder.

    python benchmarks/rs_split_overlap.py data/remote_sensing/curated [OTHER_CURATED ...]

For each evaluation split (val, test): how many of its tiles overlap a train tile (by more than
1 m2), and which fraction of its ground (the union of its tiles) train tiles cover, on the
equal-area grid of pipelines/curation/splits.py. Reads the manifest's `footprint` column, or, for
manifests written before it existed, the tile bounds and CRS in each pair's provenance.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import shapely
from shapely.geometry import box, mapping

from pipelines.curation.splits import _projected
from pipelines.io.manifest import read_manifest


def footprint(row: dict) -> dict:
    """The pair's ground as a lon/lat GeoJSON geometry."""
    if row.get("footprint"):
        return row["footprint"]
    from rasterio.warp import transform_geom

    prov = row["provenance"] if isinstance(row["provenance"], dict) else json.loads(row["provenance"])
    return transform_geom(prov["raster_crs"], "EPSG:4326", mapping(box(*prov["tile_bounds"])))


def overlap(curated: Path) -> dict[str, dict[str, float]]:
    """{split: {tiles, overlapping_tiles, ground_fraction_seen_in_train}} for val and test."""
    manifest = read_manifest(curated)
    shapes = {split: [_projected(footprint(r)) for r in rows.to_dict("records")] for split, rows in manifest.groupby("split")}
    train = shapely.union_all(shapes.get("train", []))
    out = {}
    for split in ("val", "test"):
        tiles = shapes.get(split, [])
        ground = shapely.union_all(tiles)
        out[split] = {
            "tiles": len(tiles),
            "overlapping_tiles": sum(t.intersection(train).area > 1.0 for t in tiles),
            "ground_fraction_seen_in_train": round(ground.intersection(train).area / ground.area, 4) if tiles else 0.0,
        }
    return out


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(folder, json.dumps(overlap(Path(folder))))
