"""Leak-free splits: groups never straddle splits, and evaluation tiles share no ground with train tiles."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from shapely.geometry import box, mapping, shape

from pipelines.curation.splits import GroupSplitter, SpatialSplitter, _projected, assign_split, equal_area_xy

DEG_PER_M = 1 / 111_320  # near the equator


def tile_rows(n: int = 400, tile_m: float = 512.0, seed: int = 0) -> list[dict]:
    """Overlapping square tiles scattered over a 6 km square near (3E, 0N): many straddle any grid line."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cx, cy = rng.uniform(0, 6000, 2)
        half = tile_m / 2 * DEG_PER_M
        lon, lat = 3 + cx * DEG_PER_M, cy * DEG_PER_M
        rows.append({"id": f"t{i}", "group": "", "footprint": mapping(box(lon - half, lat - half, lon + half, lat + half))})
    return rows


def overlap_m2(rows: list[dict]) -> float:
    """Area shared by train footprints and val/test footprints."""
    train = [_projected(r["footprint"]) for r in rows if r["split"] == "train"]
    held_out = [_projected(r["footprint"]) for r in rows if r["split"] != "train"]
    return sum(t.intersection(h).area for t, h in itertools.product(train, held_out) if t.intersects(h))


def test_grouping_by_tile_centre_leaks_on_this_layout() -> None:
    # the old rule: groups are 256 m blocks of the tile centre while tiles reach 512 m
    rows = tile_rows()
    for r in rows:
        c = _projected(r["footprint"]).centroid
        r["group"] = f"{math.floor(c.x / 256)}:{math.floor(c.y / 256)}"
    rows, _, _ = GroupSplitter(0.1, 0.2).assign(rows)
    assert overlap_m2(rows) > 1e6  # square kilometres of test ground seen in training


def test_spatial_splits_share_no_ground_and_count_the_buffer() -> None:
    rows = tile_rows()
    kept, rejects, counts = SpatialSplitter(cell_m=2000, val_fraction=0.1, test_fraction=0.2).assign(rows)
    assert {r["split"] for r in kept} == {"train", "val", "test"}
    assert overlap_m2(kept) == 0.0
    dropped = counts["buffer_dropped_val"] + counts["buffer_dropped_test"]
    assert dropped == len(rejects) > 0 and all(r["stage"] == "split" for r in rejects)
    assert not {r["id"] for r in kept} & {x["input"] for x in rejects}
    # every pair of a cell has one split; the group is the cell
    by_group: dict[str, set[str]] = {}
    for r in kept:
        by_group.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())


def test_cells_come_from_lon_lat_so_a_place_has_one_split_in_any_crs() -> None:
    # the same tile described twice (e.g. from a UTM and from a web-mercator raster): same footprint in lon/lat
    tile = mapping(box(3.0, 43.0, 3.006, 43.004))
    again = mapping(shape(tile).simplify(0))
    splitter = SpatialSplitter(cell_m=5000, val_fraction=0.3, test_fraction=0.3)
    a, _, _ = splitter.assign([{"id": "a", "group": "utm", "footprint": tile}])
    b, _, _ = splitter.assign([{"id": "b", "group": "mercator", "footprint": again}])
    assert a[0]["group"] == b[0]["group"] and a[0]["split"] == b[0]["split"]
    x, y = equal_area_xy(3.0, 43.0)
    assert (x, y) == equal_area_xy(3.0, 43.0) and x > 0 and y > 0


def test_cells_must_be_larger_than_tiles() -> None:
    with pytest.raises(ValueError, match="larger than the largest tile"):
        SpatialSplitter(cell_m=300, val_fraction=0.1, test_fraction=0.1).assign(tile_rows(n=5))


def test_patients_never_straddle_splits() -> None:
    # many studies per patient, in an order a row-level split would scatter
    rows = [{"id": f"s{i}", "group": f"patient{i % 37}"} for i in range(500)]
    kept, _, _ = GroupSplitter(0.1, 0.25, seed=3).assign(rows)
    per_patient: dict[str, set[str]] = {}
    for r in kept:
        per_patient.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in per_patient.values())
    assert {s for v in per_patient.values() for s in v} == {"train", "val", "test"}
    assert assign_split("patient3", 0.1, 0.25, 3) == next(iter(per_patient["patient3"]))
