"""The WiSE-FT curve: in-domain and general zero-shot scores of base/adapted weight interpolations, per alpha.

One row per alpha (pipelines/models/wise.py builds each model): `alpha`, `zeroshot_acc1`,
`zeroshot_mean_per_class_recall` (the domain's held-out zero-shot set) and `general_acc1`,
`general_mean_per_class_recall` (the generic set, params `<domain>.evaluate.general`); a set that is
absent leaves its columns out. Written as a JSON list (OUT/wise.json), which `dvc plots` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from pipelines.evaluate.clip import ZeroShotSet, score_zeroshot
from pipelines.io.atomic import atomic_write_json

CURVE_METRICS = ("acc1", "mean_per_class_recall")
WISE_FILE = "wise.json"


def wise_curve(
    model_at: Callable[[float], nn.Module],
    alphas: Sequence[float],
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    sets: dict[str, ZeroShotSet],
    device: str | torch.device,
    batch_size: int,
) -> list[dict[str, float]]:
    """Score `model_at(alpha)` on every set of `sets` ({"zeroshot": ..., "general": ...}) for each alpha."""
    rows = []
    for alpha in alphas:
        model = model_at(alpha).to(device).eval()
        row = {"alpha": float(alpha)}
        for name, found in sets.items():
            metrics = score_zeroshot(model, preprocess, tokenizer, found, device, batch_size)[2]
            row.update({f"{name}_{m}": float(metrics[m]) for m in CURVE_METRICS})
        rows.append(row)
        print("wise: " + "  ".join(f"{k}={v:.4f}" for k, v in row.items()))
    return rows


def write_wise(path: Path, rows: list[dict[str, float]]) -> None:
    """OUT/wise.json: the rows (a JSON list, [] when nothing was swept), atomically."""
    atomic_write_json(Path(path), rows)
