"""Tissue tiles of a whole-slide image for the analyst commands: where they are and how to read them.

The geometry is the curation's (`domains/pathology/curation/slides.py`): the slide's level-0 MPP
(from `openslide.mpp-x/y`, else the objective power, else `--slide-mpp`), the tissue mask on a
low-resolution image, a grid of tiles of `tile_size` pixels at the target MPP laid in level-0
coordinates, and the cells whose tissue fraction is at least `min_tissue`. Tiles are read at the
coarsest pyramid level that is not coarser than the target (never upsampling more than the slide
forces) and resized to `tile_size` unless the read is that size already (`read_size`), as the curation
read its training tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domains.pathology.curation.slides import (
    REASON_NO_MPP,
    REASON_READ_FAILED,
    REASON_UNREADABLE,
    SlideConfig,
    _mask_image,
    _read_level,
    grid_candidates,
    grid_size,
    read_size,
    read_tile,
    slide_mpp,
)
from domains.pathology.curation.tiff_tiles import TiffLevel, TileCache, tiff_level
from domains.pathology.curation.tissue import tissue_mask
from pipelines.errors import InputError

# The tissue mask (and the heatmap's background) as the curation makes it, at its finest size: the curation may
# make it coarser for throughput (mask_px_per_tile), which on real slides passes the same cells or one fewer, but
# loses pale tissue finer than the coarse mask's pixels; mapping one slide can afford the finer mask.
MASK_MAX_DIM = SlideConfig().mask_level_max_dim


class SlideReadError(Exception):
    """OpenSlide failed on a region of a slide that opened (damaged or truncated tiles)."""


@dataclass
class SlideTiling:
    """The tissue tiles of one slide at a target resolution, and how to read them.

    Tiles are squares of `size0` level-0 pixels with their top-left corner at level-0 (x, y); each is
    read as `read_px` pixels at pyramid `level` and resized to `tile_size` (when they differ).
    """

    path: Path
    dimensions: tuple[int, int]  # level-0 width, height
    slide_mpp: float  # level-0 micrometres per pixel
    mpp_source: str  # "mpp", "objective-power" or "--slide-mpp"
    target_mpp: float
    tile_size: int
    size0: float
    level: int
    level_downsample: float
    read_px: int
    n_grid: int  # grid cells over the whole slide, tissue or not
    tiles: list[tuple[int, int, float]] = field(default_factory=list)  # level-0 x, y, mask tissue fraction
    # the tissue mask's RGB image (or the heatmap's smaller view of it: analyst.tile_embeddings), empty until read
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.uint8))

    @property
    def upsampling(self) -> float:
        """How much tiles are enlarged (> 1 only when the slide is coarser than the target MPP)."""
        return max(1.0, self.tile_size / self.read_px)

    def settings(self) -> dict[str, Any]:
        """What shapes the tiles (for embedding cache keys and the JSON summaries)."""
        return {"target_mpp": self.target_mpp, "tile_size": self.tile_size, "slide_mpp": self.slide_mpp,
                "size0": round(self.size0, 4), "level": self.level, "read_px": self.read_px}


def open_slide(path: Path) -> Any:
    """An OpenSlide handle; InputError naming the file when it is missing or openslide cannot open it."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such slide file")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError, OSError):
        raise InputError(f"{path}: {REASON_UNREADABLE} (not a whole-slide image openslide reads, or damaged)") from None


def plan_tiles(path: Path, target_mpp: float = 0.5, tile_size: int = 224, slide_mpp_override: float | None = None,
               min_tissue: float = 0.5, find_tissue: bool = True) -> SlideTiling:
    """The tissue tiles of the slide at `path` (possibly none); InputError naming the slide when it cannot be used.

    Args:
        path: a whole-slide image openslide reads.
        target_mpp: micrometres per pixel of the tiles the model sees.
        tile_size: tile side in pixels at `target_mpp`.
        slide_mpp_override: the slide's level-0 micrometres per pixel, used when the file records
            neither MPP nor objective power (the file's own value wins otherwise).
        min_tissue: a grid cell is a tissue tile when at least this fraction of it is tissue in the mask.
        find_tissue: False skips the tissue mask (the slide's geometry only: `tiles` empty, no thumbnail).
    """
    with open_slide(path) as slide:
        tiling = slide_geometry(slide, Path(path), target_mpp, tile_size, slide_mpp_override, min_tissue)
        if find_tissue:
            find_tissue_tiles(slide, tiling, min_tissue)
        return tiling


