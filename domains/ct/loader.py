"""Load an exported CT model and use it from plain Python.

```python
from domains.ct.loader import load_ct_model

model = load_ct_model("exports/ct")                  # offline: everything is in the folder
v = model.embed_image("scan.nii.gz")                 # np.ndarray (embed_dim,), L2-normalised
t = model.embed_text(["no pleural effusion"])        # np.ndarray (n, embed_dim), L2-normalised
similarity = t @ v
p = model.phenotype_probabilities("scan.nii.gz")     # {phenotype id: probability}

prepared = model.prepare("study_dicom/", series=None)  # curation's checks; InputError naming the input
embedding, probabilities = model.predict_volume(prepared.tensor())
scores = model.finding_scores(embedding, FINDING_PROMPTS)  # Merlin's positive-vs-negative prompts
```

`embed_image` runs the same MONAI preprocessing as curation (domains/ct/curation/preprocess.py, with the
settings saved in EXPORT/preprocess.json): reorientation to RAS, resampling, HU windowing,
pad/crop. Weights are read from safetensors only.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from pipelines.errors import InputError
from pipelines.infer.cache import EmbeddingCache, weights_fingerprint
from pipelines.infer.device import Precision, channels_last_volumes, inference_precision, resolve_device, resolve_precision
from pipelines.io.volume_shards import VolumeSample
from pipelines.models import volume as M
from pipelines.models.report_text import TextEncoderNotLoaded
from pipelines.models.volume import volume_batch

if TYPE_CHECKING:  # preprocess is imported only when a file is loaded
    from domains.ct.curation.preprocess import PreprocessConfig

PREPROCESS_FILE = "preprocess.json"
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of the learned temperature


@dataclass
class PreparedVolume:
    """One CT input after the curation's loading, checks and preprocessing (what the model sees).

    Only geometry and the modality are kept from the input's headers: no DICOM identifier or date.
    """

    name: str  # the NIfTI file's name without .nii/.nii.gz, or the DICOM folder's (or .dcm file's) name
    kind: str  # "nifti" or "dicom"
    array: np.ndarray  # (1, X, Y, Z) float32 in [0, 1] (HU window a_min..a_max), voxel axes towards R, A, S
    modality: str  # "CT" (DICOM Modality) or "CT (by air fraction)" for NIfTI
    input_shape: list[int]
    input_spacing_mm: list[float]
    output_spacing_mm: list[float]
    notes: list[str] = field(default_factory=list)  # caveats of the loader (e.g. non-DICOM files skipped), without file names

    def tensor(self) -> torch.Tensor:
        """The volume as a batch of one, (1, 1, X, Y, Z)."""
        return torch.from_numpy(np.ascontiguousarray(self.array))[None]


@dataclass
class FindingScore:
    """Merlin's zero-shot score of one finding: the image against its positive and negative phrasings."""

    finding: str
    mean_positive_similarity: float  # mean cosine similarity of the image to the positive prompts
    mean_negative_similarity: float  # ... and to the negative prompts
    probability: float  # softmax(logit_scale * [positive, negative])[0]


def dicom_series(path: Path) -> dict[str, tuple[list[Path], str, int]]:
    """{SeriesInstanceUID: (files, modality, number of slices)} of the image series under a DICOM folder or file.

    Files are sorted out by the curation's reader (non-DICOM files and image-less DICOM are skipped;
    a DICOM file that cannot be read is an InputError naming it).
    """
    from domains.ct.curation.volumes import VolumeError, _read_slices

    path = Path(path)
    try:
        series, _skipped = _read_slices(path)
    except VolumeError as exc:
        raise InputError(_volume_error_message(path, exc)) from None
    return {uid: ([f for f, _ in items], str(items[0][1].get("Modality", "") or "?"), len(items)) for uid, items in series.items()}


def _volume_error_message(path: Path, exc: Exception) -> str:
    member = getattr(exc, "member", "")
    where = f"{path}/{member}" if member else str(path)
    return f"{where}: refused as curation refuses it: {exc}"


