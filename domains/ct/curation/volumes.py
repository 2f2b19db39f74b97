"""Reading CT volumes: NIfTI files and DICOM series, into one `Volume` in RAS world coordinates.

Every loader returns voxel values in Hounsfield units (float32, axes i, j, k) and a 4x4 affine
mapping voxel indices to RAS millimetres, or raises `VolumeError` whose `reason` is a short stable
phrase used as the reject reason. `validate_volume` applies the curation checks (CT or not, slice
count) that depend on parameters.

DICOM geometry follows the standard (PS3.3 C.7.6.2): column i runs along the first
ImageOrientationPatient vector with PixelSpacing[1], row j along the second with PixelSpacing[0],
slice k along the ordered ImagePositionPatient; patient coordinates are LPS, so x and y are negated
to give RAS. This lands on the grid dcm2niix writes, up to a permutation/flip of voxel axes.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(Exception):
    """A volume that cannot be curated; `reason` is the stable reject phrase."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Volume:
    """A loaded volume in HU with its voxel-to-RAS affine, before any preprocessing."""

    data: np.ndarray  # (I, J, K) float32 HU
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    modality: Optional[str]  # DICOM Modality; None for NIfTI (no such tag)
    study_date: Optional[str] = None  # DICOM StudyDate (YYYYMMDD), never written to outputs


def study_id_of(path: Path) -> str:
    """A NIfTI file's stem without .nii/.nii.gz; a DICOM folder's (or .dcm file's) name."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def volume_kind(path: Path) -> Optional[str]:
    """'nifti', 'dicom' (a folder or a .dcm file), 'image2d', or None for anything else."""
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".dcm"):
        return "dicom"
    if name.endswith(IMAGE_2D_SUFFIXES):
        return "image2d"
    return None


def check_affine(affine: np.ndarray) -> None:
    """Singular or non-finite affines cannot place voxels in the body: refuse them."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-6:
        raise VolumeError("broken affine")


def load_nifti(path: Path) -> Volume:
    """Read a NIfTI file as a 3D HU volume; VolumeError for unreadable, non-3D or badly placed ones."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # scl_slope/inter applied by nibabel
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise VolumeError("truncated or unreadable NIfTI", str(exc)) from exc
    except Exception as exc:  # nibabel raises several types for garbage headers
        raise VolumeError("unreadable NIfTI", f"{type(exc).__name__}: {exc}") from exc
    # A trailing singleton 4th dimension is a 3D volume written as 4D.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        raise VolumeError("2D image, not a volume")
    if data.ndim != 3:
        raise VolumeError("not a 3D volume", f"shape {data.shape}")
    affine = img.affine
    check_affine(affine)
    return Volume(data=data, affine=np.asarray(affine, dtype=np.float64), modality=None)


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_dicom_header(path: Path) -> Optional[pydicom.Dataset]:
    """The first readable DICOM header of a file or folder (no pixels), or None."""
    for f in _dicom_files(path):
        try:
            return pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            continue
    return None


def load_dicom_series(path: Path) -> Volume:
    """The series with most slices under a folder (or a single .dcm file) as a RAS volume."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for f in _dicom_files(path):
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError, EOFError):
            continue  # non-DICOM files in the folder (DICOMDIR notes, thumbnails) are skipped
        if "PixelData" not in ds:
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if not series:
        raise VolumeError("no readable DICOM images")
    # Most slices wins; the UID breaks ties so the choice is deterministic.
    uid = max(series, key=lambda u: (len(series[u]), u))
    slices = series[uid]
    first = slices[0]
    modality = str(first.get("Modality", "")) or None
    if modality is not None and modality.upper() != "CT":
        raise VolumeError("not CT (DICOM modality)", modality)
    try:
        iop = np.asarray(first.ImageOrientationPatient, dtype=float)
        row_dir, col_dir = iop[:3], iop[3:]
        spacing_row, spacing_col = (float(v) for v in first.PixelSpacing)
    except (AttributeError, ValueError, TypeError) as exc:
        raise VolumeError("missing DICOM geometry") from exc
    normal = np.cross(row_dir, col_dir)
    positions = []
    for ds in slices:
        try:
            positions.append(np.asarray(ds.ImagePositionPatient, dtype=float))
        except (AttributeError, ValueError, TypeError) as exc:
            raise VolumeError("missing DICOM geometry") from exc
    order = np.argsort([p @ normal for p in positions], kind="stable")
    slices = [slices[i] for i in order]
    positions = [positions[i] for i in order]

    planes = []
    for ds in slices:
        px = ds.pixel_array.astype(np.float32)
        if px.ndim != 2:
            raise VolumeError("multi-frame DICOM not supported")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(px * slope + intercept)
    if len({p.shape for p in planes}) != 1:
        raise VolumeError("DICOM slices differ in size")
    # pixel_array is (rows, columns) = (j, i); stack to (i, j, k).
    data = np.stack(planes, axis=-1).transpose(1, 0, 2)

    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        thickness = float(first.get("SliceThickness", 1) or 1)
        step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing_col
    lps[:3, 1] = col_dir * spacing_row
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps
    check_affine(affine)
    date = str(first.get("StudyDate", "")) or None
    return Volume(data=np.ascontiguousarray(data), affine=affine, modality=modality, study_date=date)


def load_volume(path: Path) -> Volume:
    """Load a NIfTI file or DICOM series by its kind; VolumeError for anything else."""
    kind = volume_kind(path)
    if kind == "nifti":
        return load_nifti(path)
    if kind == "dicom":
        return load_dicom_series(path)
    if kind == "image2d":
        raise VolumeError("2D image, not a volume")
    raise VolumeError("unsupported file type")


def validate_volume(vol: Volume, min_slices: int, air_hu: float, min_air_fraction: float) -> None:
    """Refuse volumes curation cannot use: NaNs, too few slices, not CT.

    Without a Modality tag (NIfTI), CT is recognised by its air: a CT of the body always holds
    some voxels near -1000 HU, while MR intensities are non-negative.
    """
    if not np.all(np.isfinite(vol.data)):
        raise VolumeError("NaN voxels")
    if min(vol.data.shape) < min_slices:
        raise VolumeError("too few slices", f"shape {vol.data.shape}")
    if vol.modality is None:
        air = float(np.mean(vol.data < air_hu))
        if air < min_air_fraction:
            raise VolumeError("not CT (no air near -1000 HU)", f"{air:.4f} of voxels below {air_hu}")
