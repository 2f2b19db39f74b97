"""CT preprocessing's first pass versus MONAI's reference chain (Merlin's), and what the cache adds.

Inputs: the real CT of ../shared/realdata (TotalSegmentator's example_ct.nii.gz, 122x101x112 at
3 mm; skipped with a note when absent, or pass `--real PATH`) and a synthetic 512x512x300 CT
(0.8 x 0.8 x 1.5 mm, voxel axes stored LPS-like as DICOM conversions often are, int16 .nii.gz). Each is
preprocessed at the real setting (1.5 x 1.5 x 3 mm, 224 x 224 x 160) and the demo's (params ct.curate:
4.5 x 4.5 x 6.5 mm, 64 x 64 x 48), in one process, interleaved, `--repeats` times:

- ours:     domains.ct.curation.preprocess.preprocess_volume with an empty cache (the first pass:
            hash, load, validate, reordered resampling, cache write);
- monai:    the peer: MONAI's chain as Merlin writes it, from the file: LoadImage (NibabelReader),
            EnsureChannelFirst, Orientation RAS, Spacing bilinear, ScaleIntensityRange, SpatialPad,
            CenterSpatialCrop;
- previous: this repository's first pass before the reordering (the same steps with the MONAI chain
            on the whole volume: `apply_monai_chain`);
- warm:     preprocess_volume again on the filled cache (reruns, training epochs).

Every row's notes give the max abs difference between ours and the peer's output (the bar: <= 1e-3).

    python benchmarks/ct_preprocess_cache.py [--repeats 3] [--real PATH] [--no-synthetic] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
from contract import REALDATA, machine, write_json

from domains.ct.curation.preprocess import PreprocessConfig, apply_monai_chain, cache_key, preprocess_volume
from domains.ct.curation.volumes import load_volume, validate_volume

REAL_CT = REALDATA / "ct" / "totalsegmentator" / "example_ct.nii.gz"
SETTINGS = {
    "real setting 1.5x1.5x3 mm, 224x224x160": PreprocessConfig(),
    "demo setting 4.5x4.5x6.5 mm, 64x64x48": PreprocessConfig(pixdim=[4.5, 4.5, 6.5], spatial_size=[64, 64, 48]),
}


def write_synthetic_ct(path: Path, shape: tuple[int, int, int] = (512, 512, 300), spacing: tuple[float, ...] = (0.8, 0.8, 1.5)) -> None:
    """An elliptic trunk (40 HU) in air with a spine (700 HU) and 15 HU noise, int16, LPS-like voxel axes."""
    rng = np.random.default_rng(0)
    nx, ny, nz = shape
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    plane = np.where((x[:, None] / 170) ** 2 + (y[None, :] / 130) ** 2 <= 1, 40, -1000).astype(np.int16)
    plane[(x[:, None] ** 2 + (y[None, :] + 70) ** 2) <= 15 ** 2] = 700
    data = np.empty(shape, np.int16)
    for k in range(nz):
        data[:, :, k] = plane + rng.normal(0, 15, (nx, ny)).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [(nx - 1) / 2 * spacing[0], (ny - 1) / 2 * spacing[1], -(nz - 1) / 2 * spacing[2]]
    nib.save(nib.Nifti1Image(data, affine), str(path))


def merlin_chain(cfg: PreprocessConfig) -> Callable[[str], Any]:
    """MONAI's reference chain as Merlin's image transforms (without the dictionary wrappers), from a file."""
    from monai.transforms import (
        CenterSpatialCrop,
        Compose,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        ScaleIntensityRange,
        Spacing,
        SpatialPad,
    )

    return Compose([
        LoadImage(image_only=True, reader="NibabelReader"),
        EnsureChannelFirst(),
        Orientation(axcodes="RAS"),
        Spacing(pixdim=tuple(cfg.pixdim), mode="bilinear"),
        ScaleIntensityRange(a_min=cfg.a_min, a_max=cfg.a_max, b_min=0.0, b_max=1.0, clip=True),
        SpatialPad(spatial_size=tuple(cfg.spatial_size)),
        CenterSpatialCrop(roi_size=tuple(cfg.spatial_size)),
    ])


def previous_first_pass(path: Path, cfg: PreprocessConfig, cache_dir: Path) -> np.ndarray:
    """preprocess_volume's first pass before the reordering: hash, load, validate, MONAI chain, cache write."""
    key = cache_key(path, cfg)
    vol = load_volume(path, cfg.slice_spacing_tolerance)
    validate_volume(vol, cfg.min_slices, cfg.air_hu, cfg.min_air_fraction)
    array, _ = apply_monai_chain(vol, cfg)
    target = cache_dir / key[:2] / f"{key}.npy"
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, array, allow_pickle=False)
    return array


