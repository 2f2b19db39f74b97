"""An exported open_clip model (a `local-dir:` folder written by `domainfm export`) at work.

```python
encoder = ClipEncoder.load("exports/remote_sensing")
classifier = encoder.zero_shot(["water", "forest"], ["a satellite image of {c}."])
probabilities = classifier.probabilities(encoder.embed_images(images))  # (n, 2), rows sum to 1
```
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from pipelines.errors import InputError
from pipelines.infer.cache import weights_fingerprint
from pipelines.infer.device import Precision, ResolvedPrecision, inference_precision, resolve_device, resolve_precision
from pipelines.infer.hubness import HubnessBank, read_bank
from pipelines.infer.text import encode_texts
from pipelines.models.clip import WEIGHTS_FILE
from pipelines.models.folders import export_kind
from pipelines.models.weights import weights_not_drawn

# Pillow filters torch's antialiased interpolation reimplements for uint8 images (ClipEncoder.to_batch)
_TORCH_FILTERS = {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.BICUBIC: "bicubic"}
BATCH_RESIZE = "torch-aa"  # how to_batch resizes: part of the embeddings' identity (the caches' keys)


def resize_batch(images: Sequence[np.ndarray], size: tuple[int, int], mode: str) -> np.ndarray:
    """HxWx3 uint8 images of one shape resized together to `size` (height, width), as (n, height, width, 3) uint8.

    Torch's antialiased uint8 kernel, which reimplements Pillow's filters (`mode` "bilinear" or
    "bicubic"); the batch is passed as (n, 3, H, W), a view of (n, H, W, 3): channels last, the
    layout of the kernel's vectorised path.
    """
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return F.interpolate(batch, size=size, mode=mode, antialias=True).permute(0, 2, 3, 1).numpy()


def embed_image_batch(model: torch.nn.Module, batch: torch.Tensor, device: torch.device,
                      precision: ResolvedPrecision | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings (n, embed_dim), on the CPU, of preprocessed images (n, 3, H, W) run on `device`.

    `precision` as `inference_precision` takes it (None: the pipeline stages' rule, bf16 on a GPU).
    """
    with torch.no_grad(), inference_precision(device, precision):
        emb = model.encode_image(batch.to(device, non_blocking=True), normalize=True)
    return F.normalize(emb.float(), dim=-1).cpu().numpy()


