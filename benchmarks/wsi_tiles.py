"""Whole-slide tissue tiles per second: our slide tiler next to histolab's and TIAToolbox's, same slide, MPP and tile size.

Each tiler goes from the slide file to the tissue tiles as RGB arrays in memory (nothing written),
`--repeats` times, interleaved in an order rotated each round; the figure is tissue tiles out per second (median). Two real slides,
one after the other: CMU-1-Small-Region (one level, 2220 x 2967 px: issue 16's bar; ours cuts its
tiles from the read its mask needs anyway) and, when present, the TCGA-CR-7395 excerpt (two levels,
4443 x 3567 px, no MPP in the file: `--slide-mpp` is given every tiler; tiles are read from the
slide one by one, ours in raster order by reader threads; no bar):

- ours:       `domains.pathology.curation.slides.process_slide` (tissue mask at low resolution: at most
              mask_level_max_dim px and no finer than mask_px_per_tile px along a tile's side, 847 px
              on CMU-1-Small-Region; grid cells with >= `--tissue` mask tissue, read at the level nearest the MPP,
              resized unless the read is within half a pixel of the tile size (`read_size`: on the
              0.499 um/px CMU slide a tile is read as it is, where the baseline squeezed 225 px into 224),
              each tile checked again: pen ink, tissue, blur), every cell kept
              (max_tiles_per_slide unlimited);
- baseline:   the same function as on main at `--baseline-rev` (read from git), so before and after
              are measured in the same command; skipped when git cannot show it;
- histolab:   `GridTiler(tile_size, level, check_tissue=True, tissue_percent=100 * --tissue)` (the level
              nearest the MPP, within 5%: its `mpp` option needs large_image) over a
              `TissueMask()` (its whole tissue mask, not the default biggest box); its tile generator, as
              `extract` runs it, without writing PNGs;
- TIAToolbox: `SlidingWindowPatchExtractor` (patch size, stride = size, resolution in mpp, Otsu
              tissue mask, `min_mask_ratio` = --tissue); no per-tile check;
- ours with `--mask-dim`: the tissue mask computed on a smaller image (params
              pathology.curate.slides.mask_level_max_dim), a setting that keeps other tiles, reported
              without a bar.

Tissue semantics differ: ours and TIAToolbox keep a cell by the fraction of a low-resolution mask
under it (then ours checks each tile again at full resolution); histolab checks each tile's own
pixels only. The numbers of tiles kept are printed and recorded.

The bar rows count tiles out: ours pays for reading and checking the cells its checks then refuse
(13 of 49 on CMU-1-Small-Region: pen ink), TIAToolbox keeps every cell its mask passes. A second row, without a bar,
counts the cells each reads and delivers or checks per second (ours: cells read; TIAToolbox: its
patches), the same work on both sides up to the per-tile checks.

Usage: python benchmarks/wsi_tiles.py [--slides S ...] [--slide-mpp 0.5] [--mpp 0.5] [--tile-size 224] [--tissue 0.5]
       [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from contract import REALDATA, machine, module_at, write_json

from pipelines.curation import WorkUnit

SLIDE = REALDATA / "histo" / "histolab" / "cmu-1-small-region.svs"
# a real multi-level slide (TCGA excerpt, no MPP in the file): tiles are read from the slide, not cut from one read
MULTI_LEVEL_SLIDE = REALDATA / "histo" / "histolab" / "tcga-cr-7395-01a-01-ts1.svs"
BASELINE_REV = "430160d"  # main before issue 16's changes
BAR = 1.0  # issue 16: tissue tiles per second >= histolab's and TIAToolbox's


def our_tiler(module: Any, slide: Path, mpp: float, size: int, tissue: float, **settings: Any) -> Callable[[], int]:
    """Our slide tiler from `module` (this checkout's or the baseline's): tissue tiles of one slide."""
    cfg = module.SlideConfig(target_mpp=mpp, tile_size=size, stride=size, min_tissue_fraction=tissue, max_tiles_per_slide=10**9,
                             **settings)
    unit = WorkUnit("bench", module.SlideJob(str(slide), "bench", "a caption", {}, asdict(cfg)))

    def run() -> int:
        result = module.process_slide(unit)
        run.result = result  # type: ignore[attr-defined]  # kept for the checks after timing: hashing is not timed
        return len(result.pairs)

    return run


def tile_ids(tiler: Callable[[], int]) -> list[tuple[str, str]]:
    """(id, sha256 of the pixels) of every tile our tiler's last run kept, sorted."""
    return sorted((p.id, hashlib.sha256(p.image.tobytes()).hexdigest()) for p in tiler.result.pairs)  # type: ignore[attr-defined]


