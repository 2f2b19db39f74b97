"""CT preprocessing with MONAI transforms, and a content-addressed cache of its output.

Output: float32 array (1, X, Y, Z), channel first, voxel axes in RAS order (index grows towards
the patient's Right, Anterior, Superior), resampled to `pixdim` mm, HU window
[a_min, a_max] scaled to [0, 1] and clipped, then padded (with 0 = air) / centre-cropped to
`spatial_size`: MONAI's chain Orientation(RAS) -> Spacing(bilinear, border) ->
ScaleIntensityRange -> ResizeWithPadOrCrop (`build_transforms`, Merlin's preprocessing), which
resamples the whole volume in float64 and crops afterwards.

`apply_transforms` gives the same output (max abs difference < 1e-5 on [0, 1], tested against the
chain) with the work reordered: the output grid is computed first from the volume's shape and
affine (`plan_resampling`), so no voxel moves for the orientation; only the box of input voxels
that the cropped output samples is touched; the trilinear interpolation (with Spacing's border
rule) runs as three 1D linear passes in float32, on the output's field of view only, and the
intensity window on that result. Spacing keeps the oriented volume's directions, so its resampling
is a per-axis scale for any affine, oblique ones included; what the plan does not cover (an
interpolation mode other than bilinear, a sheared affine) runs the MONAI chain itself.

The plan's geometry is MONAI's (1.6), written out in numpy and nibabel: `Orientation` (nibabel's
orientation functions, as MONAI calls them), `Spacing` (`zoom_affine`, `compute_shape_offset`, its
rule that keeps an input spacing within 1e-3 mm of the target) and `ResizeWithPadOrCrop` (centre
crop, then symmetric pad). It is tested equal to the grids MONAI's own transforms record when run
lazily, on many random geometries. Why not call MONAI for it: `import monai` imports every MONAI
subpackage (networks, apps, torchvision, scipy.signal), 3-5 s and ~1 GB per process, which every
curation worker and every `domainfm predict ct` paid for a few 4 x 4 matrices. Only the reference
chain and the fallback import MONAI (and torch) now.

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
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional, Sequence

import nibabel as nib
import numpy as np

from domains.ct.curation.volumes import Volume, load_volume, validate_volume, volume_kind

if TYPE_CHECKING:  # MONAI (and torch) only for the reference chain and the fallback
    from monai.transforms import Compose

CACHE_VERSION = 3  # 2: DICOM series geometry checked; 3: reordered resampling (apply_transforms)


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
    from monai.transforms import Compose, Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing

    return Compose(
        [
            Orientation(axcodes="RAS", labels=RAS_LABELS),  # explicit: RAS world
            Spacing(pixdim=tuple(cfg.pixdim), mode=cfg.interpolation, padding_mode="border"),
            ScaleIntensityRange(a_min=cfg.a_min, a_max=cfg.a_max, b_min=0.0, b_max=1.0, clip=True),
            # Pads with 0 after scaling: air, like the space around the body.
            ResizeWithPadOrCrop(spatial_size=tuple(cfg.spatial_size), mode="constant", value=0.0),
        ]
    )


def apply_monai_chain(vol: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(array (1, X, Y, Z) float32, output affine): `build_transforms` on the whole volume (the reference)."""
    import torch
    from monai.data import MetaTensor

    x = MetaTensor(torch.from_numpy(vol.data[None].astype(np.float32, copy=False)), affine=torch.as_tensor(vol.affine))
    y = build_transforms(cfg)(x)
    return y.numpy().astype(np.float32, copy=False), np.asarray(y.affine, dtype=np.float64)


@dataclass
class AxisPlan:
    """How one output axis is filled: which input axis it reads and at which (continuous) voxel positions."""

    source_axis: int  # the input volume's axis (before orientation) this output axis runs along
    valid: slice  # output indices inside the resampled grid; the rest is padding (0 after scaling)
    coords: np.ndarray  # float64 input voxel positions of the valid output indices, clamped to the volume (border)


@dataclass
class OutputGrid:
    """The grids of `build_transforms`' steps: each step's affine (voxel -> RAS mm) and shape."""

    oriented_affine: np.ndarray  # Orientation: the input's voxels, axes permuted and flipped to RAS
    oriented_shape: list[int]
    resampled_affine: np.ndarray  # Spacing: the oriented directions at the target spacing
    resampled_shape: list[int]
    affine: np.ndarray  # ResizeWithPadOrCrop: the resampled grid shifted by whole voxels
    shape: list[int]


RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
AFFINE_TOL = 1e-3  # MONAI's: Spacing keeps an input spacing this close to the target


