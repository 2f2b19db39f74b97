"""The GPU figures of issue 16, in one prepared run for when a GPU is lent (the command is at the end of this docstring).

Both go through the project's own training loop (`pipelines.train.loop.fit`) with the real task
classes; only the batches are synthetic tensors made once on the device, so the figures are the
model's, the optimizer's and the loop's, not a data loader's:

- CT: the 3D dual encoder (`VolumeTask`, the real setting's `VolumeModelConfig`: 224x224x160,
  `--ct-encoders`, the demo text encoder, gradient checkpointing as `VolumeTrainConfig` has it) in
  bf16. The largest batch whose steps fit within `--ct-memory-gb` of GPU memory (the allocator is
  capped there: Merlin reports a batch of 18 within 48 GB for its I3D ResNet152), found by doubling
  from `--ct-start-batch` and then bisecting, each probe `--steps` steps; then samples/s and peak
  memory at that batch.
- open_clip: `--clip-arch` (ViT-B-16, randomly initialised, nothing downloaded) at its 224 px input,
  LoRA (the default `AdaptConfig`) against full fine-tuning, bf16, batch `--clip-batch`: samples/s
  and peak memory, and LoRA's memory over full's (issue 16's goal: <= 0.6).

Peak memory is `torch.cuda.max_memory_allocated` over the measured run. Rates are the median per-step
samples/s after the first `WARMUP_STEPS` steps. The card is named in the JSON's machine line.

Without a GPU it measures nothing and exits 0 (`make bench` leaves it out); `--smoke` runs the same
code on the CPU at toy sizes, to check the script itself (tests/test_gpu_figures.py).

    python benchmarks/gpu_figures.py [--ct-encoders i3d_resnet18 i3d_resnet50] [--ct-memory-gb 48]
        [--clip-arch ViT-B-16] [--clip-batch 128] [--steps 6] [--json reports/benchmarks/gpu_figures.json]

On the lent machine (device tool): its python3 holds torch, peft, transformers and timm but not
open_clip, rasterio and a few small packages, so `make gpu-wheels` here first (into .whl/, ignored),
then one run, carrying .whl, with mapping's GPU rows in the same call:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. &&
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_figures.py --json $OUT/gpu_figures.json &&
    python3 benchmarks/rs_map.py --arch ViT-B-32 --size 4096 --json $OUT/rs_map_gpu.json

and copy the JSON files into reports/benchmarks/ here, then `python benchmarks/report.py`.
"""
from __future__ import annotations

import argparse
import csv
import gc
import shlex
import statistics
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from contract import machine, write_json

from pipelines.models import volume as M
from pipelines.models.adapt import AdaptConfig, prepare
from pipelines.models.clip import ModelSpec, load_model
from pipelines.models.report_text import tokenize
from pipelines.train import distributed as D
from pipelines.train.clip_task import ClipTask, ClipTrainConfig
from pipelines.train.loop import TrainConfig, fit, resolve_precision
from pipelines.train.volume_task import VolumeAdaptConfig, VolumeTask, VolumeTrainConfig

WARMUP_STEPS = 2
MERLIN_BATCH = 18  # Merlin (Blankemeier et al. 2024): batch 18 at 224x224x160 on one 48 GB GPU, I3D ResNet152
LORA_MEMORY_GOAL = 0.6  # issue 16: LoRA's peak memory at most 0.6x full fine-tuning's
# What a batch too large for the card (or for a kernel's indexing) raises, as RuntimeError messages.
TOO_LARGE = ("out of memory", "CUDNN_STATUS", "32-bit index")
REPORTS = ["Liver is normal. Kidneys show a small calculus.", "No acute abnormality in the abdomen or pelvis."]


@dataclass
class Run:
    """One measured run of the loop: median samples/s after warm-up and peak memory (bytes; None on the CPU)."""

    samples_per_s: float
    peak_bytes: int | None
    precision: str  # what the loop resolved "auto" to: bf16 on a GPU that has it


def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch b in [1, limit] with fits(b) (0 if none), for a `fits` that holds up to some size and fails above.

    Doubling from `start` finds a size that fails (or reaches `limit`), then bisection between the
    last size that fit and the first that failed: about 2 log2(answer) probes.
    """
    good, bad = 0, limit + 1
    b = max(1, min(start, limit))
    while b < bad:  # grow while it fits
        if fits(b):
            good = b
            if b == limit:
                return b
            b = min(2 * b, limit)
        else:
            bad = b
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def release_memory() -> None:
    """Return what a finished (or failed) probe left in the caching allocator, so the next probe starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(task: torch.nn.Module, cfg: TrainConfig, info: D.DistInfo) -> Run:
    """`cfg.max_steps` steps of `fit` on `task`; median per-step rate after warm-up and the peak memory."""
    release_memory()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "steps.csv"
        fit(task, cfg, Path(tmp) / "run", info, metrics_path=metrics)
        rows = list(csv.DictReader(metrics.open()))
    peak = torch.cuda.max_memory_allocated() if info.device.type == "cuda" else None
    rates = [float(r["samples_per_s"]) for r in rows][WARMUP_STEPS:] or [float(r["samples_per_s"]) for r in rows]
    return Run(statistics.median(rates), peak, resolve_precision(cfg.precision, info.device))


