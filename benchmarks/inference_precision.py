"""Embedding throughput of the analyst commands' models in bf16 (their default where the CPU computes it natively) against fp32.

`--precision auto` (pipelines/infer/device.py) embeds under bf16 autocast on a CPU with AVX512-BF16 or
AMX. Each model below, randomly initialised (seed 0; throughput does not depend on the weights), embeds
the same random batch both ways, interleaved, `--repeats` times, through the commands' own code:

- the demo's image model (domainfm-tiny, 64 px, batch 64, 1 torch thread: each of the two batches the
  map commands embed at once on a CPU runs on one): `ClipEncoder.embed_tensors`;
- ViT-B/32 at 224 px, batch 32, torch's default threads: a model of realistic size;
- the demo's CT model (params.yaml ct.base_model) at its input size, and the CT image encoder at the
  real setting's 224x224x160 (`--ct-real-encoder`, stem width 64), batch 1: `CTModel.embed_volume`.

Rows: ours = bf16 (what "auto" resolves to here), peer = the same model in fp32 (`--precision fp32`),
items per second, ratio = bf16 / fp32 speed; the notes give the largest cosine distance between the two
embeddings of one input. On a CPU without native bf16, "auto" is fp32 and the rows say so. A second row
per model: fp32 as the commands run it (on an AMD CPU through oneDNN's kernels, pipelines/infer/onednn.py)
against the model's fp32 forward with torch's default kernels (MKL's sgemm), run in the same interleaving,
with the largest absolute difference of their outputs. On other CPUs the two are one path and the ratio is 1.
The CT models run as `CTModel` runs them (`volume.for_inference`: batch norms folded into the convolutions,
channels-last weights where `channels_last_volumes` says so, pipelines/infer/device.py); their default-kernel
peer is the model as built (channels-first, batch norms apart), and a third row compares bf16 with that model in bf16.

Usage: python benchmarks/inference_precision.py [--repeats 5] [--ct-real-encoder i3d_resnet18] [--json PATH]
"""
from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from contract import machine, open_clip_embed, random_ct_export, random_model, write_json

from domains.ct.loader import load_ct_model
from pipelines.infer.clip import ClipEncoder
from pipelines.infer.device import channels_last_volumes, inference_precision, resolve_precision
from pipelines.infer.onednn import onednn_fp32_preferred
from pipelines.models import volume as M