def _one_series(path: Path, series: Optional[str], workdir: Path) -> Path:
    """The DICOM input to preprocess, or an InputError when the choice of series is missing or wrong.

    That is `path` itself when it holds one series (the one asked for, if any), else a folder of links
    to the files of `series` under `workdir`.
    """
    found = dicom_series(path)
    listed = ", ".join(f"{uid or '(no UID)'} ({modality}, {n} slices)"
                       for uid, (_, modality, n) in sorted(found.items(), key=lambda kv: (-kv[1][2], kv[0])))
    if series is None:
        if len(found) > 1:
            raise InputError(f"{path}: {len(found)} DICOM series; pick one with --series UID (series=UID in Python): {listed}")
        return path
    if series not in found:
        raise InputError(f"{path}: no DICOM series {series}; the folder holds: {listed or 'no readable DICOM images'}")
    if len(found) == 1:
        return path
    root = path if path.is_dir() else path.parent
    subset = workdir / path.name
    for f in found[series][0]:
        link = subset / f.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(f.resolve(), link)
        except OSError:  # no symlinks (some file systems, Windows without the privilege): copy
            shutil.copy2(f, link)
    return subset


class CTModel:
    """Inference wrapper around a trained VolumeCLIP: image/text embeddings and phenotype probabilities.

    `net` is made ready for inference in place (`M.for_inference`: eval mode, an I3D encoder's batch norms
    folded into its convolutions, its weights channels-last where `channels_last_volumes` says that pays).
    A model `load_ct_model` reads leaves its text encoder on disk (and `tokenizer` None) until text is
    first embedded. It starts with the finding prompts' embeddings its export ships and keeps other
    prompts' in `prompt_cache`: a prediction with prompts embedded before builds no text encoder at all.
    """

    def __init__(self, net: M.VolumeCLIP, tokenizer: Any, phenotypes: list[str], preprocess: dict[str, Any],
                 device: str | torch.device = "cpu", precision: Precision = "auto") -> None:
        self.net, self.tokenizer, self.phenotypes = net, tokenizer, list(phenotypes)
        self.preprocess_settings = dict(preprocess)
        self.device = torch.device(device)
        # volumes are embedded in it ("auto": bf16 where the device computes it natively); texts in fp32, as the export's
        self.precision = resolve_precision(self.device, precision)
        M.for_inference(net, channels_last_volumes(self.device, self.precision))  # BNs folded; channels-last where that pays
        self.embed_dim = net.cfg.embed_dim
        self.export_dir: Optional[Path] = None  # the folder it was loaded from (set by load_ct_model)
        self.prompt_cache: Optional[EmbeddingCache] = None  # prompt embeddings on disk, per weights (set by load_ct_model)
        self._prompt_embeddings: dict[str, np.ndarray] = {}  # text -> embedding, for finding_scores

    @property
    def logit_scale(self) -> float:
        """The learned temperature exp(logit_scale), clamped at 100 as in CLIP."""
        return min(float(self.net.logit_scale.detach().exp()), MAX_LOGIT_SCALE)

    @property
    def is_demo(self) -> bool:
        """True for the demo family (demo text model, trained on the synthetic phantoms)."""
        from pipelines.models.report_text import DEMO_TEXT_MODEL

        return self.net.cfg.text_model == DEMO_TEXT_MODEL

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

    def prepare(self, path: str | Path, series: Optional[str] = None) -> PreparedVolume:
        """Load, check and preprocess a NIfTI file or DICOM series folder exactly as curation does.

        Refused with an InputError naming the input: a missing path, a file that cannot be read (truncated),
        an MR or other non-CT volume, too few slices, a DICOM series with gaps... (the curation's reasons);
        a DICOM folder with several series unless `series` names one of them (the message lists them).
        """
        from domains.ct.curation.preprocess import preprocess_volume
        from domains.ct.curation.volumes import VolumeError, study_id_of, volume_kind

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        kind = volume_kind(path)
        if kind not in ("nifti", "dicom"):
            raise InputError(f"{path}: not a CT volume (a .nii/.nii.gz file, a DICOM series folder or a .dcm file is needed)")
        if series is not None and kind != "dicom":
            raise InputError(f"{path}: a series was named ({series}) but the input is a NIfTI file, not a DICOM folder")
        with tempfile.TemporaryDirectory(prefix="domainfm-series-") as workdir:
            try:
                source = _one_series(path, series, Path(workdir)) if kind == "dicom" else path
                array, meta, _hit = preprocess_volume(source, self._preprocess_config(), None)
            except VolumeError as exc:
                raise InputError(_volume_error_message(path, exc)) from None
        affine = np.asarray(meta["output_affine"], dtype=float)
        notes: dict[str, int] = {}
        for _member, note in meta.get("warnings", []):  # file names inside a DICOM folder may carry UIDs: dropped
            notes[note] = notes.get(note, 0) + 1
        return PreparedVolume(
            name=study_id_of(path), kind=kind, array=np.asarray(array, dtype=np.float32), modality=str(meta["modality"]),
            input_shape=[int(v) for v in meta["input_shape"]], input_spacing_mm=[float(v) for v in meta["input_spacing_mm"]],
            output_spacing_mm=[round(float(v), 4) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))],
            notes=[f"{note} ({n} files)" if n > 1 else note for note, n in notes.items()],
        )

    @torch.no_grad()
    def predict_volume(self, volume: torch.Tensor) -> tuple[np.ndarray, dict[str, float]]:
        """(L2-normalised embedding (embed_dim,), {phenotype id: sigmoid probability}) from one forward pass.

        `volume` is preprocessed, (1, 1, X, Y, Z); another size than the model's input is resampled to it.
        """
        sample = VolumeSample("x", volume[0].cpu().numpy(), "", "", "", {}, [], "x")
        batch = volume_batch([sample], self.net.cfg.input_size).to(self.device)
        with inference_precision(self.device, self.precision):
            out = self.net(batch)
        embedding = torch.nn.functional.normalize(out["image_features"].float(), dim=-1)[0].cpu().numpy()
        probabilities = torch.sigmoid(out["phenotype_logits"].float())[0].tolist()
        return embedding, {p: float(v) for p, v in zip(self.phenotypes, probabilities)}

    def finding_scores(self, embedding: np.ndarray, prompts: dict[str, dict[str, list[str]]]) -> list[FindingScore]:
        """Merlin's zero-shot findings for one image embedding, in the order of `prompts`.

        For each finding: the mean cosine similarity of the image to its positive and to its negative
        prompts, and probability = softmax(logit_scale * [mean positive, mean negative])[0], i.e.
        sigmoid(logit_scale * (positive - negative)). It is above 0.5 exactly when Merlin's rule
        (positive > negative) calls the finding present.
        """
        similarity = self.embed_prompts(prompts) @ np.asarray(embedding, np.float32)
        scores, start = [], 0
        for finding, p in prompts.items():
            n_pos, n_neg = len(p["positive"]), len(p["negative"])
            pos = float(similarity[start:start + n_pos].mean())
            neg = float(similarity[start + n_pos:start + n_pos + n_neg].mean())
            start += n_pos + n_neg
            probability = float(torch.sigmoid(torch.tensor(self.logit_scale * (pos - neg))))
            scores.append(FindingScore(finding, pos, neg, probability))
        return scores

    @torch.no_grad()
    def embed_volume(self, volume: torch.Tensor) -> np.ndarray:
        """Embeddings (B, embed_dim) for already preprocessed volumes (B, 1, X, Y, Z)."""
        with inference_precision(self.device, self.precision):
            embeddings = self.net.encode_image(volume.to(self.device))
        return torch.nn.functional.normalize(embeddings.float(), dim=-1).cpu().numpy()  # unit length in fp32, whatever the precision

    def embed_image(self, nifti_path: str | Path) -> np.ndarray:
        """L2-normalised image embedding (embed_dim,) of one CT volume file."""
        return self.embed_volume(self.load_volume(nifti_path))[0]

    def embed_prompts(self, prompts: dict[str, dict[str, list[str]]]) -> np.ndarray:
        """Embeddings (n, embed_dim) of the prompts of `prompts`, finding by finding, positives then negatives.

        Each text is embedded once per model (the next volume only pays for its own forward pass) and
        kept in `prompt_cache` (the next process neither embeds it nor builds the text encoder).
        """
        texts = M.prompt_texts(prompts)
        new = [t for t in dict.fromkeys(texts) if t not in self._prompt_embeddings]
        if new:
            self._prompt_embeddings.update(zip(new, self._embed_new_prompts(new)))
        return np.stack([self._prompt_embeddings[t] for t in texts]) if texts else np.zeros((0, self.embed_dim), np.float32)

    def _embed_new_prompts(self, texts: list[str]) -> np.ndarray:
        """`embed_text(texts)`, kept in `prompt_cache`: found there, no text encoder is built."""
        cache, key = self.prompt_cache, self._prompt_key(texts)
        if cache is None or key is None:
            return self.embed_text(texts)
        found = cache.load(key)
        if found is not None and [w.get("text") for w in found[1]] == texts:
            return found[0]
        embeddings = self.embed_text(texts)
        with contextlib.suppress(OSError):  # a cache that cannot be written: embedded again next time
            cache.save(key, embeddings, [{"text": t} for t in texts])
        return embeddings

    def _prompt_key(self, texts: list[str]) -> Optional[str]:
        """`prompt_cache`'s key for `texts` embedded by this folder's model (`M.text_identity`); None without one (or unwritable)."""
        if self.prompt_cache is None or self.export_dir is None:
            return None
        try:
            fingerprint = weights_fingerprint(self.export_dir / M.WEIGHTS_FILE)
            return self.prompt_cache.key(fingerprint, [], {"ct_prompts": texts, "made_with": M.text_identity(self.export_dir, fingerprint)})
        except OSError:
            return None

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised report embeddings (n, embed_dim)."""
        if isinstance(self.net.text, TextEncoderNotLoaded):  # first text: the encoder comes off disk now
            if self.export_dir is None:
                raise RuntimeError("this model has no text encoder and no folder to load one from")
            self.tokenizer = M.load_text_encoder(self.net, self.export_dir, self.device)
        return M.embed_texts(self.net, self.tokenizer, texts, self.device)

    @torch.no_grad()
    def phenotype_probabilities(self, nifti_path: str | Path) -> dict[str, float]:
        """{phenotype id: sigmoid probability} for one CT volume file, in the model's precision (as `predict_volume`)."""
        with inference_precision(self.device, self.precision):
            logits = self.net.phenotype_logits(self.load_volume(nifti_path).to(self.device))[0]
        return {p: float(v) for p, v in zip(self.phenotypes, torch.sigmoid(logits.float()).tolist())}