@dataclass
class ZeroShotClassifier:
    """Class embeddings (from class names and prompt templates) and the model's temperature."""

    classnames: list[str]
    weights: torch.Tensor  # (embed_dim, n_classes), columns L2-normalised
    logit_scale: float

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Softmax over classes of the scaled cosine similarities, (n, n_classes) float32."""
        logits = torch.from_numpy(np.asarray(image_embeddings, np.float32)) @ self.weights * self.logit_scale
        return torch.softmax(logits, dim=1).numpy()


class ClipEncoder:
    """Batched image and text embeddings of an exported open_clip model, on the best device."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], tokenizer: Any,
                 device: torch.device, fingerprint: str, folder: Path | None = None, precision: Precision = "auto") -> None:
        self.model, self.preprocess, self.tokenizer, self.device = model.eval().to(device), preprocess, tokenizer, device
        self.precision = resolve_precision(device, precision)  # "bf16" or "fp32": how images and texts are embedded
        self.fingerprint = fingerprint  # identifies the weights
        self.folder = folder  # the export it was loaded from, if any
        self._class_weights: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}  # zero_shot's, by prompts

    @property
    def embeddings_identity(self) -> str:
        """What the embedding caches key this encoder's embeddings by: its weights, its precision and `to_batch`'s resize.

        bf16's embeddings differ from fp32's, and torch's resize (`BATCH_RESIZE`) from Pillow's, which it replaced.
        """
        return f"{self.fingerprint}-{self.precision}-{BATCH_RESIZE}"

    def __str__(self) -> str:
        """The export's folder, or (a model built in this process) the weights' fingerprint: what summaries name the model by."""
        return str(self.folder) if self.folder is not None else f"ClipEncoder {self.fingerprint}"

    def hubness_bank(self) -> HubnessBank | None:
        """The hubness bank the export ships (pipelines/infer/hubness.py), or None."""
        return read_bank(self.folder) if self.folder is not None else None

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "auto", precision: Precision = "auto") -> ClipEncoder:
        """Load `export_dir` (open_clip's local-dir format); InputError when it is another kind of model.

        `precision`: "auto" embeds in bf16 where the device computes it natively, else in fp32
        (pipelines.infer.device).
        """
        import open_clip

        folder = Path(export_dir)
        if export_kind(folder) != "open_clip":
            raise InputError(f"{folder} holds a volume model; this command needs an image (open_clip) export")
        with weights_not_drawn():  # the export's weights replace them all (open_clip loads them strictly)
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", weights_only=True)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        return cls(model, preprocess, tokenizer, resolve_device(device), weights_fingerprint(folder / WEIGHTS_FILE), folder, precision)

    def to_tensor(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """The model input for one RGB image (HxWx3 uint8 array or PIL image)."""
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
        return self.preprocess(pil.convert("RGB"))

    def to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The model inputs (n, 3, H, W) of RGB images (HxWx3 uint8): `to_tensor`'s, stacked, square images resized by torch.

        With open_clip's usual preprocessing (resize, centre crop, to tensor, normalise) images
        already at the input size are used as they are (the pipeline leaves them so), and the tensor
        conversion and normalisation run once on the whole batch: the same float operations on the
        same values as `to_tensor`. Square images of another size (slide tiles, scene windows) are
        resized all at once by torch's antialiased uint8 kernel with the pipeline's filter, which
        reimplements Pillow's: bilinear gives Pillow's bytes, bicubic bytes within 2 grey levels
        of them on about 0.3% of values (tests/test_infer.py), at a seventh of the time (0.06 ms a
        224 px tile against Pillow's 0.42 for the demo's 64 px input). Other images are resized and
        cropped one by one by the pipeline's own (Pillow) steps, exactly as `to_tensor` does.
        """
        plain = _plain_normalisation(self.preprocess)
        arrays = [np.asarray(im) for im in images]
        if plain is None or not arrays or any(a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 for a in arrays):
            return torch.stack([self.to_tensor(im) for im in images])
        side, mean, std = plain
        resize, crop = self.preprocess.transforms[:2]
        torch_filter = _TORCH_FILTERS.get(resize.interpolation)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            if a.shape[:2] != (side, side):
                by_shape.setdefault(a.shape, []).append(i)
        for shape, where in by_shape.items():
            if torch_filter is not None and shape[0] == shape[1]:  # the resize is to side x side: the crop keeps it whole
                for i, pixels in zip(where, resize_batch([arrays[i] for i in where], (side, side), torch_filter)):
                    arrays[i] = pixels
            else:
                for i in where:
                    arrays[i] = np.asarray(crop(resize(Image.fromarray(arrays[i]))))
        # one pass from (n, H, W, 3) bytes to (n, 3, H, W) floats, then the same divisions in place
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.get_default_dtype(), memory_format=torch.contiguous_format)
        batch.div_(255)
        return batch.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """L2-normalised embeddings (n, embed_dim) of preprocessed images (n, 3, H, W)."""
        return embed_image_batch(self.model, batch, self.device, self.precision)

    def embed_images(self, images: Sequence[np.ndarray | Image.Image], batch_size: int = 64) -> np.ndarray:
        """L2-normalised embeddings of RGB images, batch by batch."""
        chunks = [self.embed_tensors(torch.stack([self.to_tensor(im) for im in images[i:i + batch_size]]))
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings (n, embed_dim), batch by batch (`pipelines.infer.text.encode_texts`)."""
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        return encode_texts(self.model, self.tokenizer, texts, self.device, batch_size, self.precision).numpy()

    @functools.cached_property
    def embed_dim(self) -> int:
        """Size of the shared embedding space."""
        return int(self.embed_texts(["x"]).shape[1])

    def zero_shot(self, classnames: Sequence[str], templates: Sequence[str]) -> ZeroShotClassifier:
        """Class embeddings as the mean of each class's normalised prompt embeddings (CLIP_benchmark's recipe).

        The prompts are embedded once per encoder for the same class names and templates (a notebook
        mapping slide after slide, or scene after scene, with one loaded model); each call returns
        its own copy of the weights.
        """
        from pipelines.evaluate.zero_shot import build_zero_shot_classifier

        if not classnames:
            raise InputError("no class names given: pass --classes a,b,c or --classes-file")
        if len(set(classnames)) != len(classnames):
            raise InputError(f"class names repeat: {', '.join(c for c in classnames if list(classnames).count(c) > 1)}")
        key = (tuple(classnames), tuple(templates))
        if key not in self._class_weights:
            weights = build_zero_shot_classifier(self.model, self.tokenizer, list(classnames), list(templates), self.device)
            self._class_weights[key] = weights.float().cpu()
        scale = float(self.model.logit_scale.exp().item()) if hasattr(self.model, "logit_scale") else 100.0
        return ZeroShotClassifier(list(classnames), self._class_weights[key].clone(), scale)


def _plain_normalisation(preprocess: Any) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(input side n, mean, std) when `preprocess` is open_clip's inference pipeline, else None.

    That pipeline, Resize(n) -> CenterCrop(n) -> RGB -> ToTensor -> Normalize, maps an n x n RGB
    uint8 image to (x / 255 - mean) / std: torchvision's Resize returns an image of the size asked as
    it is; any other image is first resized and cropped to n x n by the pipeline's own first two steps.
    """
    steps = list(getattr(preprocess, "transforms", []))
    if [type(t).__name__ for t in steps] != ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    resize, crop, convert, _, normalize = steps
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else tuple(resize.size))
    side = size if isinstance(size, int) else (size[0] if size[0] == size[1] else None)
    if side is None or tuple(crop.size) != (side, side) or getattr(convert, "mode", None) != "RGB":
        return None
    if normalize.inplace or resize.max_size is not None:
        return None
    dtype = torch.get_default_dtype()
    return side, torch.as_tensor(normalize.mean, dtype=dtype), torch.as_tensor(normalize.std, dtype=dtype)