def tile_differences(before: Callable[[], int], after: Callable[[], int]) -> str:
    """How the tiles of two runs differ: ids kept by one only, and the pixels of the tiles both keep."""
    import numpy as np

    old = {p.id: p.image for p in before.result.pairs}  # type: ignore[attr-defined]
    new = {p.id: p.image for p in after.result.pairs}  # type: ignore[attr-defined]
    common = sorted(old.keys() & new.keys())
    diff = [np.abs(old[k].astype(np.int16) - new[k]) for k in common if old[k].shape == new[k].shape]
    pixels = (f"pixels of the {len(common)} both keep: mean abs difference {np.mean([d.mean() for d in diff]):.2f} grey levels, "
              f"max {max(int(d.max()) for d in diff)}" if diff else "no tile in common")
    return (f"tiles differ from the baseline's: kept by the baseline only {sorted(old.keys() - new.keys())}, by ours only "
            f"{sorted(new.keys() - old.keys())}; {pixels}")


def cells_read(tiler: Callable[[], int]) -> int:
    """Grid cells our tiler's last run read and checked (its mask passed them)."""
    return tiler.result.counts["tiles_read"]  # type: ignore[attr-defined]


def slide_facts(slide: Path, fallback: float) -> tuple[float, bool, str]:
    """(level-0 um/px by the curation's own `slide_mpp`, whether that is `fallback` because the file states none, level sizes)."""
    import openslide

    from domains.pathology.curation.slides import slide_mpp

    with openslide.OpenSlide(str(slide)) as handle:
        mpp, source = slide_mpp(dict(handle.properties), fallback)
        pyramid = ", ".join(f"{w}x{h}" for w, h in handle.level_dimensions)
    return mpp, source == "fallback_mpp", pyramid


def histolab_tiler(slide: Path, mpp: float, size: int, tissue: float, slide_mpp: float) -> tuple[Callable[[], int], str]:
    """Histolab's GridTiler over its tissue mask, tiles as arrays; `slide_mpp` the slide's level-0 um/px."""
    import numpy as np
    from histolab import __version__
    from histolab.masks import TissueMask
    from histolab.slide import Slide
    from histolab.tiler import GridTiler

    out = Path(tempfile.mkdtemp(prefix="histolab-"))
    # GridTiler's `mpp` needs the large_image package; without it, it tiles a pyramid level: the one nearest the MPP
    probe = Slide(str(slide), str(out))
    level_mpps = [slide_mpp * d for d in probe._wsi.level_downsamples]
    level = min(range(len(level_mpps)), key=lambda i: abs(level_mpps[i] - mpp))
    if abs(level_mpps[level] / mpp - 1) > 0.05:
        raise SystemExit(f"histolab: no level of {slide.name} within 5% of {mpp} um/px (levels: {level_mpps}); "
                         "its mpp option needs large_image")

    def run() -> int:
        tiler = GridTiler(tile_size=(size, size), level=level, check_tissue=True, tissue_percent=100 * tissue, pixel_overlap=0)
        found = [np.asarray(tile.image.convert("RGB")) for tile, _ in tiler._tiles_generator(Slide(str(slide), str(out)), TissueMask())]
        return len(found)

    return run, f"histolab {__version__} GridTiler"