def load_ct_model(export_dir: str | Path, device: str | torch.device = "cpu", cache: str | Path | None = None,
                  precision: Precision = "auto") -> CTModel:
    """Load an export folder (or a training output folder) written by domainfm.

    `device` may be "auto" (the GPU when there is one). A missing folder, or an export of another kind
    (an open_clip image export), is an InputError naming the folder. The text encoder is read when
    text is first embedded: an export ships its domain's finding prompts embedded (`M.PROMPTS_FILE`,
    used while the weights are those it was made with), and other prompts' embeddings are kept in the
    embedding cache `cache` (default $DOMAINFM_CACHE/embeddings, else ~/.cache/domainfm/embeddings;
    none when it cannot be made). `precision`: "auto" embeds volumes in bf16 where the device
    computes it natively, else in fp32 (pipelines.infer.device).
    """
    from pipelines.models.folders import export_kind

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise InputError(f"{export_dir}: no such model folder")
    if export_kind(export_dir) != "volume":
        raise InputError(f"{export_dir} holds an image (open_clip) export; this needs a CT volume model export")
    missing = [name for name in (M.WEIGHTS_FILE, M.TOKENIZER_DIR, M.TEXT_CONFIG_DIR) if not (export_dir / name).exists()]
    if missing:
        raise InputError(f"{export_dir} is not a complete CT model folder (missing {', '.join(missing)})")
    if isinstance(device, str):
        try:
            device = resolve_device(device)
        except RuntimeError as exc:  # "cuda" without a GPU, or a name torch does not know
            raise InputError(f"device {device!r}: {exc}") from None
    net, tokenizer, phenotypes = M.load_model_dir(export_dir, device, text=False)
    pre_path = export_dir / PREPROCESS_FILE
    preprocess = json.loads(pre_path.read_text()) if pre_path.is_file() else {"spatial_size": list(net.cfg.input_size)}
    model = CTModel(net, tokenizer, phenotypes, preprocess, device, precision)
    model.export_dir = export_dir
    if (export_dir / M.PROMPTS_FILE).is_file():  # an export's finding prompts, embedded when it was written
        model._prompt_embeddings.update(M.load_prompt_embeddings(export_dir, weights_fingerprint(export_dir / M.WEIGHTS_FILE)))
    with contextlib.suppress(OSError):  # a folder that cannot be made: prompts are embedded in each process
        model.prompt_cache = EmbeddingCache(cache)
    return model