def slide_geometry(slide: Any, path: Path, target_mpp: float, tile_size: int, slide_mpp_override: float | None,
                   min_tissue: float) -> SlideTiling:
    """The tiling of an open slide without its tiles (`plan_tiles` with find_tissue=False): resolution, level, grid."""
    if target_mpp <= 0 or tile_size < 8 or not 0 < min_tissue <= 1:
        raise InputError(f"settings out of range: mpp={target_mpp} (> 0), tile size={tile_size} (>= 8), "
                         f"min tissue={min_tissue} (in (0, 1])")
    resolution = slide_mpp(dict(slide.properties))
    if resolution is None and slide_mpp_override:
        resolution = (float(slide_mpp_override), "--slide-mpp")
    if resolution is None:
        raise InputError(f"{path}: {REASON_NO_MPP}; pass --slide-mpp (micrometres per level-0 pixel)")
    mpp0, source = resolution
    downsample = target_mpp / mpp0
    size0 = tile_size * downsample
    level = _read_level(slide, downsample)
    level_ds = float(slide.level_downsamples[level])
    return SlideTiling(path=path, dimensions=tuple(slide.dimensions), slide_mpp=mpp0, mpp_source=source, target_mpp=target_mpp,
                       tile_size=tile_size, size0=size0, level=level, level_downsample=level_ds,
                       read_px=read_size(size0, level_ds), n_grid=math.prod(grid_size(slide.dimensions, size0, size0)))


def read_thumbnail(slide: Any, tiling: SlideTiling) -> None:
    """Fill `tiling.thumbnail`: the tissue mask's RGB image, the heatmap's background; InputError naming the slide on a read error."""
    import openslide

    try:
        tiling.thumbnail = _mask_image(slide, MASK_MAX_DIM)
    except openslide.OpenSlideError:
        raise InputError(f"{tiling.path}: {REASON_READ_FAILED}") from None


def find_tissue_tiles(slide: Any, tiling: SlideTiling, min_tissue: float) -> None:
    """Fill `tiling.tiles` (and its thumbnail, unless read already): the grid cells at least `min_tissue` tissue in the mask."""
    if not tiling.thumbnail.size:
        read_thumbnail(slide, tiling)
    tiling.tiles, tiling.n_grid = grid_candidates(tissue_mask(tiling.thumbnail), slide.dimensions, tiling.size0, tiling.size0,
                                                  min_tissue)


class TileReader:
    """Reads one tile (level-0 x, y) of a slide as `tile_size`^2 RGB; one OpenSlide handle per copy (reader thread).

    Given `slide`, the caller's open handle, the copies share it instead and leave it open: OpenSlide's calls are
    thread-safe (all but close), and opening a slide costs about 15 ms (it hashes the smallest level), per thread.
    A region openslide fails to decode raises SlideReadError (openslide is unusable after an error,
    so the caller stops there).
    """

    def __init__(self, path: Path, level: int, read_px: int, tile_size: int, slide: Any = None) -> None:
        self.path, self.level, self.read_px, self.tile_size = str(path), level, read_px, tile_size
        self._given = slide
        self._slide: Any = slide
        self._tiles: TiffLevel | None = tiff_level(slide, level) if slide is not None else None  # the level's tiles from the file
        self._cache = TileCache()  # shared by the reader threads' copies: neighbouring tiles need the same file tiles

    @classmethod
    def of(cls, tiling: SlideTiling, slide: Any = None) -> TileReader:
        """The reader of a planned slide's tiles (through `slide`, an open handle of the caller's, if given)."""
        return cls(tiling.path, tiling.level, tiling.read_px, tiling.tile_size, slide)

    def __getstate__(self) -> dict[str, Any]:
        if self._given is not None:
            return {**self.__dict__, "_slide": self._given}  # the copies share the caller's handle
        return {**self.__dict__, "_slide": None, "_tiles": None}  # each reader thread (a copy) opens its own handle

    def __call__(self, window: tuple[int, int]) -> np.ndarray:
        """The RGB pixels of the tile whose level-0 top-left corner is `window`."""
        import openslide

        if self._slide is None:
            self._slide = openslide.OpenSlide(self.path)
            self._tiles = tiff_level(self._slide, self.level)
        x, y = int(window[0]), int(window[1])
        try:
            return read_tile(self._slide, x, y, self.level, self.read_px, self.tile_size, self._tiles, self._cache)
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"{self.path}#x{x}-y{y}: {exc}") from None

    def close(self) -> None:
        """Close this copy's own handle (if any; a handle given by the caller stays open)."""
        if self._slide is not None and self._given is None:
            self._slide.close()
            self._slide, self._tiles = None, None
        self._cache.clear()