def interleaved(ways: dict[str, Callable[[], np.ndarray]], repeats: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median seconds of each way (each run once untimed first), alternated `repeats` times; and each way's output."""
    outputs = {name: fn() for name, fn in ways.items()}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def stock(forward: Callable[[], torch.Tensor]) -> np.ndarray:
    """`forward`'s output under no_grad with torch's default kernels (no `inference_precision`), a float32 row per input."""
    with torch.no_grad():
        out = forward()
    return out.float().reshape(out.shape[0], -1).numpy()


def cosine_gap(a: np.ndarray, b: np.ndarray) -> float:
    """The largest 1 - cosine similarity between the rows of two embedding matrices."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((1 - (a * b).sum(axis=1)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ct-real-encoder", default="i3d_resnet18", help="CT image encoder at 224x224x160 (stem width 64)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    auto = resolve_precision(torch.device("cpu"))
    rng = np.random.default_rng(0)
    rows = []

    kernels = "oneDNN's (an AMD CPU)" if onednn_fp32_preferred() else "torch's default (MKL's sgemm)"
    cpu = torch.device("cpu")

    def layout(precision: Literal["bf16", "fp32"]) -> str:
        order = "channels-last" if channels_last_volumes(cpu, precision) else "channels-first"
        return f"; batch norms folded, weights {order} in {precision} (CTModel's volume.for_inference)"

    def measure(figure: str, unit: str, n: int, threads: int, fp32: Callable[[], np.ndarray], low: Callable[[], np.ndarray],
                default_kernels: Callable[[], np.ndarray], note: str, as_built: Callable[[], np.ndarray] | None = None) -> None:
        """The rows of one model; `as_built` is its bf16 forward channels-first (the CT models), for a third row."""
        torch.set_num_threads(threads)
        ways = {"fp32": fp32, "bf16": low, "stock": default_kernels} | ({"bf16_as_built": as_built} if as_built else {})
        medians, outputs = interleaved(ways, args.repeats)
        gap = cosine_gap(outputs["fp32"], outputs["bf16"])
        line = (f"{figure}: bf16 {n / medians['bf16']:.2f} vs fp32 {n / medians['fp32']:.2f} {unit} "
                f"({medians['fp32'] / medians['bf16']:.2f}x), max 1 - cos {gap:.1e}")
        print(line, flush=True)
        rows.append({"figure": f"{figure}, {threads} torch thread{'s' if threads > 1 else ''}, bf16 (ratio = bf16 / fp32 speed)",
                     "unit": unit, "ours": round(n / medians["bf16"], 3), "peer": "the same model in fp32 (--precision fp32)",
                     "peer_value": round(n / medians["fp32"], 3), "ratio": round(medians["fp32"] / medians["bf16"], 3),
                     "bar": None, "repeats": args.repeats,
                     "notes": f"{note}; 'auto' resolves to {auto} on this CPU; max 1 - cosine(bf16, fp32) = {gap:.1e}; "
                              f"median s fp32 {medians['fp32']:.4f}, bf16 {medians['bf16']:.4f}"})
        difference = float(np.abs(outputs["fp32"] - outputs["stock"]).max())
        print(f"{figure}: fp32 {n / medians['fp32']:.2f} vs torch's default kernels {n / medians['stock']:.2f} {unit} "
              f"({medians['stock'] / medians['fp32']:.2f}x), max |difference| {difference:.1e}", flush=True)
        rows.append({"figure": f"{figure}, {threads} torch thread{'s' if threads > 1 else ''}, fp32 as the commands run it "
                               "(ratio = ours / torch's default fp32 kernels)",
                     "unit": unit, "ours": round(n / medians["fp32"], 3),
                     "peer": "the same model's fp32 forward with torch's default kernels (MKL's sgemm)"
                             + (", as built (channels-first, batch norms apart)" if as_built else ""),
                     "peer_value": round(n / medians["stock"], 3), "ratio": round(medians["stock"] / medians["fp32"], 3),
                     "bar": None, "repeats": args.repeats,
                     "notes": f"{note}; fp32 {'linear layers and 3D convolutions' if as_built else 'linear layers'} here on "
                              f"{kernels} kernels (pipelines/infer/onednn.py){layout('fp32') if as_built else ''}; max |ours - default| = "
                              f"{difference:.1e} (outputs of scale {float(np.abs(outputs['stock']).max()):.2g})"})
        if as_built:
            gap = cosine_gap(outputs["bf16"], outputs["bf16_as_built"])
            print(f"{figure}: bf16 {n / medians['bf16']:.2f} vs channels-first {n / medians['bf16_as_built']:.2f} {unit} "
                  f"({medians['bf16_as_built'] / medians['bf16']:.2f}x), max 1 - cos {gap:.1e}", flush=True)
            rows.append({"figure": f"{figure}, {threads} torch thread{'s' if threads > 1 else ''}, bf16 as the commands run it "
                                   "(ratio = ours / the model as built)",
                         "unit": unit, "ours": round(n / medians["bf16"], 3),
                         "peer": "the same model in bf16 as built (channels-first, batch norms apart)",
                         "peer_value": round(n / medians["bf16_as_built"], 3),
                         "ratio": round(medians["bf16_as_built"] / medians["bf16"], 3), "bar": None, "repeats": args.repeats,
                         "notes": f"{note}{layout('bf16')}; max 1 - cosine(ours, as built) = {gap:.1e}"})

    with tempfile.TemporaryDirectory() as tmp:
        for arch, side, batch, threads in (("domainfm-tiny", 64, 64, 1), ("ViT-B-32", 224, 32, default_threads)):
            folder = random_model(Path(tmp) / arch, arch)
            fp32, bf16 = ClipEncoder.load(folder, "cpu", "fp32"), ClipEncoder.load(folder, "cpu", "bf16")
            pixels = torch.from_numpy(rng.normal(0, 1, (batch, 3, side, side)).astype(np.float32))
            measure(f"image embeddings ({arch}, {side} px, batch {batch}; ClipEncoder.embed_tensors)", "images/s", batch, threads,
                    lambda e=fp32, x=pixels: e.embed_tensors(x), lambda e=bf16, x=pixels: e.embed_tensors(x),
                    lambda e=fp32, x=pixels: open_clip_embed(e.model, x),
                    f"{arch} randomly initialised (seed 0)")
        export = random_ct_export(Path(tmp) / "ct")
        models = {p: load_ct_model(export, "cpu", precision=p) for p in ("fp32", "bf16")}
        built = M.load_model_dir(export, "cpu", text=False)[0]  # as built: channels-first, its batch norms apart (CTModel folds them)
        size = models["fp32"].net.cfg.input_size
        volume = torch.from_numpy(rng.normal(0, 1, (1, 1, *size)).astype(np.float32))

        def built_embedding(low: bool) -> np.ndarray:
            with torch.autocast("cpu", torch.bfloat16, enabled=low):
                return stock(lambda: torch.nn.functional.normalize(built.encode_image(volume).float(), dim=-1))

        measure(f"CT volume embeddings (the demo's CT model, {'x'.join(map(str, size))}; CTModel.embed_volume)", "volumes/s", 1,
                default_threads, lambda: models["fp32"].embed_volume(volume), lambda: models["bf16"].embed_volume(volume),
                lambda: built_embedding(False), "params.yaml ct.base_model randomly initialised (seed 0)", lambda: built_embedding(True))
        real = [224, 224, 160]
        torch.manual_seed(0)
        encoder = M.build_image_encoder(M.VolumeModelConfig(input_size=real, image_encoder=args.ct_real_encoder, image_width=64)).eval()
        as_run = {p: M.for_inference(copy.deepcopy(encoder), channels_last_volumes(cpu, p)) for p in ("fp32", "bf16")}  # as CTModel has it
        big = torch.from_numpy(rng.normal(0, 1, (1, 1, *real)).astype(np.float32))

        @torch.no_grad()
        def embed(precision: Literal["bf16", "fp32"], net: torch.nn.Module | None = None) -> np.ndarray:
            with inference_precision(cpu, precision):
                out = (net or as_run[precision])(big)
            return out.float().reshape(1, -1).numpy()

        measure(f"CT image encoder forward ({args.ct_real_encoder}, stem width 64, 224x224x160, batch 1)", "volumes/s", 1,
                default_threads, lambda: embed("fp32"), lambda: embed("bf16"), lambda: stock(lambda: encoder(big)),
                "the real setting's input size; the encoder's features before the projection, randomly initialised (seed 0), "
                "under the same autocast CTModel uses", lambda: embed("bf16", encoder))
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