# ---------------------------------------------------------------- CT: the largest batch in bf16


class SyntheticVolumeTask(VolumeTask):
    """VolumeTask on one synthetic batch made on the device and fed every step (the objective is VolumeTask's own)."""

    def __init__(self, model_cfg: M.VolumeModelConfig, adapt: VolumeAdaptConfig, batch_size: int, device: torch.device,
                 info: D.DistInfo) -> None:
        phenotypes = [f"{code}" for code in range(100, 116)]
        tokenizer = M.new_tokenizer(model_cfg, REPORTS * 8)
        torch.manual_seed(0)
        super().__init__(M.build_model(model_cfg, phenotypes, tokenizer), tokenizer, phenotypes, [], adapt, {}, info)
        g = torch.Generator().manual_seed(0)
        tokens = tokenize(tokenizer, [REPORTS[i % 2] for i in range(batch_size)], model_cfg.context_length)
        self.batch = {"volumes": torch.rand((batch_size, 1, *model_cfg.input_size), generator=g).to(device),
                      "targets": (torch.rand((batch_size, len(phenotypes)), generator=g) < 0.1).float().to(device),
                      "tokens": {k: v.to(device) for k, v in tokens.items()}}

    def num_samples(self) -> int:
        """Plenty: the loop's step count comes from max_steps."""
        return 10**9

    def batches(self, **_: Any) -> Iterator[dict[str, Any]]:
        """The same device batch every step."""
        while True:
            yield self.batch

    def save(self, out_dir: Path) -> None:
        """Nothing: only the figures are kept."""


def ct_run(encoder: str, batch: int, steps: int, size: list[int], width: int, info: D.DistInfo) -> Run:
    """`steps` bf16 steps of the CT task at `batch` (multitask schedule: both losses, the heavier phase, from step 0)."""
    model_cfg = M.VolumeModelConfig(input_size=size, image_encoder=encoder, image_width=width)
    cfg = VolumeTrainConfig(batch_size=batch, max_steps=steps, warmup_steps=1, checkpoint_every=0, precision="auto")
    task = SyntheticVolumeTask(model_cfg, VolumeAdaptConfig(schedule="multitask"), batch, info.device, info)
    try:
        return measure(task, cfg, info)
    finally:
        del task
        release_memory()


def ct_largest_batch(encoder: str, args: argparse.Namespace, info: D.DistInfo) -> tuple[int, Run | None, list[str]]:
    """The largest batch that trains within the memory cap, its run, and the probes' log."""
    probes: list[str] = []

    def fits(batch: int) -> bool:
        try:
            ct_run(encoder, batch, 2, args.ct_size, args.ct_width, info)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one; cuDNN and 32-bit indexing refuse large batches too
            reason = next((r for r in TOO_LARGE if r in str(exc)), None)
            if reason is None:
                raise
            probes.append(f"{batch}: {reason}")
            release_memory()
            return False
        probes.append(f"{batch}: fits")
        return True

    best = largest_batch(fits, args.ct_start_batch, args.ct_max_batch)
    return best, (ct_run(encoder, best, args.steps, args.ct_size, args.ct_width, info) if best else None), probes


# ---------------------------------------------------------------- open_clip: LoRA vs full


