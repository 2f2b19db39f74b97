"""Seconds to load an exported open_clip model, as the analyst commands and notebooks load it, against stock open_clip.

Every `domainfm map`, `search` and `predict` and every notebook starts by loading the export. On an
export of `--arch` (ViT-B-32 by default: 605 MB of weights, built here with random weights, nothing
downloaded), each of these runs in its own fresh process, `--repeats` times, interleaved; the load
is timed inside the process, after torch and open_clip are imported (which both pay alike), with CPython's
garbage collector set as the `domainfm` entry point sets it (`collect_rarely`) in both. Without that, whether
one of the full collections of start-up's objects (about 0.18 s each) falls inside the timed load turns on
a few objects more or less imported (between two commits of this repository the load went from 0.30 s to
0.46 s that way). The three ways:

- ours:  `ClipEncoder.load(folder)`: the model built without drawing the random weights that the
         export's replace (`pipelines/models/weights.py`), the tokenizer, and the weights' digest (the
         embedding caches' key) as remembered from an earlier load (`$DOMAINFM_CACHE/weights-digests.json`);
- first: the same on a first load: an empty `$DOMAINFM_CACHE` each time, so the digest is computed
         (605 MB read and hashed);
- peer:  `open_clip.create_model_and_transforms("local-dir:<folder>")` and `open_clip.get_tokenizer`,
         what a user of stock open_clip runs.

Each process also prints the sum of its model's image embedding of one fixed input: the two must be
equal (the same weights). The rows' ratios are peer / ours and peer / first (times faster).

Usage: python benchmarks/model_load.py [--arch ViT-B-32] [--repeats 5] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from contract import machine, random_model, write_json

ROOT = Path(__file__).resolve().parent.parent
LOAD = {
    "ours": "from pipelines.infer.clip import ClipEncoder; model = ClipEncoder.load(FOLDER, 'cpu').model",
    "peer": ("model = open_clip.create_model_and_transforms(f'local-dir:{FOLDER}', weights_only=True)[0]; "
             "open_clip.get_tokenizer(f'local-dir:{FOLDER}')"),
}
# imports first (paid alike), then the timed load, then the check embedding
TIMED = """
import sys, time
from pipelines.cli import collect_rarely
collect_rarely()
import torch, open_clip, pipelines.models.clip
FOLDER = sys.argv[1]
start = time.perf_counter()
{load}
seconds = time.perf_counter() - start
side = model.visual.image_size  # the architecture's input size
side = side[0] if isinstance(side, (tuple, list)) else side
with torch.no_grad():
    pixels = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    check = float(model.eval().encode_image(pixels).sum())
print(seconds, check)
"""


def load_once(method: str, folder: Path, cache: Path) -> tuple[float, float]:
    """(seconds to load, check embedding sum) of one fresh process loading `folder` the `method` way, with `cache` as $DOMAINFM_CACHE."""
    env = {**os.environ, "DOMAINFM_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", TIMED.format(load=LOAD[method]), str(folder)], cwd=ROOT,
                          capture_output=True, text=True, check=True, env=env)
    seconds, check = done.stdout.split()[-2:]
    return float(seconds), float(check)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture of the export (random weights)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_model(Path(tmp), args.arch)
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        remembered = Path(tmp) / "cache"
        load_once("ours", folder, remembered)  # the first load, which computes the digest that "ours" finds
        times: dict[str, list[float]] = {"ours": [], "first": [], "peer": []}
        checks: set[float] = set()  # one embedding sum: every method loads the same weights
        for run in range(args.repeats):  # interleaved, so machine noise hits every method alike
            for method in times:
                cache = remembered if method != "first" else Path(tmp) / f"empty-cache-{run}"
                seconds, check = load_once("ours" if method == "first" else method, folder, cache)
                times[method].append(round(seconds, 3))
                checks.add(check)
    if len(checks) != 1:
        raise SystemExit(f"the loads gave different models: embedding sums {sorted(checks)}")
    ours, first, peer = (statistics.median(times[m]) for m in ("ours", "first", "peer"))
    print(f"{args.arch} export ({size_mb:.0f} MB): ours {ours:.3f} s (first load {first:.3f} s), open_clip {peer:.3f} s, "
          f"{peer / ours:.2f}x ({peer / first:.2f}x); runs {times}", flush=True)
    if args.json:
        figure = f"loading an export ({args.arch}, {size_mb:.0f} MB of weights), fresh process"
        common = {"unit": "s", "peer": "open_clip.create_model_and_transforms('local-dir:...') + get_tokenizer",
                  "peer_value": round(peer, 3), "bar": None, "repeats": args.repeats}
        notes = (f"ClipEncoder.load: the model built without drawing the random weights the export's replace, plus the "
                 f"sha256 of the weights (the embedding caches' key) that open_clip does not compute; timed after torch "
                 f"and open_clip are imported; the same embedding every way; runs {times}")
        rows = [{"figure": f"{figure}, the weights' digest remembered from an earlier load (ratio = peer / ours: times faster)",
                 "ours": round(ours, 3), "ratio": round(peer / ours, 3), **common, "notes": notes},
                {"figure": f"{figure}, first load: the weights' digest computed (ratio = peer / ours: times faster)",
                 "ours": round(first, 3), "ratio": round(peer / first, 3), **common, "notes": notes}]
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