def main() -> None:
    """Time the first passes, interleaved; print (and write with --json) the rows."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", type=Path, default=REAL_CT, help="a real CT (NIfTI); skipped with a note when absent")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic 512x512x300 CT")
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark JSON here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="monai")  # deprecation notes about Orientation's labels
    import monai

    peer = f"MONAI {monai.__version__} reference chain (Merlin's: LoadImage .. Spacing .. CenterSpatialCrop)"
    rows: list[dict] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs: dict[str, Path] = {}
        if args.real.is_file():
            inputs[f"real CT {args.real.name} {nib.load(str(args.real)).shape}"] = args.real
        else:
            skipped.append(f"real CT {args.real} absent: its rows are left out")
        if not args.no_synthetic:
            inputs["synthetic CT (512, 512, 300) 0.8x0.8x1.5 mm"] = root / "synthetic512.nii.gz"
            write_synthetic_ct(inputs["synthetic CT (512, 512, 300) 0.8x0.8x1.5 mm"])
        for label, path in inputs.items():
            for setting, cfg in SETTINGS.items():
                chain = merlin_chain(cfg)
                times: dict[str, list[float]] = {"ours": [], "monai": [], "previous": [], "warm": []}
                ours_out = peer_out = None
                for r in range(args.repeats):  # interleaved, so machine noise hits every method alike
                    cache = root / f"cache-{r}"
                    t0 = time.perf_counter()
                    ours_out, _, hit = preprocess_volume(path, cfg, cache)
                    times["ours"].append(time.perf_counter() - t0)
                    assert not hit
                    t0 = time.perf_counter()
                    peer_out = np.asarray(chain(str(path)))
                    times["monai"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    previous_first_pass(path, cfg, root / f"previous-{r}")
                    times["previous"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    _, _, hit = preprocess_volume(path, cfg, cache)
                    times["warm"].append(time.perf_counter() - t0)
                    assert hit
                    shutil.rmtree(cache)
                    shutil.rmtree(root / f"previous-{r}")
                med = {m: float(np.median(t)) for m, t in times.items()}
                diff = float(np.abs(ours_out - peer_out).max())
                notes = (f"{label}; {setting}; max abs difference ours vs peer {diff:.2e} "
                         f"({'within' if diff <= 1e-3 else 'OVER'} the 1e-3 bar); output {tuple(ours_out.shape)}; "
                         f"median seconds: ours {med['ours']:.3f}, peer {med['monai']:.3f}, previous {med['previous']:.3f}, "
                         f"warm cache {med['warm']:.3f}")
                common = {"unit": "volumes/s", "ours": round(1 / med["ours"], 3), "repeats": args.repeats}
                rows.append({"figure": f"CT preprocessing first pass, {label}, {setting}", **common, "peer": peer,
                             "peer_value": round(1 / med["monai"], 3), "ratio": round(med["monai"] / med["ours"], 2),
                             "bar": 1.5, "notes": notes})
                rows.append({"figure": f"CT preprocessing first pass vs the previous one, {label}, {setting}", **common,
                             "peer": "preprocess_volume before the reordering (this repo: MONAI chain on the whole volume)",
                             "peer_value": round(1 / med["previous"], 3), "ratio": round(med["previous"] / med["ours"], 2),
                             "bar": None, "notes": notes})
                rows.append({"figure": f"CT preprocessing rerun from the cache, {label}, {setting}", "unit": "volumes/s",
                             "ours": round(1 / med["warm"], 3), "peer": "first pass (ours, cache empty)",
                             "peer_value": round(1 / med["ours"], 3), "ratio": round(med["ours"] / med["warm"], 1),
                             "bar": None, "repeats": args.repeats,
                             "notes": f"{label}; {setting}; cache hit: hash the input, read the .npy"})
    payload: dict[str, Any] = {"benchmark": Path(__file__).stem, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
                               "machine": machine(), "rows": rows}
    if skipped:
        payload["skipped"] = skipped
    print(json.dumps(payload, indent=2))
    if args.json is not None:
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