class SyntheticClipTask(ClipTask):
    """ClipTask fed one synthetic (images, tokens) batch made on the device, every step."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, image_size: int, batch_size: int, shard: str,
                 cfg: ClipTrainConfig, info: D.DistInfo) -> None:
        super().__init__(model, None, tokenizer, [shard], cfg, info)
        g = torch.Generator().manual_seed(0)
        self.batch = (torch.randn((batch_size, 3, image_size, image_size), generator=g).to(info.device),
                      tokenizer([REPORTS[i % 2] for i in range(batch_size)]).to(info.device))

    def num_samples(self) -> int:
        """Plenty: the loop's step count comes from max_steps."""
        return 10**9

    def batches(self, **_: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same device batch every step."""
        while True:
            yield self.batch

    def save(self, out_dir: Path) -> None:
        """Nothing: only the figures are kept."""


def one_sample_shard(folder: Path) -> str:
    """A shard of one image-text sample: ClipTask counts its shards when built, then these batches replace them."""
    path = folder / "train-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("0.png", "0.txt"):
            tar.addfile(tarfile.TarInfo(name))
    return str(path)


def clip_run(arch: str, mode: str, batch: int, steps: int, info: D.DistInfo) -> tuple[Run, int]:
    """`steps` bf16 steps of `arch` with LoRA (the default AdaptConfig) or full fine-tuning; the run and the image size."""
    torch.manual_seed(0)
    loaded = load_model(ModelSpec(arch))
    net = loaded.model if mode == "full" else prepare(loaded.model, AdaptConfig(mode="lora"))
    size = loaded.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    cfg = ClipTrainConfig(batch_size=batch, max_steps=steps, warmup_steps=1, checkpoint_every=0, precision="auto")
    with tempfile.TemporaryDirectory() as tmp:
        task = SyntheticClipTask(net, loaded.tokenizer, int(size), batch, one_sample_shard(Path(tmp)), cfg, info)
        try:
            return measure(task, cfg, info), int(size)
        finally:
            del task, net, loaded
            release_memory()


# ---------------------------------------------------------------- the rows


def gib(n: int | None) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**30:.1f} GiB"


def main() -> None:
    """Measure, print and write the contract's rows."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-encoders", nargs="+", default=["i3d_resnet18", "i3d_resnet50"])
    ap.add_argument("--ct-size", type=int, nargs=3, default=[224, 224, 160], metavar=("X", "Y", "Z"))
    ap.add_argument("--ct-width", type=int, default=64, help="ResNet stem channels (64: torchvision's)")
    ap.add_argument("--ct-memory-gb", type=float, default=48.0, help="GPU memory the CT batch must fit in (GiB)")
    ap.add_argument("--ct-start-batch", type=int, default=8)
    ap.add_argument("--ct-max-batch", type=int, default=64)
    ap.add_argument("--clip-arch", default="ViT-B-16")
    ap.add_argument("--clip-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="steps of each measured run (the first WARMUP_STEPS not counted)")
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU at toy sizes (checks the script)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no GPU here: nothing measured (the figures need one; --smoke checks the script on the CPU)")
        return
    if args.smoke:
        args.ct_encoders, args.ct_size, args.ct_width, args.ct_max_batch, args.ct_start_batch = ["i3d_resnet18"], [16, 16, 8], 8, 3, 2
        args.clip_arch, args.clip_batch, args.steps = "domainfm-tiny", 4, 3
    info = D.DistInfo(device=torch.device("cuda" if cuda and not args.smoke else "cpu"))
    card = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "CPU (smoke run)"
    if info.device.type == "cuda":
        total = torch.cuda.get_device_properties(info.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.ct_memory_gb * 2**30 / total), info.device)
    rows: list[dict[str, Any]] = []
    size = "x".join(map(str, args.ct_size))
    precision = resolve_precision("auto", info.device)
    cap = f"{args.ct_memory_gb:g} GiB" if info.device.type == "cuda" else "no cap (CPU)"
    for encoder in args.ct_encoders:
        best, run, probes = ct_largest_batch(encoder, args, info)
        line = (f"CT {encoder} at {size}, {precision}, gradient checkpointing: largest batch within {cap} = {best}"
                + (f", {run.samples_per_s:.1f} samples/s, peak {gib(run.peak_bytes)}" if run else "") + f" (probes: {'; '.join(probes)})")
        print(line, flush=True)
        rows.append({"figure": f"CT training at {size} in {precision} ({encoder}, gradient checkpointing): largest batch within "
                               f"{cap}, {card}",
                     "unit": "volumes per batch", "ours": best, "peer": "Merlin's reported batch (I3D ResNet152, 48 GB)",
                     "peer_value": MERLIN_BATCH, "ratio": best / MERLIN_BATCH, "bar": 1.0, "repeats": 1,
                     "notes": line})
    (lora, image_px), (full, _) = (clip_run(args.clip_arch, mode, args.clip_batch, args.steps, info)
                                   for mode in ("lora", "full"))
    note = (f"{args.clip_arch} at {image_px} px, batch {args.clip_batch}, {precision}, {args.steps} steps ({WARMUP_STEPS} warm-up), "
            f"synthetic batches on the device; LoRA r 8 on both towers (AdaptConfig defaults); {card}; "
            f"LoRA {lora.samples_per_s:.1f} samples/s, peak {gib(lora.peak_bytes)}; "
            f"full {full.samples_per_s:.1f} samples/s, peak {gib(full.peak_bytes)}")
    print(note, flush=True)
    rows.append({"figure": f"{args.clip_arch} training samples/s, LoRA vs full fine-tuning, {precision}, {card}", "unit": "samples/s",
                 "ours": lora.samples_per_s, "peer": "full fine-tuning (same model, batch, loop)", "peer_value": full.samples_per_s,
                 "ratio": lora.samples_per_s / full.samples_per_s, "bar": None, "repeats": 1, "notes": note})
    if lora.peak_bytes is not None and full.peak_bytes is not None:
        rows.append({"figure": f"{args.clip_arch} training peak memory, LoRA vs full fine-tuning (ratio = full / LoRA), {card}",
                     "unit": "GiB", "ours": lora.peak_bytes / 2**30, "peer": "full fine-tuning (same model, batch, loop)",
                     "peer_value": full.peak_bytes / 2**30, "ratio": full.peak_bytes / lora.peak_bytes, "bar": 1 / LORA_MEMORY_GOAL,
                     "repeats": 1, "notes": note})
    if args.json:
        command = "python benchmarks/gpu_figures.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_json(args.json, {"benchmark": "gpu_figures", "command": command.strip(), "machine": f"{machine()}, {card}", "rows": rows})


if __name__ == "__main__":
    main()
