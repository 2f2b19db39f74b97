"""Rasters given to one curation form mosaics: which rasters join one, in which order, and what they are.

Rasters whose lon/lat footprints touch or overlap form one mosaic when they agree in band count,
data type and resolution (within a factor of `MAX_GSD_RATIO`). A tile is then read from every
member it touches (`tiles.read_mosaic_tile`), so an object on a raster edge is curated once, from
all the pixels that cover it. This follows torchgeo's RasterDataset (a footprint index; each file
that intersects a query is warped to the query's CRS and resolution, then the files are merged,
the first one winning), except that the query is the tile's own grid: every member is warped
straight onto it, so each pixel is resampled once, whatever CRS the members are in.

Overlaps: a pixel comes from the first member, in this order, that has data there: members whose
metadata gives an acquisition time first, newest first (`tiles.acquisition_time`), then the
others in input order.

A raster that disagrees with the mosaic it touches gets a rejects row (stage "mosaic") and is
curated apart from it, in a mosaic of its own with any rasters like it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from shapely.strtree import STRtree

from domains.remote_sensing.curation.geometry import lonlat_box
from domains.remote_sensing.curation.tiles import keeps_own_crs
from pipelines.curation import Reject

STAGE_MOSAIC = "mosaic"
MAX_GSD_RATIO = 1.5  # members' pixel sizes may differ this much: 0.25 and 0.3 m join, 2 and 10 m do not
_TOUCH_DEG = 1e-7  # about 1 cm: footprints of adjacent rasters meet within float error


@dataclass
class RasterInfo:
    """One usable raster: where it is, what its pixels are, the bands shown and where it stands in mosaic order."""

    path: str
    bounds_ll: tuple[float, float, float, float]  # west, south, east, north
    identity: str  # size and mtime: a changed raster is curated again
    crs: str
    count: int
    dtypes: tuple[str, ...]
    gsd_m: float  # ground metres per pixel
    bands: list[int]  # 1-based, shown as red, green, blue (or one grey band)
    band_rule: str  # tiles.select_bands' rule: params | description | landsat | colorinterp | default
    acquired: str | None  # ISO time from the file's metadata
    order: int  # position among the rasters given
    valid_area_m2: float = 0.0  # ground with data, from a decimated read

    @property
    def name(self) -> str:
        """The file name."""
        return Path(self.path).name

    @property
    def needs_stretch(self) -> bool:
        """Whether the shown bands are not 8-bit (they are then stretched with the mosaic's limits)."""
        return any(self.dtypes[b - 1] != "uint8" for b in self.bands)

    def describe(self) -> str:
        """e.g. "3 bands uint8, 2 m pixels"."""
        dtypes = "/".join(sorted(set(self.dtypes)))
        return f"{self.count} band{'s' if self.count > 1 else ''} {dtypes}, {self.gsd_m:.3g} m pixels"


def join_problem(raster: RasterInfo, reference: RasterInfo) -> str | None:
    """Why `raster` cannot share a mosaic with `reference`, or None."""
    if raster.count != reference.count:
        return "different band count"
    if raster.dtypes != reference.dtypes:
        return "different data type"
    ratio = max(raster.gsd_m, reference.gsd_m) / min(raster.gsd_m, reference.gsd_m)
    if ratio > MAX_GSD_RATIO:
        return "different resolution"
    return None


def priority(rasters: Sequence[RasterInfo]) -> list[RasterInfo]:
    """Mosaic order: rasters with an acquisition time, newest first, then the rest in input order."""
    by_input = sorted(rasters, key=lambda r: r.order)
    dated = sorted((r for r in by_input if r.acquired), key=lambda r: r.acquired or "", reverse=True)  # stable: ties keep input order
    return dated + [r for r in by_input if not r.acquired]


def connected(rasters: Sequence[RasterInfo]) -> list[list[RasterInfo]]:
    """Groups of rasters whose footprints touch or overlap, directly or through others (input order within and between groups)."""
    boxes = [lonlat_box(*r.bounds_ll).buffer(_TOUCH_DEG) for r in rasters]
    tree = STRtree(boxes)
    parent = list(range(len(rasters)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, b in enumerate(boxes):
        for j in tree.query(b, predicate="intersects"):
            a, c = root(i), root(int(j))
            if a != c:
                parent[max(a, c)] = min(a, c)
    groups: dict[int, list[RasterInfo]] = {}
    for i, r in enumerate(rasters):
        groups.setdefault(root(i), []).append(r)
    return [sorted(g, key=lambda r: r.order) for _, g in sorted(groups.items())]


@dataclass
class Mosaic:
    """Rasters curated as one image, in priority order."""

    members: list[RasterInfo] = field(default_factory=list)

    @property
    def gsd_m(self) -> float:
        """The coarsest member's pixel size: tiles are never finer than any member."""
        return max(m.gsd_m for m in self.members)

    @property
    def tile_crs(self) -> str | None:
        """The members' CRS when they share one that tiles can be cut in (tiles.keeps_own_crs), else None (UTM per tile)."""
        from rasterio.crs import CRS

        crss = {m.crs for m in self.members}
        if len(crss) == 1 and keeps_own_crs(CRS.from_user_input(next(iter(crss)))):
            return next(iter(crss))
        return None

    @property
    def name(self) -> str:
        """The first member's name, and how many more there are."""
        more = len(self.members) - 1
        return self.members[0].name + (f" and {more} more" if more else "")


def group_mosaics(rasters: Sequence[RasterInfo]) -> tuple[list[Mosaic], list[Reject]]:
    """The mosaics of a run, and a rejects row for each raster that could not join the one it touches.

    Within touching rasters, the mosaic is the largest set that agrees with one member (ties: the
    member first in priority order); the others are grouped again among themselves.
    """
    rejects: list[Reject] = []
    refused: set[str] = set()

    def split(members: Sequence[RasterInfo]) -> list[Mosaic]:
        found = []
        for group in connected(members):
            ordered = priority(group)
            agreeing = [sum(join_problem(m, r) is None for m in ordered) for r in ordered]
            reference = ordered[agreeing.index(max(agreeing))]
            joined = [m for m in ordered if join_problem(m, reference) is None]
            apart = [m for m in group if join_problem(m, reference) is not None]
            found.append(Mosaic(joined))
            for m in apart:
                if m.path not in refused:
                    refused.add(m.path)
                    rejects.append(Reject(f"{m.path} ({m.describe()}; mosaic of {reference.name}: {reference.describe()})",
                                          STAGE_MOSAIC, f"cannot join the mosaic ({join_problem(m, reference)}); curated apart from it"))
            if apart:
                found.extend(split(apart))
        return found

    mosaics = split(list(rasters))
    return sorted(mosaics, key=lambda m: min(r.order for r in m.members)), rejects
