"""`domainfm map pathology` and `domainfm search pathology`: an exported model at work on whole-slide images.

- `map_slide`: every tissue tile of a slide scored zero-shot against class names; written as a
  tile table (parquet), a heatmap over the slide thumbnail (PNG), tile objects QuPath imports
  (GeoJSON) and a slide-level prediction by top-k pooling (JSON).
- `search_slides`: the tissue tiles of a folder of slides that best match a text query, as a table
  and a contact sheet; tile embeddings are cached per (model, slide, tiling), so the next query over
  the same slides only embeds the query.

Tiles are the curation's (`analyst_tiles`): the tissue mask, the slide's MPP, the pyramid level
nearest the target resolution. Reading runs ahead in reader threads and the model scores whole
batches (`pipelines.infer`), on the GPU when there is one.

```python
from domains.pathology.analyst import map_slide, search_slides
result = map_slide("exports/pathology", "CMU-1.svs", "maps/")
result.prediction, result.probabilities  # slide-level class and softmax over classes
```
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import numpy as np
import typer

from domains.pathology.analyst_render import DISPLAY_PX, class_colours, display_view, heatmap_png, tiles_geojson
from domains.pathology.analyst_tiles import (
    SlideReadError,
    SlideTiling,
    TileReader,
    find_tissue_tiles,
    open_slide,
    read_thumbnail,
    slide_geometry,
)
from domains.pathology.curation.slides import REASON_READ_FAILED, SLIDE_SUFFIXES, find_slides
from domains.pathology.prompts import CLASSNAMES, TEMPLATES
from pipelines.errors import InputError
from pipelines.infer import outputs
from pipelines.infer.cache import CACHE_HELP, EmbeddingCache
from pipelines.infer.device import PRECISION_HELP, Precision
from pipelines.infer.hubness import CORRECTION_HELP, Correction, check_bank, describe, search_scores
from pipelines.infer.sheets import contact_sheet

if TYPE_CHECKING:
    from pipelines.infer.clip import ClipEncoder

# Columns of the tile table besides one probability column per class (class names may not take them).
TILE_COLUMNS = ("x", "y", "size", "tissue_fraction", "class")
POOLING = ("per class, the mean of its k highest tile logits (scaled cosine similarity, before the softmax), "
           "as MI-Zero/CONCH top-k pooling; predicted class = argmax, probabilities = softmax over classes")
# In embedding cache keys: bump when the tiling or the records change (v2: tissue fractions unrounded, as the map's table has them).
TILING_VERSION = "pathology-tissue-tiles-v2"
VIEW_PICTURE = f"heatmap-view-{DISPLAY_PX}px"  # the map's picture of a slide, as the embedding cache keeps it


# ---------------------------------------------------------------- results


@dataclass
class SlideMap:
    """What `map_slide` wrote, and the slide-level prediction."""

    slide: Path
    tiles: Path  # <stem>.tiles.parquet: x, y, size (level-0 px), tissue_fraction, class, one probability column per class
    heatmap: Path  # <stem>.heatmap.png
    geojson: Path  # <stem>.geojson (QuPath tile objects)
    summary: Path  # <stem>.json
    classnames: list[str]
    prediction: str  # slide-level class (top-k pooling)
    probabilities: dict[str, float]  # slide-level softmax over classes
    n_tiles: int  # tissue tiles scored
    n_grid: int  # grid cells over the whole slide
    top_k: int  # tiles pooled per class (the requested k capped at n_tiles)
    seconds: float  # the tissue mask, reading and scoring the tiles
    tiles_per_second: float
    cached: bool = False  # the tiles and their embeddings came from the embedding cache (no tile read)


@dataclass
class SlideSearch:
    """What `search_slides` wrote, and the best matches."""

    query: str
    results: Path  # search.parquet: rank, slide, path, x, y, size (level-0 px), score
    contact_sheet: Path  # search.png
    summary: Path  # search.json
    n_slides: int
    n_tiles: int  # tissue tiles searched, all slides together
    cached_slides: int  # slides whose tile embeddings came from the cache
    best: list[dict[str, Any]] = field(default_factory=list)  # the rows of search.parquet
    skipped: list[str] = field(default_factory=list)  # slides left out, each with why (no tissue)
    seconds: float = 0.0


# ---------------------------------------------------------------- inputs


def read_classnames(classes: str | Sequence[str] | None = None, classes_file: Path | None = None) -> list[str]:
    """Class names from "a,b,c" (or a list), or a file with one per line; the pathology CLASSNAMES when neither is given."""
    return outputs.read_classnames(classes, classes_file, CLASSNAMES)


def read_templates(templates_file: Path | None = None) -> list[str]:
    """Prompt templates ("{c}" stands for the class name), one per line; the pathology TEMPLATES when no file is given."""
    return outputs.read_templates(templates_file, TEMPLATES)


load_encoder = outputs.load_encoder
publish = outputs.publish
_json_bytes = outputs.json_bytes


# ---------------------------------------------------------------- scoring


def embed_tiles(encoder: ClipEncoder, tiling: SlideTiling, batch_size: int = 64, workers: int = 2, slide: Any = None) -> np.ndarray:
    """L2-normalised embeddings (n tiles, embed_dim) of a planned slide's tissue tiles, in `tiling.tiles` order.

    Tiles are read by `workers` threads (`embed_windows`: on a CPU the model threads), through `slide`
    (the caller's open OpenSlide handle) when given, else each with a handle of its own, and embedded
    `batch_size` at a time; a region openslide cannot decode is an InputError naming the slide.
    """
    from pipelines.infer.stream import embed_windows  # here: torch and open_clip are imported when a model runs, not for --help

    windows = [(x, y) for x, y, _ in tiling.tiles]
    if not windows:
        return np.zeros((0, encoder.embed_dim), np.float32)
    workers = max(0, min(workers, -(-len(windows) // batch_size)))  # no idle reader threads for a small slide
    chunks = []
    try:
        for batch in embed_windows(windows, TileReader.of(tiling, slide), encoder.to_tensor, encoder.embed_tensors,
                                   batch_size=batch_size, workers=workers, desc=tiling.path.name,
                                   to_batch=encoder.to_batch, device=encoder.device):
            chunks.append(batch.embeddings)
    except SlideReadError:
        raise InputError(f"{tiling.path}: {REASON_READ_FAILED}") from None
    return np.concatenate(chunks).astype(np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def topk_pool(logits: np.ndarray, k: int) -> np.ndarray:
    """Per class, the mean of its `k` highest tile logits (MI-Zero's top-k pooling); k is capped at the tile count.

    `logits` is (n tiles, n classes); the result is (n classes,): its argmax is the slide's class and
    its softmax the slide's class probabilities.
    """
    k = max(1, min(int(k), len(logits)))
    return np.sort(logits, axis=0)[-k:].mean(axis=0)


# ---------------------------------------------------------------- map


def map_settings(classes: Sequence[str] | None, templates: Sequence[str] | None, heatmap: str, top_k: int, batch_size: int,
                 workers: int) -> tuple[list[str], list[str]]:
    """`map_slide`'s checks of what is not the slide: (class names, templates); InputError naming the setting."""
    classnames = read_classnames(classes)
    templates = outputs.checked_templates(templates, TEMPLATES)
    clash = sorted(set(classnames) & set(TILE_COLUMNS))
    if clash:
        raise InputError(f"class name {clash[0]!r} is taken by a column of the tile table ({', '.join(TILE_COLUMNS)})")
    if heatmap != "argmax" and heatmap not in classnames:
        raise InputError(f"--heatmap {heatmap!r}: not 'argmax' nor one of the classes ({', '.join(classnames)})")
    if top_k < 1 or batch_size < 1 or workers < 0:
        raise InputError(f"settings out of range: top k={top_k} (>= 1), batch size={batch_size} (>= 1), workers={workers} (>= 0)")
    return classnames, templates


def map_slide(model: str | Path | ClipEncoder, slide: str | Path, out: str | Path, classes: Sequence[str] | None = None,
              templates: Sequence[str] | None = None, mpp: float = 0.5, tile_size: int = 224, top_k: int = 50,
              batch_size: int = 64, workers: int = 2, slide_mpp: float | None = None, min_tissue: float = 0.5,
              heatmap: str = "argmax", device: str = "auto", cache: str | Path | None = None, precision: Precision = "auto") -> SlideMap:
    """Score every tissue tile of a slide zero-shot against class names; write the tile table, heatmap, GeoJSON and slide JSON.

    Args:
        model: an exported open_clip model folder (`exports/pathology`), or a loaded ClipEncoder.
        slide: a whole-slide image openslide reads (.svs, .tiff, .ndpi, ...).
        out: the folder that receives `<stem>.tiles.parquet`, `<stem>.heatmap.png`, `<stem>.geojson`
            and `<stem>.json` (other files in it are left alone).
        classes: class names (default: the pathology demo's CLASSNAMES).
        templates: prompt templates with "{c}" for the class name (default: the pathology TEMPLATES).
        mpp: micrometres per pixel of the tiles the model sees.
        tile_size: tile side in pixels at `mpp` (tiles do not overlap).
        top_k: tiles pooled per class for the slide-level prediction (capped at the tissue tile count).
        batch_size: the most tiles per model batch (batches of about one size: pipelines.infer.stream.batch_spans).
        workers: threads reading tiles ahead of the model on a GPU (on a CPU the model threads read;
            0 reads in the calling thread).
        slide_mpp: level-0 micrometres per pixel for slides that record neither MPP nor objective power.
        min_tissue: a grid cell is a tissue tile when at least this fraction of it is tissue.
        heatmap: "argmax" (colour of the most probable class) or a class name (its probability).
        device: "auto" (the GPU when there is one), "cpu" or "cuda".
        cache: embedding cache folder (default $DOMAINFM_CACHE/embeddings, else ~/.cache/domainfm/embeddings),
            shared with `search_slides`: a slide mapped before with the same model and tiling is not
            read again (a new class list, say, costs its prompts and the outputs: the heatmap's picture
            of the slide is kept too); one only searched before has its thumbnail read once, no tile.
        precision: "auto" (bf16 where the device computes it natively), "bf16" or "fp32"
            (pipelines.infer.device); ignored for a loaded ClipEncoder, which has its own.

    Returns:
        The paths written and the slide-level prediction.

    Raises:
        InputError: naming the input, for a slide openslide cannot open or read, a slide of unknown
            resolution (without `slide_mpp`), a slide without tissue, a folder that is not an open_clip
            export (e.g. the CT volume model), an empty or repeated class list, or bad settings.
            Nothing is written then.
    """
    started_total = time.perf_counter()
    slide, out = Path(slide), Path(out)
    classnames, templates = map_settings(classes, templates, heatmap, top_k, batch_size, workers)
    encoder = load_encoder(model, device, precision)
    classifier = encoder.zero_shot(classnames, templates)

    started = time.perf_counter()
    tiling, embeddings, cached = tile_embeddings(encoder, slide, EmbeddingCache(cache), mpp, tile_size, slide_mpp, min_tissue,
                                                 batch_size, workers, view=True)
    if not tiling.n_grid:
        raise InputError(f"{slide}: smaller than one tile ({tile_size}px at {mpp} um/px = {tiling.size0:.0f} level-0 px)")
    if not tiling.tiles:
        raise InputError(f"{slide}: no tissue found (no {tile_size}px tile at {mpp} um/px is {min_tissue:.0%} tissue)")
    logits = embeddings @ classifier.weights.numpy() * classifier.logit_scale
    seconds = time.perf_counter() - started
    probabilities = softmax(logits, axis=1)
    k = min(top_k, len(logits))
    pooled = topk_pool(logits, k)
    slide_probabilities = softmax(pooled)
    prediction = classnames[int(pooled.argmax())]

    xs = np.array([t[0] for t in tiling.tiles], np.int64)
    ys = np.array([t[1] for t in tiling.tiles], np.int64)
    stem = slide.stem
    best = probabilities.argmax(axis=1)
    counts = np.bincount(best, minlength=len(classnames))
    colours = class_colours(len(classnames))
    summary = {
        "slide": str(slide),
        "model": str(model),  # the export's folder, also for a ClipEncoder loaded from one
        "model_fingerprint": encoder.fingerprint,
        "classes": classnames,
        "class_colours": {name: list(c) for name, c in zip(classnames, colours)},
        "templates": templates,
        "prediction": prediction,
        "probabilities": {name: float(p) for name, p in zip(classnames, slide_probabilities)},
        "pooled_logits": {name: float(v) for name, v in zip(classnames, pooled)},
        "pooling": POOLING,
        "top_k": {"requested": int(top_k), "used": int(k)},
        "tiles": {"tissue": len(tiling.tiles), "grid": tiling.n_grid,
                  "by_class": {name: int(n) for name, n in zip(classnames, counts)}},
        "tiling": {"mpp": mpp, "tile_size": tile_size, "min_tissue": min_tissue, "slide_mpp": tiling.slide_mpp,
                   "slide_mpp_source": tiling.mpp_source, "size_level0": tiling.size0, "level": tiling.level,
                   "level_downsample": tiling.level_downsample, "read_px": tiling.read_px, "upsampling": tiling.upsampling,
                   "dimensions_level0": list(tiling.dimensions)},
        # seconds and tiles_per_second: the tissue mask, reading and scoring the tiles (or their embeddings
        # from the cache: "cached"); total_seconds adds the model and the outputs.
        "run": {"batch_size": batch_size, "workers": workers, "device": str(encoder.device), "precision": encoder.precision,
                "seconds": round(seconds, 3),
                "tiles_per_second": round(len(logits) / max(seconds, 1e-9), 2), "cached": cached, "total_seconds": None},
        "outputs": {"tiles": f"{stem}.tiles.parquet", "heatmap": f"{stem}.heatmap.png", "geojson": f"{stem}.geojson"},
    }
    title = (f"{slide.name}: {len(logits)} tissue tiles ({tile_size} px at {mpp:g} µm/px)\n"
             f"slide-level: {prediction} (p={slide_probabilities.max():.2f}, top-{k} pooling)")

    def write(staging: Path) -> None:
        import pandas as pd

        table = pd.DataFrame({"x": xs, "y": ys, "size": np.full(len(xs), tiling.size0),
                              "tissue_fraction": np.array([t[2] for t in tiling.tiles], np.float32),
                              "class": [classnames[i] for i in best]})
        for i, name in enumerate(classnames):
            table[name] = probabilities[:, i].astype(np.float32)
        table.to_parquet(staging / f"{stem}.tiles.parquet", index=False)
        (staging / f"{stem}.heatmap.png").write_bytes(heatmap_png(
            tiling.thumbnail, tiling.dimensions, xs, ys, tiling.size0, classnames, probabilities, title, tiling.slide_mpp, heatmap))
        (staging / f"{stem}.geojson").write_bytes(_json_bytes(tiles_geojson(xs, ys, tiling.size0, classnames, probabilities), compact=True))
        summary["run"]["total_seconds"] = round(time.perf_counter() - started_total, 3)
        (staging / f"{stem}.json").write_bytes(_json_bytes(summary))

    publish(out, write)
    return SlideMap(slide=slide, tiles=out / f"{stem}.tiles.parquet", heatmap=out / f"{stem}.heatmap.png",
                    geojson=out / f"{stem}.geojson", summary=out / f"{stem}.json", classnames=classnames, prediction=prediction,
                    probabilities=summary["probabilities"], n_tiles=len(logits), n_grid=tiling.n_grid, top_k=k, seconds=seconds,
                    tiles_per_second=summary["run"]["tiles_per_second"], cached=cached)


# ---------------------------------------------------------------- search


def slide_files(slides: str | Path | Sequence[str | Path]) -> list[Path]:
    """The slides of a folder (files with a whole-slide suffix, directly in it), or the given files; InputError when none."""
    if isinstance(slides, (str, Path)):
        folder = Path(slides)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder of slides")
        found = find_slides(folder)
        if not found:
            raise InputError(f"{folder}: no slide files ({', '.join(SLIDE_SUFFIXES)})")
        return found
    found = [Path(p) for p in slides]
    if not found:
        raise InputError("no slides given")
    return found


def tile_embeddings(encoder: ClipEncoder, path: Path, cache: EmbeddingCache, mpp: float = 0.5, tile_size: int = 224,
                    slide_mpp: float | None = None, min_tissue: float = 0.5, batch_size: int = 64, workers: int = 2,
                    view: bool = False) -> tuple[SlideTiling, np.ndarray, bool]:
    """(tiling, tile embeddings, whether they came from the cache) of one slide, cached per (model, slide content, tiling).

    A cache hit of a slide hashed before reads no tile and computes no tissue mask. With `view`, the
    tiling's thumbnail is the heatmap's picture of the slide (`display_view`), kept in the cache
    beside the embeddings, so such a hit reads no thumbnail either (a slide embedded by a search,
    which keeps no picture, is read once for it); without, a hit's tiling may have no thumbnail.
    """
    # The mask's steps after the thumbnail run on one core. Beside them, in threads: the hash of a slide new to
    # the cache (seconds for a large slide), and with `view` the heatmap's picture of the slide, which the map
    # would otherwise make after scoring. A hit (the same content under another name or date) has its tiles
    # from the cache instead.
    with open_slide(path) as slide, ThreadPoolExecutor(max_workers=2, thread_name_prefix="slide-side") as side:
        tiling = slide_geometry(slide, Path(path), mpp, tile_size, slide_mpp, min_tissue)
        settings = {**tiling.settings(), "min_tissue": min_tissue, "tiling": TILING_VERSION}
        known = cache.knows([path])  # hashed before and unchanged since: the key costs no read
        picture: Future[np.ndarray] | None = None
        if known:
            key = cache.key(encoder.embeddings_identity, [path], settings)
        else:
            hashing = side.submit(cache.key, encoder.embeddings_identity, [path], settings)
            picture = _find_tissue_tiles_and_picture(slide, tiling, min_tissue, side if view else None)
            key = hashing.result()
        hit = cache.load(key)
        if hit is not None:
            embeddings, records = hit
            tiling.tiles = [(int(r["x"]), int(r["y"]), float(r["tissue_fraction"])) for r in records]
            if view:
                kept = cache.load_picture(key, VIEW_PICTURE)
                if kept is None:
                    if picture is None:  # a known slide: its thumbnail is read for the picture
                        read_thumbnail(slide, tiling)
                        kept = display_view(tiling.thumbnail)
                    else:
                        kept = picture.result()
                    cache.save_picture(key, VIEW_PICTURE, kept)
                tiling.thumbnail = kept
            return tiling, embeddings, True
        if known:  # a known slide's miss (another model or tiling): its tissue tiles are found now
            picture = _find_tissue_tiles_and_picture(slide, tiling, min_tissue, side if view else None)
        embeddings = embed_tiles(encoder, tiling, batch_size, workers, slide)  # the reader threads share this handle
    cache.save(key, embeddings, [{"x": x, "y": y, "tissue_fraction": f} for x, y, f in tiling.tiles])
    if picture is not None:
        tiling.thumbnail = picture.result()
        cache.save_picture(key, VIEW_PICTURE, tiling.thumbnail)  # a re-map (other classes) draws on it without a read
    return tiling, embeddings, False


def _find_tissue_tiles_and_picture(slide: Any, tiling: SlideTiling, min_tissue: float,
                                   side: ThreadPoolExecutor | None) -> Future[np.ndarray] | None:
    """`find_tissue_tiles`; with `side`, the heatmap's picture of the slide (`display_view`) is made there meanwhile."""
    read_thumbnail(slide, tiling)
    picture = side.submit(display_view, tiling.thumbnail) if side is not None else None
    find_tissue_tiles(slide, tiling, min_tissue)
    return picture


def search_slides(model: str | Path | ClipEncoder, slides: str | Path | Sequence[str | Path], query: str, out: str | Path,
                  top_k: int = 20, mpp: float = 0.5, tile_size: int = 224, slide_mpp: float | None = None, min_tissue: float = 0.5,
                  batch_size: int = 64, workers: int = 2, cache: str | Path | None = None, device: str = "auto",
                  skip_unreadable: bool = False, correction: Correction = "none", precision: Precision = "auto") -> SlideSearch:
    """The tissue tiles of the slides that best match a text query, by cosine similarity; writes a table and a contact sheet.

    Args:
        model: an exported open_clip model folder, or a loaded ClipEncoder.
        slides: a folder of slides (files with a whole-slide suffix directly in it), or a list of slide files.
        query: free text, e.g. "tumour cells with mitoses" (embedded as is, without templates).
        out: the folder that receives `search.parquet`, `search.png` and `search.json`.
        top_k: how many tiles to keep, all slides together.
        mpp: micrometres per pixel of the tiles.
        tile_size: tile side in pixels at `mpp`.
        slide_mpp: level-0 micrometres per pixel for slides that record no resolution.
        min_tissue: a grid cell is a tissue tile when at least this fraction of it is tissue.
        batch_size: the most tiles per model batch (batches of about one size: pipelines.infer.stream.batch_spans).
        workers: threads reading tiles ahead of the model on a GPU (on a CPU the model threads read; 0: none).
        cache: embedding cache folder (default $DOMAINFM_CACHE/embeddings, else ~/.cache/domainfm/embeddings); a slide already
            embedded by the same model and tiling is not read again.
        device: "auto", "cpu" or "cuda".
        skip_unreadable: leave out (and list in `skipped`) the slides that cannot be used (openslide
            cannot open or read them, unknown resolution) instead of stopping at the first.
        correction: "none" ranks by cosine similarity; "qb_norm" or "db_norm" rescore it against the
            hubness bank the export ships (pipelines/infer/hubness.py), so tiles near every caption
            (hubs) stop crowding the top.
        precision: "auto" (bf16 where the device computes it natively), "bf16" or "fp32"
            (pipelines.infer.device); ignored for a loaded ClipEncoder, which has its own.

    Returns:
        The paths written and the best matches.

    Raises:
        InputError: naming the input, for an empty query, a folder without slides, a slide openslide
            cannot open or read or of unknown resolution (unless `skip_unreadable`), a model folder that
            is not an open_clip export, or when no slide has tissue. Nothing is written then. Slides
            without tissue are skipped (listed in `skipped` and search.json) as long as one slide has some.
    """
    started = time.perf_counter()
    out = Path(out)
    if not query or not query.strip():
        raise InputError("empty --query: say what to look for, e.g. --query 'tumour cells with mitoses'")
    if top_k < 1 or batch_size < 1 or workers < 0:
        raise InputError(f"settings out of range: top k={top_k} (>= 1), batch size={batch_size} (>= 1), workers={workers} (>= 0)")
    paths = slide_files(slides)
    encoder = load_encoder(model, device, precision)
    bank = encoder.hubness_bank()
    check_bank(correction, bank, str(encoder.folder))
    embedding_cache = EmbeddingCache(Path(cache) if cache is not None else None)

    tilings: list[SlideTiling] = []
    per_slide: list[np.ndarray] = []
    cached, skipped, listing = 0, [], []
    for path in paths:
        try:
            tiling, embeddings, hit = tile_embeddings(encoder, path, embedding_cache, mpp, tile_size, slide_mpp, min_tissue,
                                                      batch_size, workers)
        except InputError as exc:
            if not skip_unreadable:
                raise InputError(f"{exc} (--skip-unreadable leaves such slides out)") from None
            skipped.append(str(exc))
            listing.append({"slide": str(path), "tissue_tiles": 0, "cached": False, "skipped": str(exc)})
            continue
        cached += hit
        listing.append({"slide": str(path), "tissue_tiles": len(tiling.tiles), "cached": hit})
        if not tiling.tiles:
            skipped.append(f"{path}: no tissue found")
            continue
        tilings.append(tiling)
        per_slide.append(embeddings)
    if not tilings:
        raise InputError(f"no tissue found in any of the {len(paths)} slides ({'; '.join(skipped[:5])})")

    text = encoder.embed_texts([query.strip()])[0]
    owner = np.concatenate([np.full(len(e), i) for i, e in enumerate(per_slide)])
    index = np.concatenate([np.arange(len(e)) for e in per_slide])
    flat = search_scores(text, np.concatenate(per_slide), correction, bank, str(encoder.folder))
    order = np.argsort(-flat, kind="stable")[:top_k]
    rows = []
    for rank, j in enumerate(order, start=1):
        tiling = tilings[owner[j]]
        x, y, _ = tiling.tiles[index[j]]
        rows.append({"rank": rank, "slide": tiling.path.name, "path": str(tiling.path), "x": int(x), "y": int(y),
                     "size": float(tiling.size0), "score": float(flat[j])})
    summary = {"query": query.strip(), "model_fingerprint": encoder.fingerprint, "precision": encoder.precision, "top_k": int(top_k),
               "score": describe(correction, bank),
               "tiling": {"mpp": mpp, "tile_size": tile_size, "min_tissue": min_tissue, "slide_mpp": slide_mpp},
               "slides": listing, "skipped": skipped, "tissue_tiles": int(len(flat)), "cached_slides": int(cached),
               "cache": str(embedding_cache.folder), "best": rows}

    def write(staging: Path) -> None:
        import pandas as pd

        pd.DataFrame(rows, columns=["rank", "slide", "path", "x", "y", "size", "score"]).to_parquet(staging / "search.parquet", index=False)
        images = []
        for row in rows:
            tiling = tilings[owner[order[row["rank"] - 1]]]
            reader = TileReader.of(tiling)
            try:
                images.append(reader((row["x"], row["y"])))
            except SlideReadError:
                raise InputError(f"{tiling.path}: {REASON_READ_FAILED}") from None
            finally:
                reader.close()
        labels = [f"{r['rank']}. {Path(r['slide']).stem[:14]} {r['score']:.3f}" for r in rows]
        contact_sheet(images, labels, staging / "search.png",
                      title=f"\"{query.strip()}\": best {len(rows)} of {len(flat)} tissue tiles in {len(tilings)} slides")
        summary["seconds"] = round(time.perf_counter() - started, 3)
        (staging / "search.json").write_bytes(_json_bytes(summary))

    publish(out, write)
    return SlideSearch(query=query.strip(), results=out / "search.parquet", contact_sheet=out / "search.png",
                       summary=out / "search.json", n_slides=len(paths), n_tiles=int(len(flat)), cached_slides=int(cached),
                       best=rows, skipped=skipped, seconds=summary["seconds"])


# ---------------------------------------------------------------- commands


def map_command(
    model: Annotated[Path, typer.Option(help="Exported pathology model folder (`domainfm export`), e.g. exports/pathology.")],
    slide: Annotated[list[Path], typer.Option(help="Whole-slide image openslide reads (.svs, .tiff, .ndpi, .mrxs, ...), or a "
                                              "folder of them; repeat for more. One process maps them all (the model loaded once).")],
    out: Annotated[Path, typer.Option(help="Output folder: per slide <stem>.tiles.parquet, .heatmap.png, .geojson (QuPath), .json.")],
    classes: Annotated[Optional[str], typer.Option(help="Class names, comma-separated (default: the pathology demo's).")] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    templates_file: Annotated[Optional[Path], typer.Option(help="Prompt templates, one per line, {c} = class name.")] = None,
    mpp: Annotated[float, typer.Option(help="Micrometres per pixel of the tiles.")] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels at --mpp.")] = 224,
    top_k: Annotated[int, typer.Option(help="Tiles pooled per class for the slide-level prediction.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Tiles per model batch.")] = 64,
    workers: Annotated[int, typer.Option(help="Reader threads on a GPU (0: none; on a CPU the model threads read).")] = 2,
    slide_mpp: Annotated[Optional[float], typer.Option(help="Level-0 um/px for slides that record no resolution.")] = None,
    min_tissue: Annotated[float, typer.Option(help="Tissue fraction from which a grid cell is a tile.")] = 0.5,
    heatmap: Annotated[str, typer.Option(help="'argmax' (most probable class) or a class name (its probability).")] = "argmax",
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = "auto",
    cache: Annotated[Optional[Path], typer.Option(help=CACHE_HELP)] = None,
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out the slides that cannot be mapped (unreadable, unknown "
                                                  f"resolution, no tissue), listed in OUT/{outputs.SKIPPED_FILE}, instead "
                                                  "of stopping at the first.")] = False,
) -> None:
    """Score every tissue tile of each slide zero-shot: tile table, heatmap, QuPath GeoJSON and a slide-level prediction.

    Slides are mapped in turn, each one's files written whole before the next starts; a slide that
    fails stops the run there, naming it (the slides before it keep their maps, and a rerun takes
    their embeddings from the cache), unless --skip-unreadable (`outputs.run_each`).
    """
    classnames, templates = map_settings(read_classnames(classes, classes_file), read_templates(templates_file), heatmap, top_k,
                                         batch_size, workers)  # before the model loads: a typo is reported at once
    paths = mapped_slides(slide)
    encoder = load_encoder(model, device, precision)  # once for all the slides: its start-up is most of a small slide's map

    def map_one(path: Path) -> None:
        result = map_slide(encoder, path, out, classnames, templates, mpp, tile_size, top_k, batch_size, workers, slide_mpp,
                           min_tissue, heatmap, device, cache)
        p = result.probabilities[result.prediction]
        speed = "embeddings from the cache" if result.cached else f"{result.tiles_per_second:.1f} tiles/s"
        typer.echo(f"{path.name}: {result.n_tiles} tissue tiles of {result.n_grid} grid cells, {speed}; "
                   f"slide-level prediction {result.prediction} (p={p:.2f}, top-{result.top_k} pooling)")
        for written in (result.tiles, result.heatmap, result.geojson, result.summary):
            typer.echo(f"  wrote {written}")

    outputs.run_each(paths, map_one, out, skip_unreadable, typer.echo)


def mapped_slides(given: Sequence[Path]) -> list[Path]:
    """The slides `--slide` names (files, and the slide files directly in folders), in order, each once.

    InputError, before anything is read, naming a missing path, a folder without slides, or two
    slides whose outputs would share a name (the same file stem).
    """
    paths: list[Path] = []
    for item in given:
        item = Path(item)
        if item.is_dir():
            paths += slide_files(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise InputError(f"{item}: no such slide file or folder")
    paths = outputs.each_once(paths)
    outputs.check_output_names(paths, lambda path: path.stem, "{0}.*", "maps", "map")
    return paths


def search_command(
    model: Annotated[Path, typer.Option(help="Exported pathology model folder (`domainfm export`).")],
    slides: Annotated[Path, typer.Option(help="Folder of whole-slide images openslide reads.")],
    query: Annotated[str, typer.Option(help="What to look for, in words.")],
    out: Annotated[Path, typer.Option(help="Output folder: search.parquet, search.png (contact sheet), search.json.")],
    top_k: Annotated[int, typer.Option(help="Best tiles to keep, all slides together.")] = 20,
    mpp: Annotated[float, typer.Option(help="Micrometres per pixel of the tiles.")] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels at --mpp.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Tiles per model batch.")] = 64,
    workers: Annotated[int, typer.Option(help="Reader threads on a GPU (0: none; on a CPU the model threads read).")] = 2,
    slide_mpp: Annotated[Optional[float], typer.Option(help="Level-0 um/px for slides that record no resolution.")] = None,
    min_tissue: Annotated[float, typer.Option(help="Tissue fraction from which a grid cell is a tile.")] = 0.5,
    cache: Annotated[Optional[Path], typer.Option(help=CACHE_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = "auto",
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out slides that cannot be read (listed) instead of stopping.")] = False,
    correction: Annotated[Correction, typer.Option(help=CORRECTION_HELP)] = "none",
) -> None:
    """Find the tissue tiles of a folder of slides that best match a text query (embeddings cached per slide)."""
    result = search_slides(model, slides, query, out, top_k, mpp, tile_size, slide_mpp, min_tissue, batch_size, workers, cache, device,
                           skip_unreadable, correction, precision)
    typer.echo(f"{result.n_tiles} tissue tiles in {result.n_slides - len(result.skipped)} slides "
               f"({result.cached_slides} from the cache) in {result.seconds:.1f} s; best: "
               + (f"{result.best[0]['slide']} x={result.best[0]['x']} y={result.best[0]['y']} ({result.best[0]['score']:.3f})"))
    for note in result.skipped:
        typer.echo(f"  skipped {note}")
    for path in (result.results, result.contact_sheet, result.summary):
        typer.echo(f"  wrote {path}")
