"""What every benchmark shares: the machine line and the atomic write of the JSON contract (report.py has the contract).

Imported by the scripts beside it (`python benchmarks/<name>.py` puts this folder first on the path).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# Files nobody here made (MANIFEST.md there gives sources and licences): beside the repository, as the tests find them
REALDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"


def machine() -> str:
    """CPU model, cores and torch version, for the JSON contract."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "absent"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch_version}"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (a temporary file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def module_at(rev: str, path: str, folder: Path) -> Any | None:
    """The project's file `path` (e.g. domains/pathology/curation/slides.py) as at git revision `rev`, imported as a module of its own.

    Named `<stem>_baseline_<rev>` (two revisions of one file load side by side); its imports are this
    checkout's modules. None without git or that revision.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = f"{Path(path).stem}_baseline_{re.sub(r'[^0-9A-Za-z_]', '_', rev)}"  # HEAD~1 -> HEAD_1
    copy = Path(folder) / f"{name}.py"
    copy.write_text(text)
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def open_clip_embed(model: Any, batch: Any) -> Any:
    """L2-normalised embeddings (n, D) as a plain loop gets them from open_clip's model as it loads.

    Its fp32 forward under no_grad, with torch's default kernels (not `inference_precision`'s), as a numpy array.
    """
    import torch

    with torch.no_grad():
        return model.encode_image(batch, normalize=True).numpy()


def random_model(folder: Path, arch: str = "domainfm-tiny") -> Path:
    """An open_clip architecture (the demo's tiny one by default) randomly initialised (seed 0), as a local-dir (an export without a card).

    Any open_clip config name works, e.g. ViT-B-32 for a model of realistic size: built here, nothing is downloaded.
    """
    import torch

    from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

    torch.manual_seed(0)
    spec = ModelSpec(arch)
    save_open_clip_dir(load_model(spec).model, model_config_of(spec), Path(folder) / "model")
    return Path(folder) / "model"


def random_ct_export(folder: Path) -> Path:
    """The demo's CT model (params.yaml ct.base_model) randomly initialised (seed 0), as an export with the demo curation's preprocessing.

    Its tokenizer is fitted to the CT finding prompts, which the export ships embedded as `domainfm export ct`
    writes them (`export_volume`); `domainfm predict ct` loads it as it loads a real export.
    """
    import tempfile

    import torch
    import yaml

    from domains.ct.prompts import FINDING_PROMPTS
    from pipelines.export.volume import export_volume
    from pipelines.models import volume
    from pipelines.models.report_text import train_wordpiece_tokenizer

    params = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())["ct"]
    cfg = volume.VolumeModelConfig(**params["base_model"])
    corpus = [text for prompts in FINDING_PROMPTS.values() for text in (*prompts["positive"], *prompts["negative"])]
    tokenizer = train_wordpiece_tokenizer(corpus, cfg.vocab_size, cfg.context_length)
    torch.manual_seed(0)
    # phecodes (chronic airway obstruction, type 2 diabetes, essential hypertension): only the head's size matters
    phenotypes = ["496", "250.2", "401.1"]
    with tempfile.TemporaryDirectory() as trained:
        volume.save_model_dir(volume.build_model(cfg, phenotypes, tokenizer), phenotypes, tokenizer, Path(trained))
        export_volume(Path(trained), folder, prompts=FINDING_PROMPTS)
    curate = params["curate"]
    (folder / "preprocess.json").write_text(json.dumps({"pixdim": curate["pixdim"], "spatial_size": curate["spatial_size"]}))
    return folder


def synthetic_scene(size: int, folder: Path, edge_nodata_px: int = 0) -> Path:
    """A size x size px, 1 m, 3-band uint8 tiled GeoTIFF (EPSG:32631) of the demo landscape, mirrored to size.

    With `edge_nodata_px`, that many columns on the right are nodata (0) and the landscape itself never
    is (its zeros become 1), as at a swath edge.
    """
    import numpy as np
    import rasterio

    from domains.remote_sensing.demo.demo_data import render_landscape

    block = min(size, 1024)
    rgb, _, _ = render_landscape(block, 1.0, 0)
    if edge_nodata_px:
        rgb = np.maximum(rgb, 1)  # 0 is nodata
    reps = -(-size // block)
    rows = [np.concatenate([rgb if (i + j) % 2 == 0 else rgb[:, ::-1] for j in range(reps)], axis=1) for i in range(reps)]
    image = np.concatenate([r if i % 2 == 0 else r[::-1] for i, r in enumerate(rows)], axis=0)[:size, :size].copy()
    if edge_nodata_px:
        image[:, size - edge_nodata_px:] = 0
    path = Path(folder) / f"synthetic-{size}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32631",
                       transform=rasterio.transform.from_origin(372_000, 4_834_000, 1.0, 1.0), nodata=0, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", photometric="RGB") as dst:
        dst.write(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return path


def threads_label(count: int, default_threads: int) -> str:
    """"2 torch threads (torch default)", "1 torch thread": how a row names the thread count it ran at."""
    return f"{count} torch thread{'s' if count > 1 else ''}{' (torch default)' if count == default_threads else ''}"


def readers_label(at_once: int, workers: int) -> str:
    """Who reads the windows in a mapping row: reader threads (a GPU, or workers=0), else each model thread its own batches."""
    return f"{workers} reader threads" if at_once == 1 or not workers else "each model thread reads its own batches"


def versus_plain_loop_rows(n: int, medians: dict[str, float], figures: dict[str, str], unit: str, item: str,
                           at: str, repeats: int, notes: str, unbarred: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The mapping benchmarks' rows: each of `figures` (medians key -> figure text) against medians["plain"].

    The peer is the plain loop a user would write: read, preprocess, embed (batch of 1) and score one
    `item` at a time; `n` items in each timed run; the bar is issue 16's 3x, except for the keys in
    `unbarred` (a re-map from the embedding cache is not the bar's figure).
    """
    peer = f"plain loop: read, preprocess, embed (batch of 1) and score one {item} at a time"
    return [{"figure": f"{figure}, {at}", "unit": unit, "ours": round(n / medians[key], 2), "peer": peer,
             "peer_value": round(n / medians["plain"], 2), "ratio": round(medians["plain"] / medians[key], 3),
             "bar": None if key in unbarred else 3.0, "repeats": repeats, "notes": notes} for key, figure in figures.items()]