def _zoom_affine(affine: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """MONAI's `zoom_affine(affine, scale, diagonal=False)`: the rotation of `affine` with column norms `scale`, no shear."""
    rzs = affine[:-1, :-1]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new_affine = np.eye(len(affine))
    new_affine[:-1, :-1] = rotation @ np.diag(np.sign(np.diag(zs)) * np.abs(scale))
    return new_affine


def _shape_offset(shape: Sequence[int], in_affine: np.ndarray, out_affine: np.ndarray) -> tuple[list[int], np.ndarray]:
    """MONAI's `compute_shape_offset(shape, in_affine, out_affine, scale_extent=False)`: the grid covering the input's voxel centres."""
    shape_f = np.array(shape, dtype=float)
    corners = np.asarray(np.meshgrid(*[(0.0, n - 1.0) for n in shape_f], indexing="ij")).reshape((3, -1))
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    corners_out = np.linalg.solve(out_affine, in_affine) @ corners
    corners = in_affine @ corners
    all_dist = corners_out[:-1].copy()
    out_shape = np.round(np.ptp(corners_out[:-1] / corners_out[-1], axis=1) + 1.0)
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(all_dist - all_dist[:, i:i + 1], 1), 0.0, rtol=AFFINE_TOL):
            offset = corners[:-1, i]  # the corner with the smallest output coordinates becomes the origin
            break
    if offset is None:  # no corner is lowest on every output axis (a sheared input): centre the output on the input
        offset = in_affine[:-1, :-1] @ (shape_f / 2.0) + in_affine[:-1, -1] - out_affine[:-1, :-1] @ (out_shape / 2.0)
    return [int(v) for v in out_shape], offset


def output_grid(shape: Sequence[int], affine: np.ndarray, cfg: PreprocessConfig) -> OutputGrid:
    """The grids `build_transforms` gives a volume of this shape and affine, computed as MONAI computes them."""
    affine = np.asarray(affine, dtype=np.float64)
    # Orientation(RAS): a signed permutation of the voxel axes (nibabel, as MONAI calls it)
    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt("RAS", labels=RAS_LABELS))
    oriented = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    oriented_shape = [int(shape[i]) for i in np.argsort(ornt[:, 0])]
    # Spacing: the target spacing (an input spacing within AFFINE_TOL of it is kept), the oriented directions
    target, current = np.array(cfg.pixdim, dtype=np.float64), nib.affines.voxel_sizes(oriented)
    scale = np.where((target - AFFINE_TOL <= current) & (current <= target + AFFINE_TOL), current, target)
    resampled = _zoom_affine(oriented, scale)
    resampled_shape, offset = _shape_offset(oriented_shape, oriented, resampled)
    resampled[:3, -1] = offset[:3]
    resampled = oriented @ np.linalg.solve(oriented, resampled)  # as MONAI records it: the input's affine times the step's
    # ResizeWithPadOrCrop: a centre crop where the grid is larger, then a symmetric pad where it is smaller
    shift = np.zeros(3)
    for d, (n, size) in enumerate(zip(resampled_shape, cfg.spatial_size)):
        shift[d] = n // 2 - size // 2 if n > size else -((size - n) // 2)
    step = np.eye(4)
    step[:3, 3] = shift
    return OutputGrid(oriented, oriented_shape, resampled, resampled_shape, resampled @ step, [int(v) for v in cfg.spatial_size])


def _is_signed_permutation(m: np.ndarray) -> bool:
    return bool(np.all(np.isclose(np.abs(m), 0, atol=1e-6) | np.isclose(np.abs(m), 1, atol=1e-6))
                and np.all(np.isclose(np.abs(m).sum(axis=0), 1, atol=1e-6)))


def plan_resampling(shape: Sequence[int], affine: np.ndarray, cfg: PreprocessConfig) -> Optional[tuple[list[AxisPlan], np.ndarray]]:
    """(per output axis plans, output affine) of `build_transforms` for a volume of this shape and affine.

    None when the plan cannot express the chain exactly (interpolation other than bilinear, a
    resampling that is not a per-axis scale, an empty intensity window): the MONAI chain runs then.
    """
    if cfg.interpolation != "bilinear" or not cfg.a_min < cfg.a_max:
        return None
    affine = np.asarray(affine, dtype=np.float64)
    grid = output_grid(shape, affine, cfg)
    to_input = np.linalg.inv(affine) @ grid.oriented_affine  # oriented index -> input index: a signed permutation
    to_oriented = np.linalg.inv(grid.oriented_affine) @ grid.resampled_affine  # resampled index -> oriented index: a per-axis scale
    to_resampled = np.linalg.inv(grid.resampled_affine) @ grid.affine  # output index -> resampled index: a whole-voxel shift
    if (not _is_signed_permutation(to_input[:3, :3])
            or not np.allclose(to_oriented[:3, :3], np.diag(np.diag(to_oriented[:3, :3])), atol=1e-9)
            or not np.allclose(to_resampled[:3, :3], np.eye(3), atol=1e-9)
            or not np.allclose(to_resampled[:3, 3], np.round(to_resampled[:3, 3]), atol=1e-6)):
        return None
    plans = []
    for d in range(3):
        source = int(np.argmax(np.abs(to_input[:3, d])))
        shift = int(round(to_resampled[d, 3]))
        first, last = max(0, -shift), min(grid.shape[d], grid.resampled_shape[d] - shift)  # output indices inside the resampled grid
        resampled_index = np.arange(first, last, dtype=np.float64) + shift
        oriented_pos = to_oriented[d, d] * resampled_index + to_oriented[d, 3]
        input_pos = to_input[source, d] * oriented_pos + to_input[source, 3]
        plans.append(AxisPlan(source, slice(first, max(first, last)), np.clip(input_pos, 0, shape[source] - 1)))
    if sorted(p.source_axis for p in plans) != [0, 1, 2]:
        return None
    return plans, grid.affine


