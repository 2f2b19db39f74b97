"""Image-caption quality scores for the optional top-k% curation filter (as SkyScript and DataComp do)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pipelines.models.clip import ModelSpec

QualityScorer = Callable[[list[bytes], list[str]], np.ndarray]


def make_clip_scorer(spec: "ModelSpec", batch_size: int = 64, device: str = "cpu") -> QualityScorer:
    """A scorer returning the cosine similarity of each encoded image with its caption under `spec`."""
    # torch and open_clip only when a curation actually scores: plain curation runs no model.
    import torch

    from pipelines.models.clip import load_model

    loaded = load_model(spec, device=device)
    model = loaded.model.eval()

    @torch.no_grad()
    def score(images: list[bytes], captions: list[str]) -> np.ndarray:
        scores: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            pixels = torch.stack([loaded.preprocess_val(Image.open(io.BytesIO(b)).convert("RGB")) for b in batch]).to(device)
            tokens = loaded.tokenizer(captions[start : start + batch_size]).to(device)
            image_emb = model.encode_image(pixels, normalize=True)
            text_emb = model.encode_text(tokens, normalize=True)
            scores.append((image_emb * text_emb).sum(-1).float().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    return score