def tiatoolbox_tiler(slide: Path, mpp: float, size: int, tissue: float, given_mpp: float | None) -> tuple[Callable[[], int], str]:
    """TIAToolbox's sliding-window patch extractor with its Otsu tissue mask; `given_mpp`: the slide's um/px when its file states none."""
    import tiatoolbox
    from tiatoolbox.tools.patchextraction import get_patch_extractor
    from tiatoolbox.wsicore.wsireader import WSIReader

    stated = {} if given_mpp is None else {"mpp": (given_mpp, given_mpp), "power": 10 / given_mpp}

    def run() -> int:
        reader = WSIReader.open(str(slide), **stated)
        extractor = get_patch_extractor("slidingwindow", input_img=reader, patch_size=(size, size), stride=(size, size),
                                        resolution=mpp, units="mpp", input_mask="otsu", min_mask_ratio=tissue)
        return len([patch for patch in extractor])

    return run, f"TIAToolbox {tiatoolbox.__version__} SlidingWindowPatchExtractor"


def measure_slide(slide: Path, args: argparse.Namespace, base: Any | None) -> list[dict[str, Any]]:
    """Every tiler on one slide, interleaved; the benchmark contract's rows for it."""
    import domains.pathology.curation.slides as ours_module

    slide_mpp, given, pyramid = slide_facts(slide, args.slide_mpp)
    fallback = {"fallback_mpp": args.slide_mpp} if given else {}
    tilers: dict[str, Callable[[], int]] = {"ours": our_tiler(ours_module, slide, args.mpp, args.tile_size, args.tissue, **fallback)}
    names = {"ours": "ours"}
    default_mask_dim = ours_module.SlideConfig().mask_level_max_dim
    if args.mask_dim and args.mask_dim != default_mask_dim:
        tilers["ours_mask_dim"] = our_tiler(ours_module, slide, args.mpp, args.tile_size, args.tissue,
                                            mask_level_max_dim=args.mask_dim, **fallback)
    if base is not None:
        tilers["baseline"] = our_tiler(base, slide, args.mpp, args.tile_size, args.tissue, **fallback)
        names["baseline"] = f"our slide tiler on main {args.baseline_rev}"
    for key, make, resolution in (("histolab", histolab_tiler, slide_mpp), ("tiatoolbox", tiatoolbox_tiler, slide_mpp if given else None)):
        try:
            tilers[key], names[key] = make(slide, args.mpp, args.tile_size, args.tissue, resolution)
        except ImportError as exc:
            names[key] = f"{key} missing ({exc}); run `make bench`"
            print(f"{key} is not installed here ({exc}): not measured", file=sys.stderr)

    seconds: dict[str, list[float]] = {k: [] for k in tilers}
    tiles: dict[str, int] = {}
    keys = list(tilers)
    for repeat in range(args.repeats):  # interleaved: machine noise hits all alike
        # in an order rotated each round: a tiler's time depends on the one before it (TIAToolbox's on
        # CMU-1-Small-Region: 0.41 s after ours, up to 0.84 s after histolab), so none always follows the same one
        for key in keys[repeat % len(keys):] + keys[: repeat % len(keys)]:
            t0 = time.perf_counter()
            tiles[key] = tilers[key]()
            seconds[key].append(time.perf_counter() - t0)

    rate = {k: tiles[k] / statistics.median(v) for k, v in seconds.items()}
    print(slide.name)
    for key in tilers:
        print(f"  {key:13s} {rate[key]:7.1f} tissue tiles/s  ({tiles[key]} tiles, median {statistics.median(seconds[key]):.2f} s)")
    resolution = f"no MPP in the file: {slide_mpp:g} um/px given every tiler" if given else f"{slide_mpp:g} um/px stated"
    where = (f"{slide.name} (levels {pyramid}; {resolution}), {args.tile_size} px at {args.mpp:g} um/px, tissue >= {args.tissue:g}; "
             "tiles kept: " + ", ".join(f"{k} {n}" for k, n in tiles.items())
             + f"; ours keeps {tiles['ours']} of the {cells_read(tilers['ours'])} cells its mask passes after its per-tile checks "
               "(pen, tissue, blur), TIAToolbox checks no tile, histolab each tile's own tissue")
    bar = BAR if slide.name == SLIDE.name else None  # issue 16 names CMU-1-Small-Region; other slides without a bar
    figure = f"WSI tissue tiles ({args.tile_size} px at {args.mpp:g} um/px, {slide.name})"
    rows = []
    for key in ("histolab", "tiatoolbox"):
        rows.append({"figure": figure, "unit": "tissue tiles/s", "ours": rate["ours"], "peer": names[key],
                     "peer_value": rate.get(key), "ratio": rate["ours"] / rate[key] if key in rate else None, "bar": bar,
                     "repeats": args.repeats, "notes": where})
    if "tiatoolbox" in rate:
        cells = cells_read(tilers["ours"]) / statistics.median(seconds["ours"])
        rows.append({"figure": f"{figure}, cells its mask passes read per second", "unit": "cells/s", "ours": cells,
                     "peer": names["tiatoolbox"], "peer_value": rate["tiatoolbox"], "ratio": cells / rate["tiatoolbox"],
                     "bar": None, "repeats": args.repeats,
                     "notes": f"ours reads and checks {cells_read(tilers['ours'])} cells and keeps {tiles['ours']}; "
                              f"TIAToolbox reads {tiles['tiatoolbox']} and checks none (no bar: not issue 16's figure)"})
    if "baseline" in rate:
        same = ("identical tiles (ids and pixels)" if tile_ids(tilers["baseline"]) == tile_ids(tilers["ours"])
                else tile_differences(tilers["baseline"], tilers["ours"]))
        rows.append({"figure": f"{figure}, before -> after", "unit": "tissue tiles/s", "ours": rate["ours"],
                     "peer": names["baseline"], "peer_value": rate["baseline"], "ratio": rate["ours"] / rate["baseline"],
                     "bar": None, "repeats": args.repeats, "notes": f"{same} ({tiles['ours']})"})
    if "ours_mask_dim" in rate:
        same_ids = tile_ids(tilers["ours_mask_dim"]) == tile_ids(tilers["ours"])
        for key in ("histolab", "tiatoolbox"):
            if key in rate:
                rows.append({"figure": f"{figure}, ours with mask_level_max_dim {args.mask_dim} (default {default_mask_dim})",
                             "unit": "tissue tiles/s", "ours": rate["ours_mask_dim"], "peer": names[key], "peer_value": rate[key],
                             "ratio": rate["ours_mask_dim"] / rate[key], "bar": None, "repeats": args.repeats,
                             "notes": f"a different setting, which may keep other tiles: {tiles['ours_mask_dim']} kept, "
                                      f"{'the same tiles as' if same_ids else 'not the same tiles as'} the default "
                                      f"setting's {tiles['ours']} on this slide"})
    return rows


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=Path, nargs="+", default=None,
                    help=f"slides to tile, one after another (default: {SLIDE.name}, and {MULTI_LEVEL_SLIDE.name} when present)")
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="level-0 um/px of a slide whose file states none, given every tiler")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--tissue", type=float, default=0.5, help="tissue fraction a tile needs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision whose slide tiler is the 'before'")
    ap.add_argument("--mask-dim", type=int, default=512,
                    help="also run ours with pathology.curate.slides.mask_level_max_dim at this value (0: not)")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks' JSON contract)")
    args = ap.parse_args()
    slides = args.slides or [SLIDE, *([MULTI_LEVEL_SLIDE] if MULTI_LEVEL_SLIDE.is_file() else [])]
    for slide in slides:
        if not slide.is_file():
            raise SystemExit(f"{slide}: slide not found (see {REALDATA / 'MANIFEST.md'} or pass --slides)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = module_at(args.baseline_rev, "domains/pathology/curation/slides.py", Path(tmp))
        for slide in slides:
            rows += measure_slide(slide, args, base)
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
