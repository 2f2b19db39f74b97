"""Image-caption quality scores for the optional top-k% curation filter (as SkyScript and DataComp do)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from pipelines.io.png import open_rgb

if TYPE_CHECKING:
    from pipelines.models.clip import ModelSpec

QualityScorer = Callable[[list[bytes], list[str]], np.ndarray]


def make_clip_scorer(spec: "ModelSpec", batch_size: int = 64, device: str = "auto") -> QualityScorer:
    """A scorer returning the cosine similarity of each encoded image with its caption under `spec`.

    `device` auto runs on the GPU when there is one (bf16 autocast, pipelines/infer/device.py), else the
    CPU; batches of `batch_size` pairs, with a progress bar on a terminal.
    """
    # torch and open_clip only when a curation actually scores: plain curation runs no model.
    import torch
    from tqdm import tqdm

    from pipelines.infer.device import inference_precision, resolve_device
    from pipelines.infer.text import encode_texts
    from pipelines.models.clip import load_model

    where = resolve_device(device)
    loaded = load_model(spec, device=where)
    model = loaded.model.eval()

    @torch.no_grad()
    def score(images: list[bytes], captions: list[str]) -> np.ndarray:
        scores: list[np.ndarray] = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc="quality", unit="batch", disable=None if len(starts) > 1 else True):
            batch = images[start : start + batch_size]
            pixels = torch.stack([loaded.preprocess_val(open_rgb(b)) for b in batch]).to(where)
            with inference_precision(where):
                image_emb = model.encode_image(pixels, normalize=True)
            text_emb = encode_texts(model, loaded.tokenizer, captions[start : start + batch_size], where, batch_size)
            scores.append((image_emb.float().cpu() * text_emb).sum(-1).numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    return score
