"""Train/val/test assignment that cannot leak: by group, and for imagery by ground.

`GroupSplitter` puts every pair of a group (a patient, a video, a slide) in the same split, from a
hash of the group, so a patient never straddles splits.

`SpatialSplitter` is for pairs that cover ground (a `footprint` in lon/lat). Splits go by cells of
an equal-area grid computed from lon/lat, so the same place lands in the same split whatever CRS
its raster was in, and cells are larger than any tile. Tiles near a cell border can still overlap a
tile of the neighbouring cell, so an evaluation tile whose footprint, buffered by `buffer_m` (at
least the largest tile extent), reaches a cell holding pairs of another split is dropped and
counted: no val/test tile then shares ground with a train tile.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SPLITS = ("train", "val", "test")
EVALUATION_SPLITS = ("val", "test")
EARTH_RADIUS_M = 6_371_007.2  # authalic sphere (same area as the WGS84 ellipsoid)
_STANDARD_PARALLEL = math.radians(30.0)  # as EASE-Grid 2.0: cells are square near 30 degrees of latitude


def assign_split(group: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """Deterministic split of a group from a hash: the same group always gets the same split."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class Splitter(Protocol):
    """Assigns `split` to every pair record; may drop pairs (returned with their reasons)."""

    def assign(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]], Counter]:
        """(kept rows with "split" set, rejects rows for dropped pairs, step counts)."""
        ...


@dataclass
class GroupSplitter:
    """Split by a hash of each pair's `group`."""

    val_fraction: float
    test_fraction: float
    seed: int = 0

    def assign(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]], Counter]:
        """Every row gets its group's split; nothing is dropped."""
        for row in rows:
            row["split"] = assign_split(row["group"], self.val_fraction, self.test_fraction, self.seed)
        return rows, [], Counter()


def equal_area_xy(lon: Any, lat: Any) -> tuple[Any, Any]:
    """Metres on a Lambert cylindrical equal-area projection of the authalic sphere (standard parallel 30 deg).

    Works on scalars and numpy arrays alike.
    """
    x = EARTH_RADIUS_M * np.radians(lon) * math.cos(_STANDARD_PARALLEL)
    y = EARTH_RADIUS_M * np.sin(np.radians(lat)) / math.cos(_STANDARD_PARALLEL)
    return x, y


def _projected(footprint: dict[str, Any]) -> Any:
    import shapely
    from shapely.geometry import shape

    return shapely.transform(shape(footprint), lambda xy: np.column_stack(equal_area_xy(xy[:, 0], xy[:, 1])))


@dataclass
class SpatialSplitter:
    """Split pairs by equal-area grid cells of their lon/lat footprint, with a buffer around evaluation tiles.

    A pair's cell is the cell of its footprint's centroid, and becomes its group. `buffer_m` of None
    uses the farthest any footprint reaches from its centroid in this run: a train tile lies within
    that distance of its own cell, so an evaluation tile buffered by it that touches no other
    split's cell cannot overlap a train tile.
    """

    cell_m: float
    val_fraction: float
    test_fraction: float
    seed: int = 0
    buffer_m: float | None = None

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        """The grid cell holding projected point (x, y)."""
        return math.floor(x / self.cell_m), math.floor(y / self.cell_m)

    def assign(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]], Counter]:
        """Cell splits for every row; evaluation rows too close to another split's pairs are dropped."""
        missing = [r["id"] for r in rows if not r.get("footprint")]
        if missing:
            raise ValueError(f"spatial splits need a footprint on every pair; {len(missing)} have none, e.g. {missing[:3]}")
        shapes = [_projected(r["footprint"]) for r in rows]
        extent = max((max(s.bounds[2] - s.bounds[0], s.bounds[3] - s.bounds[1]) for s in shapes), default=0.0)
        if extent >= self.cell_m:
            raise ValueError(f"split cells of {self.cell_m:g} m must be larger than the largest tile ({extent:.0f} m across)")
        reach = max((s.hausdorff_distance(s.centroid) for s in shapes), default=0.0)
        buffer_m = reach if self.buffer_m is None else self.buffer_m
        split_of_cell: dict[tuple[int, int], str] = {}
        occupied: dict[tuple[int, int], set[str]] = defaultdict(set)
        for row, shp in zip(rows, shapes):
            centre = shp.centroid
            cell = self.cell_of(centre.x, centre.y)
            key = f"cell:{cell[0]}:{cell[1]}"
            split_of_cell[cell] = assign_split(key, self.val_fraction, self.test_fraction, self.seed)
            row["group"], row["split"], row["_cell"] = key, split_of_cell[cell], cell
            occupied[cell].add(row["split"])
        kept, rejects, counts = [], [], Counter()
        for row, shp in zip(rows, shapes):
            cell = row.pop("_cell")
            if row["split"] in EVALUATION_SPLITS and self._reaches_other_split(shp.buffer(buffer_m), row["split"], occupied):
                rejects.append({"input": row["id"], "stage": "split", "reason": f"within {buffer_m:.0f} m of another split's tiles"})
                counts[f"buffer_dropped_{row['split']}"] += 1
                continue
            kept.append(row)
        return kept, rejects, counts

    def _reaches_other_split(self, area: Any, split: str, occupied: dict[tuple[int, int], set[str]]) -> bool:
        from shapely.geometry import box

        x0, y0, x1, y1 = area.bounds
        (i0, j0), (i1, j1) = self.cell_of(x0, y0), self.cell_of(x1, y1)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                others = occupied.get((i, j), set()) - {split}
                if others and area.intersects(box(i * self.cell_m, j * self.cell_m, (i + 1) * self.cell_m, (j + 1) * self.cell_m)):
                    return True
        return False
