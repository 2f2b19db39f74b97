"""Preprocessed CT volumes per second with and without the content-hash cache.

Writes `--n` demo phantoms (domains/ct/demo/demo_data.py: phantom) as .nii.gz, then in one process runs
domains.ct.curation.preprocess.preprocess_volume over all of them:

- no cache:   every call loads, validates and runs the MONAI chain (what every epoch would pay);
- cold cache: the first pass, which also writes the cache;
- warm cache: later passes (what training epochs and reruns pay): hash the input, read the .npy.

Default: the real setting (1.5 x 1.5 x 3 mm, 224 x 224 x 160) on 192 x 192 x 100 phantoms at
2 x 2 x 3 mm. Usage: python benchmarks/ct_preprocess_cache.py [--n 12] [--repeats 3] [--demo]
(`--demo`: the demo's grid, params ct.curate).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume
from domains.ct.demo.demo_data import CTDemoConfig, phantom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo", action="store_true", help="the demo's grid instead of the real setting")
    args = ap.parse_args()
    if args.demo:
        vol_cfg = CTDemoConfig(shape=[96, 96, 64], spacing=[3.0, 3.0, 5.0])
        cfg = PreprocessConfig(pixdim=[4.5, 4.5, 6.5], spatial_size=[64, 64, 48])
    else:
        vol_cfg = CTDemoConfig(shape=[192, 192, 100], spacing=[2.0, 2.0, 3.0])
        cfg = PreprocessConfig()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = []
        for i in range(args.n):
            data, affine = phantom(vol_cfg, {"liver_lesion"} if i % 2 else set(), rng)
            paths.append(root / f"S{i:04d}.nii.gz")
            nib.save(nib.Nifti1Image(data, affine), str(paths[-1]))
        cache = root / "cache"

        def one_pass(cache_dir: Path | None) -> tuple[float, int]:
            t0 = time.perf_counter()
            hits = sum(preprocess_volume(p, cfg, cache_dir)[2] for p in paths)
            return time.perf_counter() - t0, hits

        cold_s, cold_hits = one_pass(cache)
        warm, none = [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            warm.append(one_pass(cache))
            none.append(one_pass(None))
    rate = lambda s: round(args.n / s, 2)  # noqa: E731
    warm_s, none_s = float(np.median([w[0] for w in warm])), float(np.median([n[0] for n in none]))
    print(json.dumps({
        "volumes": args.n, "input_shape": vol_cfg.shape, "input_spacing_mm": vol_cfg.spacing,
        "output": {"pixdim": cfg.pixdim, "spatial_size": cfg.spatial_size},
        "no_cache_volumes_per_s": rate(none_s),
        "cold_cache_volumes_per_s": rate(cold_s), "cold_cache_hits": cold_hits,
        "warm_cache_volumes_per_s": rate(warm_s), "warm_cache_hits": warm[-1][1],
        "warm_vs_no_cache": round(none_s / warm_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