def intensity_window(x: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """MONAI's ScaleIntensityRange(a_min, a_max, b_min=0, b_max=1, clip=True) in place, in x's dtype: HU to [0, 1]."""
    x -= cfg.a_min
    x /= cfg.a_max - cfg.a_min
    np.clip(x, 0.0, 1.0, out=x)
    return x


def _linear_pass(x: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of `x` along `axis` at the (in-range) positions `coords`, in float32 (a new array)."""
    n = x.shape[axis]
    lower = np.minimum(np.floor(coords).astype(np.intp), n - 1)
    upper = np.minimum(lower + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = len(coords)
    weight = (coords - lower).astype(np.float32).reshape(shape)
    lead = (slice(None),) * axis
    a = x[(*lead, lower)].astype(np.float32, copy=False)  # fancy indexing copies whole planes/rows: no gather
    if not weight.any():
        return a  # the positions fall on input voxels (an output spacing that is a multiple of the input's)
    b = x[(*lead, upper)].astype(np.float32, copy=False)
    b -= a
    b *= weight
    a += b
    return a


def resample_planned(data: np.ndarray, plans: list[AxisPlan], cfg: PreprocessConfig) -> np.ndarray:
    """(1, X, Y, Z) float32: the planned trilinear resampling of `data` (HU), windowed, in the padded output."""
    out = np.zeros((1, *cfg.spatial_size), dtype=np.float32)
    if any(len(p.coords) == 0 for p in plans):
        return out
    by_source = {p.source_axis: p for p in plans}
    # the box of input voxels the output samples: nothing outside it is converted, copied or interpolated
    box = tuple(slice(int(np.floor(by_source[a].coords.min())), int(np.floor(by_source[a].coords.max())) + 2) for a in range(3))
    # in memory order (NIfTI arrays are Fortran-ordered): the copy reads sequentially, and the passes
    # run outermost axis first, copying whole planes, then rows, then single voxels of the smallest array
    memory_order = [int(a) for a in np.argsort([-st for st in data.strides], kind="stable")]
    x = data[box].transpose(memory_order)  # a view: the first pass copies only the planes it needs
    for dim, axis in enumerate(memory_order):
        x = _linear_pass(x, dim, by_source[axis].coords - box[axis].start)
    x = x.transpose([memory_order.index(p.source_axis) for p in plans])  # memory order -> output (RAS) axis order
    out[(0, *(p.valid for p in plans))] = intensity_window(x, cfg)
    return out


def apply_transforms(vol: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(array (1, X, Y, Z) float32, output affine) for a loaded volume: `build_transforms`' output, reordered.

    See the module docstring; `apply_monai_chain` is the reference it is tested against.
    """
    planned = plan_resampling(vol.data.shape, vol.affine, cfg)
    if planned is None:
        return apply_monai_chain(vol, cfg)
    plans, out_affine = planned
    return resample_planned(vol.data, plans, cfg), out_affine


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def cache_key(path: Path, cfg: PreprocessConfig, contents: Optional[bytes] = None) -> str:
    """Sha256 of the settings, the cache format version and every input file's relative path and bytes.

    `contents`: the bytes of `path` (a file) when the caller has read them already.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "params": asdict(cfg)}, sort_keys=True).encode())
    root = path if path.is_dir() else path.parent
    for f in _input_files(path):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        if contents is not None and f == path:
            h.update(contents)
            continue
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
    # a NIfTI file is read once: hashed, then decompressed from the same bytes
    contents = path.read_bytes() if volume_kind(path) == "nifti" and path.is_file() else None
    key = cache_key(path, cfg, contents)
    if cache_dir is not None:
        arr_path = Path(cache_dir) / key[:2] / f"{key}.npy"
        meta_path = arr_path.with_suffix(".json")
        if arr_path.is_file() and meta_path.is_file():  # meta is written last: marks the entry complete
            return np.load(arr_path, allow_pickle=False), json.loads(meta_path.read_text()), True

    # stored integer HU stay integers: only the box the output samples is converted to float32
    vol = load_volume(path, cfg.slice_spacing_tolerance, contents, stored=True)
    del contents
    validate_volume(vol, cfg.min_slices, cfg.air_hu, cfg.min_air_fraction)
    array, out_affine = apply_transforms(vol, cfg)
    zooms = nib.affines.voxel_sizes(vol.affine)
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
