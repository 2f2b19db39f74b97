"""Bad CT inputs: volumes (NIfTI, DICOM series), EHR, reports and phecode-map tables as users have them.

Every case writes two good NIfTI studies (G1, G2: patients PG1, PG2, an R18.8 code two weeks
before the scan) next to its one bad input, and a pseudonym key file (`--key-file`). Volumes are
24x24x16 voxels of 2 mm and the params make preprocessing cheap (6 mm voxels, an 8x8x8 output,
min_slices 4, min_positive 1).

Curation names studies by keyed pseudonym only (pipelines/deid), so cases name a bad volume as
`st(study id)` + its suffix, computed with the same test key; the de-identification cases also
check that no identifier of the bad input reaches any file of the output (`no_leak`).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from bad_inputs import Case
from pipelines.deid import key_from_text
from pipelines.deid.audit import find_leaks

PARAMS = {"pixdim": [6.0, 6.0, 6.0], "spatial_size": [8, 8, 8], "min_positive": 1, "min_slices": 4}
SHAPE = (24, 24, 16)
STUDY_DATE = "2021-04-14"
CODE_DATE = "2021-04-01"  # 13 days before the scan: inside the default window (365 before, 30 after)
GOOD = ["G1", "G2"]
EHR_HEADER = ["patient_id", "study_id", "code", "code_system", "date"]
REPORT_HEADER = ["study_id", "study_date", "findings", "impression"]
FINDINGS = "LIVER: Normal size, no focal lesion.\nKIDNEYS: No calculi."
KEY_TEXT = "bad-inputs-test-key-0123456789"  # a test key: the cases compute the pseudonyms curation writes
KEY = key_from_text(KEY_TEXT, "tests")


def st(sid: str) -> str:
    """The pseudonym curation gives study `sid` under the test key."""
    return KEY.pseudonym("study", sid)


GOOD_NAMES = [st(s) for s in GOOD]


# ---------------------------------------------------------------- writers


def ct_array(shape: Sequence[int] = SHAPE, body_hu: float = 40.0, dtype: type = np.int16) -> np.ndarray:
    """Air (-1000 HU) around a box of soft tissue."""
    data = np.full(shape, -1000, dtype)
    box = tuple(slice(s // 4, s - s // 4) for s in shape)
    data[box] = body_hu
    return data


def write_nifti(path: Path, data: Optional[np.ndarray] = None, spacing: float = 2.0) -> Path:
    """A NIfTI volume (a CT box by default) with an axis-aligned `spacing` mm affine."""
    data = ct_array() if data is None else data
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return path


def write_nifti_affine(path: Path, value: float) -> Path:
    """A NIfTI whose only transform (sform) is all `value` (0 or NaN): nibabel will not write one from an affine."""
    data = ct_array()
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header["qform_code"], header["sform_code"] = 0, 1
    for row in ("srow_x", "srow_y", "srow_z"):
        header[row] = [value] * 4
    nib.save(nib.Nifti1Image(data, None, header=header), str(path))
    return path


def write_dicom_slice(path: Path, z: float, series_uid: str, rows: int = 24, columns: int = 24,
                      orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), modality: str = "CT") -> Path:
    """One CT slice (int16 HU, 2 mm pixels) at ImagePositionPatient (0, 0, z)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series_uid, "1.2.826.0.1.3680043.8.498.1"
    ds.StudyDate = STUDY_DATE.replace("-", "")
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = ct_array((rows, columns)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_series(folder: Path, positions: Sequence[float], series_uid: str = "1.2.826.0.1.3680043.8.498.10",
                       prefix: str = "IM") -> list[Path]:
    """A series of slices at z = `positions` (mm), files IM0001.dcm... in the given order."""
    return [write_dicom_slice(folder / f"{prefix}{i:04d}.dcm", z, series_uid) for i, z in enumerate(positions, start=1)]


def regular(n: int = 12, step: float = 2.0) -> list[float]:
    """Slice positions of a regular series."""
    return [k * step for k in range(n)]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], sep: str = ",", encoding: str = "utf-8") -> Path:
    """A delimited table, every cell quoted (report text holds commas and line breaks)."""
    def cell(v: str) -> str:
        return '"' + str(v).replace('"', '""') + '"'

    lines = [sep.join(header)] + [sep.join(cell(v) for v in r) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def ehr_rows(sids: Sequence[str], date: str = CODE_DATE) -> list[list[str]]:
    """One ascites code (R18.8, ICD-10-CM) per study, patient P<study>."""
    return [[f"P{s}", s, "R18.8", "ICD10CM", date] for s in sids]


def report_rows(sids: Sequence[str], findings: str = FINDINGS) -> list[list[str]]:
    """One plain report per study, dated STUDY_DATE."""
    return [[s, STUDY_DATE, findings, "Ascites."] for s in sids]


def inputs(folder: Path, extra: Sequence[str] = (), ehr: Optional[list[list[str]]] = None,
           reports: Optional[list[list[str]]] = None) -> list[str]:
    """The good volumes plus tables for them and the `extra` study ids; the curate options."""
    vols = folder / "volumes"
    vols.mkdir(exist_ok=True)
    for sid in GOOD:
        write_nifti(vols / f"{sid}.nii.gz")
    sids = [*GOOD, *extra]
    ehr_path = folder / "ehr.csv"
    if not ehr_path.exists():
        write_csv(ehr_path, EHR_HEADER, ehr if ehr is not None else ehr_rows(sids))
    reports_path = folder / "reports.csv"
    if not reports_path.exists():
        write_csv(reports_path, REPORT_HEADER, reports if reports is not None else report_rows(sids))
    (folder / "pseudonym.key").write_text(KEY_TEXT + "\n")
    return ["--volumes", str(vols), "--ehr", str(ehr_path), "--reports", str(reports_path), "--key-file", str(folder / "pseudonym.key")]


def with_volume(name: str, write: Callable[[Path], object]) -> Callable[[Path], list[str]]:
    """A build writing the good studies plus volume `name` (a file or a DICOM folder, written by `write(path)`)."""
    def build(folder: Path) -> list[str]:
        (folder / "volumes").mkdir()
        write(folder / "volumes" / name)
        sid = name.split(".")[0]
        return inputs(folder, extra=[sid])
    return build


# ---------------------------------------------------------------- checks


def provenance(out: Path) -> dict[str, dict]:
    """study_id -> provenance of the curated pairs."""
    table = pd.read_parquet(out / "manifest.parquet")
    return {p["study_id"]: p for p in map(json.loads, table["provenance"])}


def labelled(sid: str, phenotype: str = "R18") -> Callable[[Path], Optional[str]]:
    """A check that study `sid` carries `phenotype` (its code dated inside the window)."""
    def check(out: Path) -> Optional[str]:
        found = provenance(out).get(st(sid), {}).get("phenotypes")
        return None if found and phenotype in found else f"{sid} lost phenotype {phenotype} (has {found})"
    return check


def captions_hold(text: str, absent: Sequence[str] = ()) -> Callable[[Path], Optional[str]]:
    """A check that some caption holds `text` and none holds any of `absent`."""
    def check(out: Path) -> Optional[str]:
        captions = list(pd.read_parquet(out / "manifest.parquet")["caption"])
        if not any(text in c for c in captions):
            return f"no caption holds {text!r}: {captions}"
        bad = [c for c in captions for a in absent if a in c]
        return f"captions hold {absent}: {bad}" if bad else None
    return check


def not_curated(sid: str) -> Callable[[Path], Optional[str]]:
    """A check that study `sid` (by its pseudonym) is not among the manifest's sources."""
    def check(out: Path) -> Optional[str]:
        sources = [s for s in pd.read_parquet(out / "manifest.parquet")["source"] if st(sid) in s]
        return f"curated although refused: {sources}" if sources else None
    return check


def no_leak(*needles: str, also: Optional[Callable[[Path], Optional[str]]] = None) -> Callable[[Path], Optional[str]]:
    """A check that none of `needles` occurs (case-insensitively) in any file of the output, tar members included."""
    def check(out: Path) -> Optional[str]:
        leaks = find_leaks(out, needles)
        if leaks:
            return f"identifiers in the output: {leaks}"
        return also(out) if also is not None else None
    return check


def slices_of(sid: str, n: int) -> Callable[[Path], Optional[str]]:
    """A check that study `sid` was curated from an input of `n` slices."""
    def check(out: Path) -> Optional[str]:
        shape = provenance(out).get(st(sid), {}).get("input_shape")
        return None if shape and shape[2] == n else f"{sid}: input shape {shape}, expected {n} slices"
    return check


# ---------------------------------------------------------------- DICOM series


def _gap(folder: Path) -> None:
    write_dicom_series(folder, [z for z in regular(12) if z != 10.0])  # slice at 10 mm missing


def _uneven(folder: Path) -> None:
    write_dicom_series(folder, [0, 2, 4, 6, 8, 10, 13, 16, 19, 22])


def _duplicate(folder: Path) -> None:
    write_dicom_series(folder, [*regular(10), 10.0])


def _mixed_orientation(folder: Path) -> None:
    write_dicom_series(folder, regular(10))
    write_dicom_slice(folder / "IM0005.dcm", 8.0, "1.2.826.0.1.3680043.8.498.10", orientation=(1, 0, 0, 0, 0.8, -0.6))


def _mixed_size(folder: Path) -> None:
    write_dicom_series(folder, regular(10))
    write_dicom_slice(folder / "IM0005.dcm", 8.0, "1.2.826.0.1.3680043.8.498.10", rows=20, columns=20)


def _two_series(folder: Path) -> None:
    write_dicom_series(folder / "axial", regular(12))
    write_dicom_series(folder / "scout", regular(5, 5.0), series_uid="1.2.826.0.1.3680043.8.498.20")


def _truncated_slice(folder: Path) -> None:
    write_dicom_series(folder, regular(12))
    raw = (folder / "IM0006.dcm").read_bytes()
    (folder / "IM0006.dcm").write_bytes(raw[:300])  # header cut short, no pixel data


def _notes_in_series(folder: Path) -> None:
    write_dicom_series(folder, regular(12))
    (folder / "notes.txt").write_text("exported by PACS; 12 images\n")


# ---------------------------------------------------------------- NIfTI and other volume files


def _truncated_nifti(path: Path) -> None:
    raw = write_nifti(path).read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _nan_voxel(path: Path) -> None:
    data = ct_array(dtype=np.float32)
    data[12, 12, 8] = np.nan
    write_nifti(path, data)


def _mr(path: Path) -> None:
    write_nifti(path, (np.abs(ct_array()) // 10).astype(np.int16))  # MR-like: no air near -1000


def _png_as_nifti(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((24, 24), np.uint8)).save(path.with_suffix(".png"))
    path.with_suffix(".png").rename(path)


# ---------------------------------------------------------------- tables


def _day_first(folder: Path) -> list[str]:
    # G1's code on 12 April (read month-first: 4 December, outside the window); 25/03 proves the order.
    return inputs(folder, ehr=[["PG1", "G1", "R18.8", "ICD10CM", "12/04/2021"], ["PG2", "G2", "R18.8", "ICD10CM", "25/03/2021"]])


def _ambiguous(folder: Path) -> list[str]:
    return inputs(folder, ehr=[["PG1", "G1", "R18.8", "ICD10CM", "12/04/2021"], ["PG2", "G2", "R18.8", "ICD10CM", "03/04/2021"]])


def _time_zones(folder: Path) -> list[str]:
    return inputs(folder, ehr=[["PG1", "G1", "R18.8", "ICD10CM", "2021-04-01T10:00:00+01:00"],
                               ["PG2", "G2", "R18.8", "ICD10CM", "2021-04-02T23:30:00Z"]])


def _bad_date_row(folder: Path) -> list[str]:
    return inputs(folder, ehr=[*ehr_rows(GOOD), ["PG2", "G2", "K76.89", "ICD10CM", "2021-02-30"]])


def _semicolons(folder: Path) -> list[str]:
    write_csv(folder / "ehr.csv", EHR_HEADER, [*ehr_rows(GOOD), ["PG2", "G2", "NOT A CODE", "ICD10CM", CODE_DATE]], sep=";")
    return inputs(folder)


def _missing_column(folder: Path) -> list[str]:
    write_csv(folder / "ehr.csv", ["patient_id", "study_id", "code", "date"], [[r[0], r[1], r[2], r[4]] for r in ehr_rows(GOOD)])
    return inputs(folder)


def _empty_ehr(folder: Path) -> list[str]:
    (folder / "ehr.csv").write_bytes(b"")
    return inputs(folder)


def _latin1_reports(folder: Path) -> list[str]:
    rows = [["G1", STUDY_DATE, "LIVER: Lésion hépatique de 2 cm.", "Ascite."], *report_rows(["G2"])]
    write_csv(folder / "reports.csv", REPORT_HEADER, rows, encoding="latin-1")
    return inputs(folder)


def _html_report(folder: Path) -> list[str]:
    html = "<p>LIVER: Normal size, no <b>focal</b> lesion.</p><p>KIDNEYS: No calculi &amp; no hydronephrosis.</p>"
    return inputs(folder, reports=[["G1", STUDY_DATE, html, "Ascites."], *report_rows(["G2"])])


def _rtf_report(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_rtf.nii.gz")
    rtf = r"{\rtf1\ansi\deff0 {\fonttbl {\f0 Arial;}} \f0\fs20 LIVER: Normal.\par KIDNEYS: No calculi.\par}"
    return inputs(folder, extra=["S_rtf"], reports=[*report_rows(GOOD), ["S_rtf", STUDY_DATE, rtf, "Ascites."]])


def _conflicting_reports(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_dup.nii.gz")
    reports = [*report_rows(GOOD), ["S_dup", STUDY_DATE, FINDINGS, "Ascites."], ["S_dup", STUDY_DATE, "LIVER: Cirrhosis.", "Cirrhosis."]]
    return inputs(folder, extra=["S_dup"], reports=reports)


def _report_without_volume(folder: Path) -> list[str]:
    return inputs(folder, extra=["S_novol"])


def _volume_without_report(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_norep.nii.gz")
    return inputs(folder, extra=["S_norep"], reports=report_rows(GOOD))


def _volume_without_ehr(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_noehr.nii.gz")
    return inputs(folder, extra=["S_noehr"], ehr=ehr_rows(GOOD))


def _duplicate_study_id(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_twin.nii.gz")
    write_nifti(folder / "volumes" / "S_twin.nii", ct_array() + 10)
    return inputs(folder, extra=["S_twin"])


def _bad_study_date(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_when.nii.gz")
    return inputs(folder, extra=["S_when"], reports=[*report_rows(GOOD), ["S_when", "next Tuesday", FINDINGS, "Ascites."]])


def _map_without_phecode(folder: Path) -> list[str]:
    write_csv(folder / "map.csv", ["vocabulary_id", "code"], [["ICD10CM", "R18.8"]])
    return [*inputs(folder), "--phecode-map", str(folder / "map.csv")]


def _gzip_text(path: Path) -> None:
    path.write_bytes(gzip.compress(b"not a volume\n"))


# ---------------------------------------------------------------- identifiers in the inputs (issue 12)

PATIENT_NAME, MRN = "QUINCE, BARTHOLOMEW", "00482913"
WHOLE_HEADER = ["study_id", "study_date", "report"]


def _whole_reports(extra: list[list[str]]) -> list[list[str]]:
    good = [[sid, STUDY_DATE, f"FINDINGS:\n{FINDINGS}\nIMPRESSION: Ascites."] for sid in GOOD]
    return [*good, *extra]


def _cp1252_identifiers(folder: Path) -> list[str]:
    rows = [["G1", STUDY_DATE, "LIVER: Lésion hépatique de 2 cm, vue par Dr. Quince.", f"Ascite. MRN: {MRN}."], *report_rows(["G2"])]
    write_csv(folder / "reports.csv", REPORT_HEADER, rows, encoding="cp1252")
    return inputs(folder)


def _html_identifiers(folder: Path) -> list[str]:
    html = f"<p><b>Patient:</b> {PATIENT_NAME}</p><p>LIVER: Normal size.</p><p>KIDNEYS: No calculi.</p>"
    return inputs(folder, reports=[["G1", STUDY_DATE, html, "Ascites."], *report_rows(["G2"])])


def _rtf_identifiers(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_rtfname.nii.gz")
    rtf = r"{\rtf1\ansi Patient: QUINCE, BARTHOLOMEW\par MRN: 00482913\par LIVER: Normal.\par}"
    return inputs(folder, extra=["S_rtfname"], reports=[*report_rows(GOOD), ["S_rtfname", STUDY_DATE, rtf, "Ascites."]])


def _empty_whole_report(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_empty.nii.gz")
    write_csv(folder / "reports.csv", WHOLE_HEADER, _whole_reports([["S_empty", STUDY_DATE, ""]]))
    return inputs(folder, extra=["S_empty"])


def _header_only_report(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_hdr.nii.gz")
    header = f"PATIENT: {PATIENT_NAME}    MRN: {MRN}\nEXAM DATE: April 14, 2021\nElectronically signed: Chidi Okonkwo, MD"
    write_csv(folder / "reports.csv", WHOLE_HEADER, _whole_reports([["S_hdr", STUDY_DATE, header]]))
    return inputs(folder, extra=["S_hdr"])


def _name_as_patient_id(folder: Path) -> list[str]:
    (folder / "volumes").mkdir()
    write_nifti(folder / "volumes" / "S_named.nii.gz")
    return inputs(folder, extra=["S_named"], ehr=[*ehr_rows(GOOD), [PATIENT_NAME, "S_named", "R18.8", "ICD10CM", CODE_DATE]])


def _no_key(folder: Path) -> list[str]:
    args = inputs(folder)
    return args[: args.index("--key-file")]


def _link_table_in_out(folder: Path) -> list[str]:
    return [*inputs(folder), "--link-table", str(folder.parent / "out" / "links.csv")]


def _reports_without_header_row(folder: Path) -> list[str]:
    write_csv(folder / "reports.csv", ["G1", STUDY_DATE, f"Patient {PATIENT_NAME}", "Ascites."], report_rows(["G2"]))
    return inputs(folder)


CASES = [
    # DICOM series
    Case("ct-dicom-missing-slice", "ct", with_volume("S_gap", _gap), bad=st("S_gap"),
         reason=r"missing slices", good=GOOD_NAMES, params=PARAMS),
    Case("ct-dicom-uneven-spacing", "ct", with_volume("S_uneven", _uneven), bad=st("S_uneven"), reason=r"non-uniform slice spacing",
         good=GOOD_NAMES, params=PARAMS),
    Case("ct-dicom-duplicate-position", "ct", with_volume("S_dupz", _duplicate), bad=st("S_dupz"), reason=r"duplicate slice position",
         good=GOOD_NAMES, params=PARAMS),
    Case("ct-dicom-mixed-orientation", "ct", with_volume("S_orient", _mixed_orientation), bad=st("S_orient"), reason=r"mixed orientation",
         good=GOOD_NAMES, params=PARAMS),
    Case("ct-dicom-mixed-size", "ct", with_volume("S_size", _mixed_size), bad=st("S_size"), reason=r"differ in size", good=GOOD_NAMES,
         params=PARAMS),
    Case("ct-dicom-two-series", "ct", with_volume("S_two", _two_series), bad=st("S_two"), reason=r"2 DICOM series.*used",
         good=[*GOOD_NAMES, st("S_two")], expect="warning", params=PARAMS, check=slices_of("S_two", 12)),
    Case("ct-dicom-unreadable-slice", "ct", with_volume("S_trunc", _truncated_slice), bad=st("S_trunc") + "/IM0006.dcm",
         reason=r"unreadable DICOM slice", good=GOOD_NAMES, params=PARAMS),
    Case("ct-dicom-non-dicom-file", "ct", with_volume("S_notes", _notes_in_series), bad=st("S_notes") + "/notes.txt",
         reason=r"not a DICOM file", good=[*GOOD_NAMES, st("S_notes")], expect="warning", params=PARAMS, check=slices_of("S_notes", 12)),
    # NIfTI and other volume files
    Case("ct-nifti-truncated", "ct", with_volume("S_cut.nii.gz", _truncated_nifti), bad=st("S_cut") + ".nii.gz",
         reason=r"truncated|unreadable",
         good=GOOD_NAMES, params=PARAMS),
    Case("ct-nifti-nan-voxel", "ct", with_volume("S_nan.nii.gz", _nan_voxel), bad=st("S_nan") + ".nii.gz",
         reason=r"NaN voxel", good=GOOD_NAMES,
         params=PARAMS),
    Case("ct-nifti-zero-affine", "ct", with_volume("S_zero.nii.gz", lambda p: write_nifti_affine(p, 0.0)), bad=st("S_zero") + ".nii.gz",
         reason=r"broken affine", good=GOOD_NAMES, params=PARAMS),
    Case("ct-nifti-nan-affine", "ct", with_volume("S_nanaff.nii.gz", lambda p: write_nifti_affine(p, np.nan)),
         bad=st("S_nanaff") + ".nii.gz",
         reason=r"broken affine", good=GOOD_NAMES, params=PARAMS),
    Case("ct-nifti-mr", "ct", with_volume("S_mr.nii.gz", _mr), bad=st("S_mr") + ".nii.gz",
         reason=r"not CT", good=GOOD_NAMES, params=PARAMS),
    Case("ct-nifti-too-few-slices", "ct", with_volume("S_thin.nii.gz", lambda p: write_nifti(p, ct_array((24, 24, 2)))),
         bad=st("S_thin") + ".nii.gz", reason=r"too few slices", good=GOOD_NAMES, params=PARAMS),
    Case("ct-nifti-2d", "ct", with_volume("S_flat.nii.gz", lambda p: write_nifti(p, ct_array((24, 24)))), bad=st("S_flat") + ".nii.gz",
         reason=r"2D image", good=GOOD_NAMES, params=PARAMS),
    Case("ct-volume-not-nifti", "ct", with_volume("S_png.nii.gz", _png_as_nifti), bad=st("S_png") + ".nii.gz", reason=r"unreadable",
         good=GOOD_NAMES, params=PARAMS),
    Case("ct-volume-gzip-text", "ct", with_volume("S_text.nii.gz", _gzip_text), bad=st("S_text") + ".nii.gz", reason=r"unreadable",
         good=GOOD_NAMES, params=PARAMS),
    Case("ct-volume-unsupported-type", "ct", with_volume("S_meta.mha", lambda p: p.write_bytes(b"ObjectType = Image\n")),
         bad=st("S_meta") + ".mha", reason=r"unsupported file type", good=GOOD_NAMES, params=PARAMS),
    Case("ct-duplicate-study-id", "ct", _duplicate_study_id, bad=st("S_twin") + ".nii", reason=r"duplicate study id", good=GOOD_NAMES,
         params=PARAMS, check=not_curated("S_twin")),
    Case("ct-volume-without-report", "ct", _volume_without_report, bad=st("S_norep"), reason=r"no report", good=GOOD_NAMES, params=PARAMS),
    Case("ct-volume-without-ehr", "ct", _volume_without_ehr, bad=st("S_noehr"), reason=r"no EHR rows", good=GOOD_NAMES, params=PARAMS),
    # EHR table
    Case("ct-ehr-day-first-dates", "ct", _day_first, bad="ehr.csv", reason=r"read day-first", good=GOOD_NAMES, expect="warning",
         params=PARAMS, check=labelled("G1")),
    Case("ct-ehr-ambiguous-dates", "ct", _ambiguous, bad="ehr.csv", reason=r"ambiguous.*date_order", expect="error", params=PARAMS),
    Case("ct-ehr-date-order-param", "ct", _ambiguous, bad="ehr.csv", reason=r"read day-first.*date_order", good=GOOD_NAMES,
         expect="warning", params={**PARAMS, "date_order": "day-first"}, check=labelled("G1")),
    Case("ct-ehr-timezone-dates", "ct", _time_zones, bad="ehr.csv", reason=r"time zone", good=GOOD_NAMES, expect="warning",
         params=PARAMS, check=labelled("G2")),
    Case("ct-ehr-unparseable-date", "ct", _bad_date_row, bad="ehr.csv:row 3", reason=r"unparseable date", good=GOOD_NAMES, params=PARAMS),
    Case("ct-ehr-semicolons", "ct", _semicolons, bad="ehr.csv:row 3", reason=r"malformed code", good=GOOD_NAMES, params=PARAMS),
    Case("ct-ehr-missing-column", "ct", _missing_column, bad="ehr.csv", reason=r"code_system", expect="error", params=PARAMS),
    Case("ct-ehr-empty-file", "ct", _empty_ehr, bad="ehr.csv", reason=r"empty|cannot be parsed|no columns", expect="error",
         params=PARAMS),
    # reports table
    Case("ct-reports-latin1", "ct", _latin1_reports, bad="reports.csv", reason=r"not UTF-8", good=GOOD_NAMES, expect="warning",
         params=PARAMS, check=captions_hold("Lésion hépatique", absent=["\ufffd", "Ã©"])),
    Case("ct-report-html", "ct", _html_report, bad="reports.csv:row 1", reason=r"HTML", good=GOOD_NAMES, expect="warning", params=PARAMS,
         check=captions_hold("No calculi & no hydronephrosis", absent=["<p>", "<b>", "&amp;"])),
    Case("ct-report-rtf", "ct", _rtf_report, bad="study " + st("S_rtf"),
         reason=r"RTF", good=GOOD_NAMES, params=PARAMS, check=not_curated("S_rtf")),
    Case("ct-report-conflicting", "ct", _conflicting_reports, bad="study " + st("S_dup"), reason=r"conflicting reports", good=GOOD_NAMES,
         params=PARAMS, check=not_curated("S_dup")),
    Case("ct-report-without-volume", "ct", _report_without_volume, bad="study " + st("S_novol"),
         reason=r"no volume", good=GOOD_NAMES, params=PARAMS),
    Case("ct-report-bad-study-date", "ct", _bad_study_date, bad="study " + st("S_when"), reason=r"unparseable study date", good=GOOD_NAMES,
         params=PARAMS, check=not_curated("S_when")),
    # phecode map
    Case("ct-phecode-map-missing-column", "ct", _map_without_phecode, bad="map.csv", reason=r"phecode", expect="error", params=PARAMS),
    # identifiers in the inputs: handled as above, and nothing identifying in any output file
    Case("ct-deid-cp1252-report", "ct", _cp1252_identifiers, bad="reports.csv", reason=r"not UTF-8", good=GOOD_NAMES,
         expect="warning", params=PARAMS, check=no_leak("Quince", MRN, also=captions_hold("Lésion hépatique de 2 cm"))),
    Case("ct-deid-html-report", "ct", _html_identifiers, bad="reports.csv:row 1", reason=r"HTML", good=GOOD_NAMES, expect="warning",
         params=PARAMS, check=no_leak("QUINCE", "BARTHOLOMEW", also=captions_hold("Normal size"))),
    Case("ct-deid-rtf-report", "ct", _rtf_identifiers, bad="study " + st("S_rtfname"), reason=r"RTF", good=GOOD_NAMES,
         params=PARAMS, check=no_leak("QUINCE", "BARTHOLOMEW", MRN, "S_rtfname")),
    Case("ct-deid-empty-report", "ct", _empty_whole_report, bad=st("S_empty"), reason=r"no report", good=GOOD_NAMES,
         params=PARAMS, check=no_leak("S_empty", also=captions_hold("No calculi"))),
    Case("ct-deid-header-only-report", "ct", _header_only_report, bad=st("S_hdr"), reason=r"no report", good=GOOD_NAMES,
         params=PARAMS, check=no_leak("QUINCE", "BARTHOLOMEW", MRN, "Okonkwo", "S_hdr")),
    Case("ct-deid-name-as-patient-id", "ct", _name_as_patient_id, bad="ehr.csv:row 3", reason=r"patient id looks like a name",
         good=GOOD_NAMES, params=PARAMS, check=no_leak("QUINCE", "BARTHOLOMEW", "S_named")),
    Case("ct-deid-no-key", "ct", _no_key, bad="DOMAINFM_PSEUDONYM_KEY", reason=r"no pseudonym key.*--key-file", expect="error",
         params=PARAMS),
    Case("ct-deid-link-table-in-output", "ct", _link_table_in_out, bad="--link-table", reason=r"inside the output folder",
         expect="error", params=PARAMS),
    # the error names the file but quotes none of its cells (the header row is data here): no name in the message
    Case("ct-deid-reports-without-header", "ct", _reports_without_header_row, bad="reports.csv", reason=r"^(?!.*quince).*header row",
         expect="error", params=PARAMS),
]
