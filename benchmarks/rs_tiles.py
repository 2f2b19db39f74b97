"""Remote-sensing tiles per second: our tile reader next to torchgeo's RasterDataset on the same windows.

One scene, one grid of windows (torchgeo's GridGeoSampler over the scene, `--size` px at `--gsd`
metres, stride = size), the same output (`--size` x `--size` px, the scene's CRS, the target GSD,
average resampling, uint8 RGB), read three ways, interleaved, `--repeats` times. Two regimes:

- first pass: each reader opens the raster (ours) or builds its dataset (torchgeo) and reads every
  window once, as curation reads a scene; GDAL's block cache starts cold for every reader, since it
  keeps a dataset's decoded blocks only while that dataset is open;
- warm: the raster stays open across repeated passes (torchgeo's cached file handles, our TileSource
  kept), so every block is decoded already, as in a training epoch over the same scene.

- ours:      `domains.remote_sensing.curation.tiles.read_mosaic_tile` (what curation calls for every
             tile: pixels and the valid-pixel mask, its TileSource built once per raster) and `to_rgb8`;
- baseline:  the reader as it was on main at 430160d (one WarpedVRT per tile and a second warp for the
             mask), kept here so before and after are measured in the same command;
- torchgeo:  `RasterDataset` (resampling average, file handles cached) indexed by the sampler's
             windows; its float image is the output.

Outputs are compared where both have data (max abs difference in 0-255 grey levels; a black pixel
is "no data", as torchgeo, which gives no mask, has it), with the share of pixels only one has data
in: ours against the baseline (within `DIRECT_READ_TOLERANCE`: ours reads a tile on the raster's own
grid, over pixels that all hold data, with one resampled RasterIO read instead of the warper, see
`tiles.on_own_grid`; at a raster's edge ours can keep a row of data the baseline's second warp, for
the mask, called empty, see `tiles.nodata_mask_of_bands`) and against torchgeo (tolerance
`TORCHGEO_TOLERANCE`, the two read through different GDAL paths where ours warps). Without `--raster` a
synthetic `--scene-px` square scene at 1 m (EPSG:32631, 3-band uint8, 256 px tiles, deflate, a
nodata strip along the right edge) is written first.

Usage: python benchmarks/rs_tiles.py [--raster R.tif] [--gsd 2] [--size 224] [--repeats 5] [--json PATH]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from contract import machine, synthetic_scene, write_json
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT

from domains.remote_sensing.curation.tiles import (
    DIRECT_READ_TOLERANCE,
    Tile,
    TileSource,
    finite_pixels,
    has_validity_info,
    read_mosaic_tile,
    to_rgb8,
)

TORCHGEO_TOLERANCE = 1  # grey levels: GDAL's warper (ours) and its RasterIO (torchgeo's merge) average the same pixels, rounding apart
BAR = 1.5  # issue 16: ours >= torchgeo, aim 1.5x


def baseline_read(src: Any, crs: Any, bounds: tuple[float, float, float, float], size: int, bands: list[int],
                  resampling: Resampling) -> Tile:
    """tiles.read_tile as on main at 430160d: a WarpedVRT per tile, then a second warp for the mask."""
    transform = from_bounds(*bounds, width=size, height=size)
    add_alpha = not has_validity_info(src)
    with WarpedVRT(src, crs=crs, transform=transform, width=size, height=size, resampling=resampling, add_alpha=add_alpha) as vrt:
        data = vrt.read(indexes=list(bands))
        valid = (vrt.dataset_mask() > 0) & finite_pixels(data)
    return Tile(data, valid)


def baseline_rgb8(tile: Tile) -> np.ndarray:
    """tiles.to_rgb8 as on main at 430160d, for uint8 tiles (all this benchmark reads)."""
    out = np.zeros(tile.data.shape, dtype=np.uint8)
    for i, band in enumerate(tile.data):
        out[i] = band
    out[:, ~tile.valid] = 0
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out[:3].transpose(1, 2, 0))


def compare_rgb(ours: list[np.ndarray], theirs: list[np.ndarray]) -> tuple[int, float, float]:
    """(max abs difference where both have data, share of those values that differ, share of pixels with data in one only).

    Each output is (H, W, C) uint8 with black where it has no data.
    """
    worst, differ, values, one_sided, pixels = 0, 0, 0, 0, 0
    for a, b in zip(ours, theirs, strict=True):
        a, b = a.astype(np.int16), b.astype(np.int16)
        has_a, has_b = a.max(-1) > 0, b.max(-1) > 0
        diff = np.abs(a - b)[has_a & has_b]
        worst = max(worst, int(diff.max(initial=0)))
        differ += int((diff > 0).sum())
        values += diff.size
        one_sided += int((has_a != has_b).sum())
        pixels += has_a.size
    return worst, differ / max(values, 1), one_sided / max(pixels, 1)


def grid_windows(src: Any, gsd: float, size: int) -> list[tuple[float, float, float, float]]:
    """The windows torchgeo's GridGeoSampler lays over one scene (size px at gsd, stride = size), as (left, bottom, right, top).

    Like its `tile_to_chips`, the last row and column cover the scene's edge and reach past it.
    """
    side = gsd * size
    left, bottom, right, top = src.bounds
    cols = math.ceil((right - left - side) / side) + 1
    rows = math.ceil((top - bottom - side) / side) + 1
    return [(left + j * side, bottom + i * side, left + (j + 1) * side, bottom + (i + 1) * side)
            for i in range(rows) for j in range(cols)]


def torchgeo_reader(raster: Path, gsd: float, size: int) -> tuple[Any, list[tuple[float, float, float, float]], str]:
    """(a RasterDataset factory over the scene with average resampling, the sampler's windows, "torchgeo X RasterDataset")."""
    import torchgeo
    from torchgeo.datasets import RasterDataset
    from torchgeo.samplers import GridGeoSampler

    class Scene(RasterDataset):
        filename_glob = raster.name
        is_image = True

        @property
        def resampling(self) -> Resampling:
            return Resampling.average

    with rasterio.open(raster) as src:
        crs = src.crs

    def dataset() -> Any:
        return Scene(paths=[str(raster.parent)], crs=crs, res=gsd)

    sampler = GridGeoSampler(dataset(), size=size, stride=size)
    windows = [(float(x.start), float(y.start), float(x.stop), float(y.stop)) for x, y, _ in sampler]
    return dataset, windows, f"torchgeo {torchgeo.__version__} RasterDataset"


def main() -> None:
    """Measure, compare, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raster", type=Path, help="a GeoTIFF in a projected metric CRS (default: a synthetic scene)")
    ap.add_argument("--scene-px", type=int, default=4096, help="synthetic scene side, px at 1 m")
    ap.add_argument("--gsd", type=float, default=2.0, help="output metres per pixel (coarser than the scene: average resampling)")
    ap.add_argument("--size", type=int, default=224, help="output px a side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks' JSON contract)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raster = args.raster or synthetic_scene(args.scene_px, Path(tmp), edge_nodata_px=24)
        with rasterio.open(raster) as src:
            crs, bands = src.crs, [1, 2, 3] if src.count >= 3 else [1]
            windows = grid_windows(src, args.gsd, args.size)
        try:
            dataset, peer_windows, peer_name = torchgeo_reader(raster, args.gsd, args.size)
        except ImportError as exc:
            dataset, peer_windows, peer_name = None, windows, f"torchgeo missing ({exc}); run `make bench`"
            print(f"torchgeo is not installed here ({exc}): only ours and the baseline are measured", file=sys.stderr)
        if dataset is not None and not np.allclose(peer_windows, windows):
            raise SystemExit(f"torchgeo's sampler laid {len(peer_windows)} windows, ours {len(windows)}: not the same grid")
        windows = peer_windows

        def read_ours(source: TileSource) -> list[np.ndarray]:
            return [to_rgb8(read_mosaic_tile([source], crs, w, args.size, Resampling.average)[0]) for w in windows]

        def ours() -> list[np.ndarray]:
            with rasterio.open(raster) as src:
                return read_ours(TileSource.of(src, bands))  # as curation does: the source once per raster

        def baseline() -> list[np.ndarray]:
            with rasterio.open(raster) as src:
                return [baseline_rgb8(baseline_read(src, crs, w, args.size, bands, Resampling.average)) for w in windows]

        def read_peer(scene: Any) -> list[np.ndarray]:
            return [scene[slice(w[0], w[2]), slice(w[1], w[3])]["image"].numpy() for w in windows]

        def peer() -> list[np.ndarray]:
            return read_peer(dataset())

        open_src = rasterio.open(raster)
        kept_source = TileSource.of(open_src, bands)
        kept_scene = dataset() if dataset is not None else None

        def ours_warm() -> list[np.ndarray]:
            return read_ours(kept_source)

        def peer_warm() -> list[np.ndarray]:
            return read_peer(kept_scene)

        readers = (("ours", ours), ("baseline", baseline), ("torchgeo", peer), ("ours_warm", ours_warm), ("torchgeo_warm", peer_warm))
        runs: dict[str, list[float]] = {name: [] for name, _ in readers}
        outputs: dict[str, list[np.ndarray]] = {}
        for repeat in range(args.repeats + 1):  # interleaved: machine noise hits all alike; pass 0 warms the kept handles
            for name, fn in readers:
                if name.startswith("torchgeo") and dataset is None:
                    continue
                if repeat == 0 and not name.endswith("_warm"):
                    continue
                t0 = time.perf_counter()
                outputs[name] = fn()
                if repeat:
                    runs[name].append(time.perf_counter() - t0)
        open_src.close()

    n = len(windows)
    rate = {k: n / statistics.median(v) for k, v in runs.items() if v}
    baseline_worst, baseline_differ, baseline_one_sided = compare_rgb(outputs["ours"], outputs["baseline"])
    same_as_baseline = baseline_worst <= DIRECT_READ_TOLERANCE
    notes = [f"{n} windows of {args.size} px at {args.gsd:g} m (average resampling) from "
             f"{args.raster or f'a synthetic {args.scene_px} px 1 m scene'}; ours vs baseline (main 430160d) where both have data: "
             f"max abs difference {baseline_worst} grey levels (tolerance {DIRECT_READ_TOLERANCE}: "
             f"{'within' if same_as_baseline else 'OUTSIDE'}), {baseline_differ:.4%} of values differ; "
             f"{baseline_one_sided:.3%} of pixels have data in one output only"]
    if "torchgeo" in outputs:
        # torchgeo's image is (bands, H, W) float with 0 where it has no data (it gives no mask); ours (H, W, 3) uint8
        theirs = [np.clip(p, 0, 255).round().astype(np.uint8).transpose(1, 2, 0) for p in outputs["torchgeo"]]
        worst, differ, one_sided = compare_rgb([o[..., : t.shape[2]] for o, t in zip(outputs["ours"], theirs)], theirs)
        notes.append(f"vs torchgeo where both have data: max abs difference {worst} grey levels (tolerance {TORCHGEO_TOLERANCE}: "
                     f"{'within' if worst <= TORCHGEO_TOLERANCE else 'OUTSIDE'}), {differ:.3%} of values differ; "
                     f"{one_sided:.3%} of pixels have data in one output only (windows past the scene's edge)")
    if not same_as_baseline:
        notes.append("WARNING: ours differs from the baseline reader by more than the tolerance")
    for name, value in rate.items():
        print(f"{name:9s} {value:8.1f} tiles/s  (median of {len(runs[name])}: {statistics.median(runs[name]):.3f} s for {n})")
    figure = f"RS tiles read ({args.size} px at {args.gsd:g} m, average resampling, uint8 RGB + valid mask)"
    rows = [{"figure": f"{figure}, first pass (each opens the raster: GDAL's block cache cold)",
             "unit": "tiles/s", "ours": rate["ours"], "peer": peer_name, "peer_value": rate.get("torchgeo"),
             "ratio": rate["ours"] / rate["torchgeo"] if "torchgeo" in rate else None, "bar": BAR,
             "repeats": args.repeats, "notes": "; ".join(notes)},
            {"figure": f"{figure}, warm (raster kept open across passes: every block decoded already)",
             "unit": "tiles/s", "ours": rate["ours_warm"], "peer": peer_name, "peer_value": rate.get("torchgeo_warm"),
             "ratio": rate["ours_warm"] / rate["torchgeo_warm"] if "torchgeo_warm" in rate else None, "bar": None,
             "repeats": args.repeats, "notes": "the same windows and outputs as the first pass"},
            {"figure": "RS tiles read, before (main 430160d reader) -> after", "unit": "tiles/s", "ours": rate["ours"],
             "peer": "our reader on main 430160d (WarpedVRT per tile + mask warp)", "peer_value": rate["baseline"],
             "ratio": rate["ours"] / rate["baseline"], "bar": None, "repeats": args.repeats,
             "notes": notes[0].split("; ", 1)[1]}]
    for note in notes:
        print(note)
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
