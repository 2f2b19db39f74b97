"""CT preprocessing with MONAI transforms, and a content-addressed cache of its output.

Output: float32 array (1, X, Y, Z), channel first, voxel axes in RAS order (index grows towards
the patient's Right, Anterior, Superior), resampled to `pixdim` mm, HU window
[a_min, a_max] scaled to [0, 1] and clipped, then padded (with 0 = air) / centre-cropped to
`spatial_size`.

Cache: `cache_dir/<key[:2]>/<key>.npy` plus `<key>.json` (metadata), where key = sha256 of the
input bytes (a file, or every file of a DICOM folder in path order) + the preprocessing and
validation parameters + a format version. Changing a parameter or a byte of the input gives a new
key, so the cache never serves stale tensors; entries are written atomically so parallel workers
and interrupted runs cannot leave a partial file. Only volumes that passed validation are cached,
with the loader's warnings (files skipped in a DICOM folder, the series chosen), so a cache hit
reports them too.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing

from domains.ct.curation.volumes import Volume, load_volume, validate_volume

CACHE_VERSION = 2  # 2: DICOM series geometry checked (v1 entries may hold series with missing slices)


@dataclass
class PreprocessConfig:
    """Preprocessing and validation settings; every field is part of the cache key."""

    pixdim: list[float] = field(default_factory=lambda: [1.5, 1.5, 3.0])  # output spacing (mm), RAS axes
    spatial_size: list[int] = field(default_factory=lambda: [224, 224, 160])
    a_min: float = -1000.0  # HU mapped to 0
    a_max: float = 1000.0  # HU mapped to 1
    interpolation: str = "bilinear"  # MONAI Spacing mode
    # Validation (part of the key: a cached entry has passed these checks)
    min_slices: int = 10
    air_hu: float = -900.0
    min_air_fraction: float = 0.01
    slice_spacing_tolerance: float = 0.05  # DICOM slice steps may differ this fraction from the median step


def build_transforms(cfg: PreprocessConfig) -> Compose:
    """The MONAI chain applied to a channel-first MetaTensor carrying the RAS affine."""
    return Compose(
        [
            Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),  # explicit: RAS world
            Spacing(pixdim=tuple(cfg.pixdim), mode=cfg.interpolation, padding_mode="border"),
            ScaleIntensityRange(a_min=cfg.a_min, a_max=cfg.a_max, b_min=0.0, b_max=1.0, clip=True),
            # Pads with 0 after scaling: air, like the space around the body.
            ResizeWithPadOrCrop(spatial_size=tuple(cfg.spatial_size), mode="constant", value=0.0),
        ]
    )


def apply_transforms(vol: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(array (1, X, Y, Z) float32, output affine) for a loaded volume."""
    x = MetaTensor(torch.from_numpy(vol.data[None].astype(np.float32, copy=False)), affine=torch.as_tensor(vol.affine))
    y = build_transforms(cfg)(x)
    return y.numpy().astype(np.float32, copy=False), np.asarray(y.affine, dtype=np.float64)


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def cache_key(path: Path, cfg: PreprocessConfig) -> str:
    """Sha256 of the settings, the cache format version and every input file's relative path and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "params": asdict(cfg)}, sort_keys=True).encode())
    root = path if path.is_dir() else path.parent
    for f in _input_files(path):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _atomic_save(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def preprocess_volume(
    path: Path | str, cfg: PreprocessConfig, cache_dir: Optional[Path | str]
) -> tuple[np.ndarray, dict[str, Any], bool]:
    """(volume (1, X, Y, Z) float32 in [0, 1], metadata, cache_hit) for a NIfTI file or DICOM folder.

    Raises `VolumeError` (with the reject reason) for inputs that fail loading or validation.
    `cache_dir=None` disables the cache.
    """
    path = Path(path)
    key = cache_key(path, cfg)
    if cache_dir is not None:
        arr_path = Path(cache_dir) / key[:2] / f"{key}.npy"
        meta_path = arr_path.with_suffix(".json")
        if arr_path.is_file() and meta_path.is_file():  # meta is written last: marks the entry complete
            return np.load(arr_path, allow_pickle=False), json.loads(meta_path.read_text()), True

    vol = load_volume(path, cfg.slice_spacing_tolerance)
    validate_volume(vol, cfg.min_slices, cfg.air_hu, cfg.min_air_fraction)
    array, out_affine = apply_transforms(vol, cfg)
    zooms = np.sqrt((vol.affine[:3, :3] ** 2).sum(axis=0))
    meta = {
        "cache_key": key,
        "modality": vol.modality or "CT (by air fraction)",
        "input_shape": [int(s) for s in vol.data.shape],
        "input_spacing_mm": [round(float(z), 4) for z in zooms],
        "input_hu_range": [float(vol.data.min()), float(vol.data.max())],
        "output_shape": [int(s) for s in array.shape],
        "output_affine": out_affine.round(4).tolist(),
        "study_date": vol.study_date,  # for the time window only; curate never copies it out
        "dicom": vol.header,  # the allow-listed header attributes (pipelines.deid.dicom.ALLOWED); {} for NIfTI
        "warnings": [list(w) for w in vol.warnings],  # [file inside the input or "", note]: cached with the tensor
    }
    if cache_dir is not None:
        _atomic_save(arr_path, lambda f: np.save(f, array, allow_pickle=False))
        _atomic_save(meta_path, lambda f: f.write(json.dumps(meta, sort_keys=True).encode()))
    return array, meta, False
