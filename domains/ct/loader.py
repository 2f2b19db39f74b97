"""Load an exported CT model and use it from plain Python.

```python
from domains.ct.loader import load_ct_model

model = load_ct_model("exports/ct")                  # offline: everything is in the folder
v = model.embed_image("scan.nii.gz")                 # np.ndarray (embed_dim,), L2-normalised
t = model.embed_text(["no pleural effusion"])        # np.ndarray (n, embed_dim), L2-normalised
similarity = t @ v
p = model.phenotype_probabilities("scan.nii.gz")     # {phenotype id: probability}
```

`embed_image` runs the same MONAI preprocessing as curation (domains/ct/curation/preprocess.py, with the
settings saved in EXPORT/preprocess.json): reorientation to RAS, resampling, HU windowing,
pad/crop. Weights are read from safetensors only.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from pipelines.io.volume_shards import VolumeSample
from pipelines.models import volume as M
from pipelines.models.report_text import tokenize
from pipelines.models.volume import volume_batch

if TYPE_CHECKING:  # preprocess (MONAI) is imported only when a file is loaded
    from domains.ct.curation.preprocess import PreprocessConfig

PREPROCESS_FILE = "preprocess.json"


class CTModel:
    """Inference wrapper around a trained VolumeCLIP: image/text embeddings and phenotype probabilities."""

    def __init__(self, net: M.VolumeCLIP, tokenizer: Any, phenotypes: list[str], preprocess: dict[str, Any],
                 device: str | torch.device = "cpu") -> None:
        self.net, self.tokenizer, self.phenotypes = net.eval(), tokenizer, list(phenotypes)
        self.preprocess_settings = dict(preprocess)
        self.device = torch.device(device)
        self.embed_dim = net.cfg.embed_dim

    def _preprocess_config(self) -> PreprocessConfig:
        from domains.ct.curation.preprocess import PreprocessConfig

        names = {f.name for f in fields(PreprocessConfig)}
        return PreprocessConfig(**{k: v for k, v in self.preprocess_settings.items() if k in names})

    def load_volume(self, nifti_path: str | Path, cache_dir: Optional[Path] = None) -> torch.Tensor:
        """(1, 1, X, Y, Z) float32 model input for a NIfTI file (or DICOM folder), as curation makes it."""
        from domains.ct.curation.preprocess import preprocess_volume

        array, _meta, _hit = preprocess_volume(Path(nifti_path), self._preprocess_config(), cache_dir)
        array = np.asarray(array, dtype=np.float32)
        sample = VolumeSample("x", array if array.ndim == 4 else array[None], "", "", "", {}, [], "x")
        return volume_batch([sample], self.net.cfg.input_size)  # resampled if the model's size differs

    @torch.no_grad()
    def embed_volume(self, volume: torch.Tensor) -> np.ndarray:
        """Embeddings (B, embed_dim) for already preprocessed volumes (B, 1, X, Y, Z)."""
        return self.net.encode_image(volume.to(self.device)).float().cpu().numpy()

    def embed_image(self, nifti_path: str | Path) -> np.ndarray:
        """L2-normalised image embedding (embed_dim,) of one CT volume file."""
        return self.embed_volume(self.load_volume(nifti_path))[0]

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised report embeddings (n, embed_dim)."""
        tokens = tokenize(self.tokenizer, list(texts), self.net.cfg.context_length)
        return self.net.encode_text(**{k: v.to(self.device) for k, v in tokens.items()}).float().cpu().numpy()

    @torch.no_grad()
    def phenotype_probabilities(self, nifti_path: str | Path) -> dict[str, float]:
        """{phenotype id: sigmoid probability} for one CT volume file."""
        logits = self.net.phenotype_logits(self.load_volume(nifti_path).to(self.device))[0]
        return {p: float(v) for p, v in zip(self.phenotypes, torch.sigmoid(logits.float()).tolist())}


def load_ct_model(export_dir: str | Path, device: str | torch.device = "cpu") -> CTModel:
    """Load an export folder (or a training output folder) written by domainfm."""
    export_dir = Path(export_dir)
    net, tokenizer, phenotypes = M.load_model_dir(export_dir, device)
    pre_path = export_dir / PREPROCESS_FILE
    preprocess = json.loads(pre_path.read_text()) if pre_path.is_file() else {"spatial_size": list(net.cfg.input_size)}
    return CTModel(net, tokenizer, phenotypes, preprocess, device)
