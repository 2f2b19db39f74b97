"""Reading CT volumes: NIfTI files and DICOM series, into one `Volume` in RAS world coordinates.

Every loader returns voxel values in Hounsfield units (float32, axes i, j, k) and a 4x4 affine
mapping voxel indices to RAS millimetres, or raises `VolumeError` whose `reason` is a short stable
phrase used as the reject reason. `validate_volume` applies the curation checks (CT or not, slice
count) that depend on parameters.

DICOM geometry follows the standard (PS3.3 C.7.6.2): column i runs along the first
ImageOrientationPatient vector with PixelSpacing[1], row j along the second with PixelSpacing[0],
slice k along the ordered ImagePositionPatient; patient coordinates are LPS, so x and y are negated
to give RAS. This lands on the grid dcm2niix writes, up to a permutation/flip of voxel axes.

A DICOM series must be one regular grid: its slices share orientation, size and pixel spacing, and
their positions along the slice normal step uniformly (each step within `spacing_tolerance`, 5% by
default, of the median step; positions 0.01 mm apart are duplicates). A series with a gap is
refused ("missing slices"), not resampled: interpolating across the gap would invent anatomy the
scanner never recorded, and a gap usually means an incomplete export the site can redo. A DICOM
file that cannot be read refuses its study (skipping it would leave such a gap); a file that is not
DICOM at all (notes, thumbnails) is skipped with a warning. Several series in one study folder: the
one with most slices is used, and the choice is a warning naming them all.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import pydicom
from isal import igzip, isal_zlib
from pydicom.errors import InvalidDicomError

from pipelines.deid.dicom import allowed_attributes

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(Exception):
    """A volume that cannot be curated; `reason` is the stable reject phrase."""

    def __init__(self, reason: str, detail: str = "", member: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.member = member  # the file inside a DICOM folder at fault, relative to it ("" for the study)


@dataclass
class Volume:
    """A loaded volume in HU with its voxel-to-RAS affine, before any preprocessing."""

    data: np.ndarray  # (I, J, K) float32 HU (integer HU as stored, from load_nifti(stored=True))
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    modality: Optional[str]  # DICOM Modality; None for NIfTI (no such tag)
    study_date: Optional[str] = None  # DICOM StudyDate (YYYYMMDD), never written to outputs
    header: dict = field(default_factory=dict)  # the allow-listed DICOM attributes (pipelines.deid.dicom.allowed_attributes)
    # (file relative to the study folder or "" for the study, note): inputs used with a caveat
    warnings: list[tuple[str, str]] = field(default_factory=list)


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


def _nifti_from_bytes(raw: bytes) -> nib.Nifti1Image:
    try:
        return nib.Nifti1Image.from_bytes(raw)
    except nib.spatialimages.HeaderDataError:
        return nib.Nifti2Image.from_bytes(raw)


def load_nifti(path: Path, contents: Optional[bytes] = None, stored: bool = False) -> Volume:
    """Read a NIfTI file as a 3D HU volume; VolumeError for unreadable, non-3D or badly placed ones.

    `contents`: the file's bytes when the caller has read them already (they are decompressed in one
    call instead of read again). `stored=True`: when the file stores integer HU without scaling (no
    scl_slope/scl_inter), `data` keeps the stored integer array: the same numbers float32 would hold
    (|HU| < 2**24) without converting the whole volume; otherwise, and by default, float32 HU.
    """
    try:
        if contents is None:
            img = nib.load(str(path))
        else:
            # ISA-L's inflate: the same bytes as gzip's, in about two thirds of the time (most of a small CT's first pass)
            img = _nifti_from_bytes(igzip.decompress(contents) if path.name.lower().endswith(".gz") else contents)
        proxy = img.dataobj
        unscaled = float(getattr(proxy, "slope", np.nan)) == 1.0 and float(getattr(proxy, "inter", np.nan)) == 0.0
        if stored and unscaled and np.issubdtype(img.get_data_dtype(), np.integer):
            data = np.asanyarray(proxy.get_unscaled())
        else:
            data = np.asarray(proxy, dtype=np.float32)  # scl_slope/inter applied by nibabel
    except (EOFError, gzip.BadGzipFile, zlib.error, isal_zlib.error, OSError) as exc:
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


def _member(path: Path, root: Path) -> str:
    """A file's name relative to the study's folder ("" for the study's own file)."""
    return "" if path == root else str(path.relative_to(root))


def read_dicom_header(path: Path) -> Optional[pydicom.Dataset]:
    """The first readable DICOM header of a file or folder (no pixels), or None."""
    for f in _dicom_files(path):
        try:
            return pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # unreadable or corrupt files are the loader's to report; here we only look for a date
            continue
    return None


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", pydicom.Dataset()).get("MediaStorageSOPClassUID")
    return str(getattr(uid, "name", "") or "") if uid else ""


def _read_slices(path: Path) -> tuple[dict[str, list[tuple[Path, pydicom.Dataset]]], list[tuple[str, str]]]:
    """Image datasets under `path` grouped by SeriesInstanceUID, and (member, note) for skipped files.

    A file without the DICOM preamble (notes, thumbnails) is skipped with a note; a DICOM file that
    cannot be read, or an image without its pixel data (truncated), refuses the study: dropping it
    would leave a hole in the series.
    """
    root = path
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    skipped: list[tuple[str, str]] = []
    for f in _dicom_files(path):
        member = _member(f, root)
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            if _has_dicom_preamble(f):
                raise VolumeError("unreadable DICOM slice", "corrupt header", member=member) from None
            skipped.append((member, "not a DICOM file; skipped"))
            continue
        except Exception as exc:  # pydicom raises many types for corrupt files
            raise VolumeError("unreadable DICOM slice", f"{type(exc).__name__}: {exc}", member=member) from exc
        if "PixelData" not in ds:
            sop = _sop_class_name(ds)
            if sop and "Image Storage" not in sop:
                skipped.append((member, f"DICOM without an image ({sop}); skipped"))
                continue
            raise VolumeError("unreadable DICOM slice", "no pixel data, truncated?", member=member)
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    return series, skipped


def _geometry(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    try:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (AttributeError, ValueError, TypeError) as exc:
        raise VolumeError("missing DICOM geometry") from exc
    if iop.shape != (6,) or ipp.shape != (3,) or len(spacing) != 2:
        raise VolumeError("missing DICOM geometry")
    return iop, ipp, (spacing[0], spacing[1])


def check_slice_positions(offsets: np.ndarray, names: list[str], tolerance: float) -> float:
    """The slice spacing (mm) of sorted offsets along the slice normal; VolumeError unless uniform.

    A step may differ from the median step by `tolerance` times it (at least 0.01 mm, the rounding
    of written positions). Two slices closer than 0.01 mm are duplicates; a step near a whole
    multiple (>= 2) of the spacing means missing slices; any other deviation is non-uniform spacing.
    """
    steps = np.diff(offsets)
    if not len(steps):
        return 0.0
    for k, step in enumerate(steps):
        if step < 0.01:
            raise VolumeError("duplicate slice positions", f"{names[k]} and {names[k + 1]} both at {offsets[k]:.2f} mm")
    spacing = float(np.median(steps))
    allowed = max(tolerance * spacing, 0.01)
    for k, step in enumerate(steps):
        if abs(step - spacing) <= allowed:
            continue
        ratio = step / spacing
        where = f"after slice {k + 1} of {len(offsets)}, {names[k]}"
        if round(ratio) >= 2 and abs(ratio - round(ratio)) * spacing <= allowed:
            raise VolumeError("missing slices", f"gap of {step:.2f} mm {where}; spacing {spacing:.2f} mm, "
                                                f"about {round(ratio) - 1} slice(s) missing")
        raise VolumeError("non-uniform slice spacing", f"step of {step:.2f} mm {where}; spacing {spacing:.2f} mm elsewhere")
    return spacing


def load_dicom_series(path: Path, spacing_tolerance: float = 0.05) -> Volume:
    """One DICOM series under a folder (or a single .dcm file) as a RAS volume.

    Several series in the folder: the one with most slices is used (the UID breaks ties) and the
    choice is a warning. Within the series, slices must share orientation, size and pixel spacing
    and lie at uniform steps along the slice normal (check_slice_positions), else VolumeError.
    """
    series, skipped = _read_slices(path)
    warnings = list(skipped)
    if not series:
        shown = "; ".join(f"{m or path.name}: {n}" for m, n in skipped[:3])
        raise VolumeError("no readable DICOM images", shown + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""))
    uid = max(series, key=lambda u: (len(series[u]), u))
    if len(series) > 1:
        listed = ", ".join(f"{u or '(no UID)'}: {len(s)} slices" for u, s in sorted(series.items(), key=lambda kv: -len(kv[1])))
        warnings.append(("", f"{len(series)} DICOM series ({listed}); used the one with most slices, {uid or '(no UID)'}"))
    files = [f for f, _ in series[uid]]
    slices = [ds for _, ds in series[uid]]
    first = slices[0]
    header = allowed_attributes(first)  # all that may leave this function of the header, besides geometry and StudyDate
    modality = str(header.get("Modality", "")) or None
    if modality is not None and modality.upper() != "CT":
        raise VolumeError("not CT (DICOM modality)", modality)

    geometry = [_geometry(ds) for ds in slices]
    names = [_member(f, path) or path.name for f in files]
    iop, _, (spacing_row, spacing_col) = geometry[0]
    sizes = [(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in slices]
    for name, (orient, _, pixel_spacing), size in zip(names, geometry, sizes):
        if not np.allclose(orient, iop, atol=1e-3):
            raise VolumeError("mixed orientations in DICOM series", f"{name} differs from {names[0]}")
        if size != sizes[0]:
            raise VolumeError("DICOM slices differ in size", f"{name} is {size[0]}x{size[1]}, {names[0]} {sizes[0][0]}x{sizes[0][1]}")
        if not np.allclose(pixel_spacing, (spacing_row, spacing_col), atol=1e-3):
            raise VolumeError("DICOM slices differ in pixel spacing", f"{name} differs from {names[0]}")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = [g[1] for g in geometry]
    order = np.argsort([p @ normal for p in positions], kind="stable")
    slices = [slices[i] for i in order]
    files = [files[i] for i in order]
    names = [names[i] for i in order]
    positions = [positions[i] for i in order]
    check_slice_positions(np.asarray([p @ normal for p in positions]), names, spacing_tolerance)

    planes = []
    for ds, f in zip(slices, files):
        try:
            px = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # truncated or undecodable pixel data
            raise VolumeError("unreadable DICOM slice", f"{type(exc).__name__}: {exc}", member=_member(f, path)) from exc
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
        # Positions must lie on that line (in-plane drift would make the affine wrong for some slices).
        drift = max(float(np.linalg.norm(p - (positions[0] + k * step))) for k, p in enumerate(positions))
        if drift > max(spacing_tolerance * float(np.linalg.norm(step)), 0.01):
            raise VolumeError("non-uniform slice positions", f"a slice lies {drift:.2f} mm off the line through the first and last")
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
    return Volume(data=np.ascontiguousarray(data), affine=affine, modality=modality, study_date=date, header=header, warnings=warnings)


def load_volume(path: Path, spacing_tolerance: float = 0.05, contents: Optional[bytes] = None, stored: bool = False) -> Volume:
    """Load a NIfTI file or DICOM series by its kind; VolumeError for anything else (`contents`, `stored`: see load_nifti)."""
    kind = volume_kind(path)
    if kind == "nifti":
        return load_nifti(path, contents, stored)
    if kind == "dicom":
        return load_dicom_series(path, spacing_tolerance)
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
