"""The planted-identifier corpus end to end: CT and pathology curation leave no identifier in any file they write.

Inputs are built from pipelines.deid.corpus: a DICOM series whose folder is an accession number and
whose header names the patient, staff and institution (plus a non-DICOM file named after the patient
inside it), NIfTI files named by an accession number and by the patient's name, EHR rows keyed by
record numbers with dates of care (and one row with a name for an id), a whole report with a RIS
header, findings/impression columns, an RTF report and an orphan report row; a narrated lecture whose
transcript names a patient, and a TCGA slide whose caption does. Every file under the output folders
(tar members and parquet rows too), the captured stdout and stderr (logs included) and the run's
error messages are searched for every planted string, case-insensitively. The clinical phrases must
come out unchanged.

`python tests/test_deid_corpus.py --domainfm PATH` runs the CT half through any `domainfm` (the
baseline, which knows neither --key-file nor the `report` column, gets the report as findings) and
prints identifiers found / planted per category.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bad_inputs.ct import ct_array, regular, write_csv, write_dicom_series, write_nifti  # noqa: E402

from pipelines.deid import corpus  # noqa: E402
from pipelines.deid.audit import dicom_files, find_leaks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY_TEXT = "corpus-test-key-5b1e0c7d9a"
CT_PARAMS = {"pixdim": [6.0, 6.0, 6.0], "spatial_size": [8, 8, 8], "min_positive": 1, "min_slices": 4, "workers": 0}
# Phrases of the written sections (findings, impression, transcript windows, captions) that must survive unchanged.
CT_CLINICAL = ["Crohn disease", "Morison pouch", "pouch of Douglas", "Parkinson disease", "right kidney", "4 mm", "15 cm",
               "2.3 x 1.5 cm", "-20 HU", "Bosniak 2 cyst", "Couinaud segment 7", "12 mm", "Gerota fascia", "No hydronephrosis",
               "Cholelithiasis", "Splenomegaly", "Terminal ileitis"]
PATHOLOGY_CLINICAL = ["invasive ductal carcinoma", "Nottingham grade 2", "Reed-Sternberg cells", "Hodgkin lymphoma"]
EXTRA_NEEDLES = ["ACC55501234", "ACC99887766", "Pennywhistle"]  # ids of rejected inputs, a name in an RTF report


# ---------------------------------------------------------------- CT inputs


def _dicom_with_header(folder: Path) -> None:
    """A regular series whose header carries the patient's, staff's and institution's identifiers."""
    for path in write_dicom_series(folder, regular(12)):
        ds = pydicom.dcmread(path)
        ds.PatientName = "QUINCE^BARTHOLOMEW"
        ds.PatientID = corpus.PATIENT_DICOM
        ds.AccessionNumber = corpus.STUDY_DICOM
        ds.PatientBirthDate = "19310303"
        ds.PatientAddress = "1423 Larkspur Lane, Springfield"
        ds.PatientTelephoneNumbers = "(217) 555-0143"
        ds.ReferringPhysicianName = "MARCHETTI^HELENA"
        ds.InstitutionName = "Larkspur Valley Medical Center"
        ds.DeviceSerialNumber = "CT-SN-449921"
        ds.StudyDate = corpus.STUDY_DATE.replace("-", "")
        ds.ConvolutionKernel = "B30f"
        ds.save_as(path)
    (folder / "Quince_consent.txt").write_text("scanned consent form of QUINCE, BARTHOLOMEW\n")


def build_ct(folder: Path, whole_report_column: bool = True) -> dict[str, Path]:
    """The CT inputs under `folder`; returns their paths."""
    vols = folder / "volumes"
    vols.mkdir(parents=True)
    _dicom_with_header(vols / corpus.STUDY_DICOM)
    write_nifti(vols / f"{corpus.STUDY_NIFTI}.nii.gz")
    write_nifti(vols / f"{corpus.STUDY_NAMED}.nii.gz")
    write_nifti(vols / "ACC99887766.nii.gz", ct_array(dtype=np.float32) * np.nan)  # refused: NaN voxels
    write_nifti(vols / "S_rtf.nii.gz")
    ehr = [[corpus.PATIENT_DICOM, corpus.STUDY_DICOM, "R18.8", "ICD10CM", "2021-02-20"],
           [corpus.PATIENT_NIFTI, corpus.STUDY_NIFTI, "R18.8", "ICD10CM", "2021-02-25"],
           [corpus.PATIENT_NAMED, corpus.STUDY_NAMED, "R18.8", "ICD10CM", "2021-03-01"],
           [corpus.PATIENT_NAMED, "ACC99887766", "R18.8", "ICD10CM", "2021-03-01"],
           ["P-RTF-01", "S_rtf", "R18.8", "ICD10CM", "2021-03-01"],
           ["QUINCE, BARTHOLOMEW", corpus.STUDY_DICOM, "K76.89", "ICD10CM", "2021-02-20"]]  # a name for an id: refused row
    if not whole_report_column:  # a version that links studies through a name-for-id row would refuse the study
        ehr = ehr[:-1]
    write_csv(folder / "ehr.csv", ["patient_id", "study_id", "code", "code_system", "date"], ehr)
    rtf = r"{\rtf1\ansi Patient: PENNYWHISTLE\par LIVER: Normal.\par}"
    rows = [[corpus.STUDY_DICOM, "", "", "", corpus.REPORT],
            [corpus.STUDY_NIFTI, "2021-03-01", corpus.FINDINGS, corpus.IMPRESSION, ""],
            [corpus.STUDY_NAMED, "2021-03-05", "Liver: Normal.", "Splenomegaly.", ""],
            ["ACC99887766", "2021-03-05", "Liver: Normal.", "No acute abnormality.", ""],
            ["S_rtf", "2021-03-05", rtf, "Normal.", ""],
            ["ACC55501234", "2021-03-05", "Liver: Normal.", "Seen by Dr. Pennywhistle.", ""]]  # no volume: a rejects row
    header = ["study_id", "study_date", "findings", "impression", "report"]
    if not whole_report_column:  # for a version without the report column: the whole report as findings
        rows = [[r[0], r[1] or corpus.STUDY_DATE, r[2] or r[4], r[3] or "-"] for r in rows]
        header = header[:4]
    write_csv(folder / "reports.csv", header, rows)
    (folder / "pseudonym.key").write_text(KEY_TEXT + "\n")
    return {"volumes": vols, "ehr": folder / "ehr.csv", "reports": folder / "reports.csv", "key": folder / "pseudonym.key"}


def _params(folder: Path, section: str, values: dict) -> Path:
    import yaml

    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({section: {"curate": values}}))
    return path


def run_domainfm(args: list[str], domainfm: str | None = None) -> subprocess.CompletedProcess:
    """`domainfm ARGS` as its own process (this checkout's CLI unless `domainfm` names an executable), without $DOMAINFM_PSEUDONYM_KEY."""
    command = [domainfm] if domainfm else [sys.executable, "-c", "from pipelines.cli import main; main()"]
    env = {k: v for k, v in os.environ.items() if k != "DOMAINFM_PSEUDONYM_KEY"}
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def curate_ct(tmp: Path, domainfm: str | None = None) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """Curate the CT corpus into tmp/out (link table at tmp/links.csv); (out, the run, the inputs folder)."""
    inputs = tmp / "inputs"
    baseline = domainfm is not None and "baseline" in domainfm
    paths = build_ct(inputs, whole_report_column=not baseline)
    out = tmp / "out"
    args = ["curate", "ct", "--volumes", str(paths["volumes"]), "--ehr", str(paths["ehr"]), "--reports", str(paths["reports"]),
            "--out", str(out), "--params", str(_params(tmp, "ct", CT_PARAMS))]
    if not baseline:
        args += ["--key-file", str(paths["key"]), "--link-table", str(tmp / "links.csv")]
    return out, run_domainfm(args, domainfm=domainfm), inputs


def leaks_by_category(out: Path, run: subprocess.CompletedProcess, fields: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{category: [planted strings found in the output or the run's output]} for the planted identifiers (of `fields` if given)."""
    planted = [p for p in corpus.PLANTED if not fields or any(f in p.field for f in fields)]
    leaks = find_leaks(out, [p.text for p in planted], {"stdout": run.stdout, "stderr": run.stderr})
    found: dict[str, list[str]] = {}
    for p in planted:
        if p.text in leaks:
            found.setdefault(p.category, []).append(p.text)
    return found


# ---------------------------------------------------------------- tests


CT_FIELDS = ("report text", "findings", "impression", "EHR", "study id", "file name", "DICOM")


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("deid_ct")
    out, run, inputs = curate_ct(tmp)
    assert run.returncode == 0, run.stderr[-2000:]
    return out, run, inputs


def test_every_planted_ct_identifier_is_in_the_inputs(ct_run) -> None:
    """The test is only as good as its inputs: each CT-side planted string is really there (so a leak would show)."""
    _, _, inputs = ct_run
    texts = []
    for path in inputs.rglob("*"):
        texts.append(str(path.relative_to(inputs)))
        if path.is_file():
            data = path.read_bytes()
            texts.append(data.decode("latin-1"))
    blob = "\n".join(texts).lower()
    missing = [p.text for p in corpus.PLANTED if any(f in p.field for f in CT_FIELDS) and p.text.lower() not in blob]
    assert missing == []


def test_no_planted_identifier_reaches_any_ct_output(ct_run) -> None:
    out, run, _ = ct_run
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 3  # the DICOM study, the accession-named and the name-named NIfTI
    leaks = find_leaks(out, [p.text for p in corpus.PLANTED] + EXTRA_NEEDLES, {"stdout": run.stdout, "stderr": run.stderr})
    assert leaks == {}
    assert dicom_files(out) == []  # nothing is written back as DICOM


def test_ct_rejects_and_warnings_name_inputs_by_pseudonym(ct_run) -> None:
    out, _, _ = ct_run
    from pipelines.deid import key_from_text

    key = key_from_text(KEY_TEXT, "test")
    rejects = pd.read_csv(out / "rejects.csv", dtype=str, keep_default_na=False)
    named = " ".join(rejects["input"])
    assert f"volumes/{key.pseudonym('study', 'ACC99887766')}.nii.gz" in named  # the NaN volume
    assert f"study {key.pseudonym('study', 'ACC55501234')}" in named  # the report without a volume
    assert any(r.startswith("ehr.csv:row 6") and "looks like a name" in reason for r, reason in zip(rejects["input"], rejects["reason"]))
    summary = json.loads((out / "summary.json").read_text())
    consent = [w for w in summary["warnings"] if "consent" in w]
    assert consent and consent[0].startswith(f"volumes/{key.pseudonym('study', corpus.STUDY_DICOM)}/[NAME]_consent.txt")
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert set(manifest["id"]) == {f"ct-{key.pseudonym('study', s)}" for s in (corpus.STUDY_DICOM, corpus.STUDY_NIFTI, corpus.STUDY_NAMED)}
    dicom = [json.loads(p)["dicom"] for p in manifest["provenance"] if json.loads(p)["dicom"]]
    assert dicom and set(dicom[0]) <= {"Modality", "BodyPartExamined", "ConvolutionKernel", "SliceThickness", "PixelSpacing",
                                       "SpacingBetweenSlices", "KVP", "Rows", "Columns", "PhotometricInterpretation",
                                       "RescaleSlope", "RescaleIntercept"}
    assert dicom[0]["ConvolutionKernel"] == "B30f"


def test_ct_clinical_content_survives(ct_run) -> None:
    out, _, _ = ct_run
    captions = "\n".join(pd.read_parquet(out / "manifest.parquet")["caption"])
    assert [c for c in CT_CLINICAL if c not in captions] == []
    # dates become offsets from the study date: 3/4/21 is a day after the 3 March study, 04/05/2021 33 days after 1 March
    assert "[DATE+1d]" in captions and "[DATE+35d]" in captions
    organs = [json.loads(p)["organ_sections"] for p in pd.read_parquet(out / "manifest.parquet")["provenance"]]
    assert any({"liver", "spleen", "kidneys", "peritoneum"} <= set(o) for o in organs)  # inline organ headings split


def test_link_table_outside_output_holds_the_originals(ct_run, tmp_path: Path) -> None:
    out, _, inputs = ct_run
    links = pd.read_csv(out.parent / "links.csv", dtype=str)
    assert {corpus.STUDY_DICOM, corpus.PATIENT_DICOM, corpus.STUDY_NAMED} <= set(links["original"])
    assert oct((out.parent / "links.csv").stat().st_mode & 0o777) == "0o600"
    run = run_domainfm(["curate", "ct", "--volumes", str(inputs / "volumes"), "--ehr", str(inputs / "ehr.csv"),
                        "--reports", str(inputs / "reports.csv"), "--key-file", str(inputs / "pseudonym.key"),
                        "--out", str(tmp_path / "o"), "--link-table", str(tmp_path / "o" / "links.csv")])
    assert run.returncode == 1 and "Error:" in run.stderr and "inside the output folder" in run.stderr


def test_ct_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    paths = build_ct(tmp_path / "inputs")
    run = run_domainfm(["curate", "ct", "--volumes", str(paths["volumes"]), "--ehr", str(paths["ehr"]),
                        "--reports", str(paths["reports"]), "--out", str(tmp_path / "out")])
    assert run.returncode == 1 and "Error: no pseudonym key" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- pathology


@pytest.fixture(scope="module")
def pathology_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    from bad_inputs.pathology import PARAMS, slide_image, transcript_text, write_captions, write_slide, write_video

    tmp = tmp_path_factory.mktemp("deid_pathology")
    videos, slides = tmp / "videos", tmp / "slides"
    write_video(videos / "lecture_case.mp4", (1, 4, 0), seed=3)
    cues = [(0.5 + 3 * i, 2.5 + 3 * i, text) for i, text in enumerate(corpus.TRANSCRIPT)]
    (videos / "lecture_case.vtt").write_text(transcript_text(cues, "vtt"))
    write_slide(slides / f"{corpus.TCGA_SLIDE}.tiff", slide_image(17))
    write_captions(slides / "captions.csv", [(corpus.TCGA_SLIDE, f'"{corpus.CAPTION}"', "tumour")])
    (tmp / "pseudonym.key").write_text(KEY_TEXT)
    out = tmp / "out"
    run = run_domainfm(["curate", "pathology", "--videos", str(videos), "--slides", str(slides), "--slide-captions",
                        str(slides / "captions.csv"), "--key-file", str(tmp / "pseudonym.key"), "--out", str(out),
                        "--params", str(_params(tmp, "pathology", {**PARAMS, "workers": 0}))])
    assert run.returncode == 0, run.stderr[-2000:]
    return out, run


def test_no_planted_identifier_reaches_any_pathology_output(pathology_run) -> None:
    out, run = pathology_run
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["source"].str.contains("lecture_case").any() and len(manifest) >= 2  # video windows and slide tiles
    leaks = leaks_by_category(out, run, ("transcript", "slide"))
    assert leaks == {}
    texts = " ".join(manifest["caption"]) + " " + " ".join(manifest["provenance"])
    assert [c for c in PATHOLOGY_CLINICAL if c not in texts] == []


def test_tcga_slide_keeps_only_the_allowed_fields(pathology_run) -> None:
    out, _ = pathology_run
    from pipelines.deid import key_from_text

    key = key_from_text(KEY_TEXT, "test")
    patient = key.pseudonym("patient", "TCGA-A7-A0CE")
    manifest = pd.read_parquet(out / "manifest.parquet")
    slides = manifest[manifest["provenance"].map(lambda p: "slide_id" in json.loads(p))]
    assert set(slides["provenance"].map(lambda p: json.loads(p)["slide_id"])) == {f"{patient}-01Z-00-DX1"}
    assert set(slides["group"]) == {f"patient:{patient}"}


# ---------------------------------------------------------------- before/after figures


def main() -> None:
    """Run the CT corpus through `--domainfm` and print identifiers found (not leaked) / planted per category."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domainfm", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, run, _ = curate_ct(Path(tmp), args.domainfm)
        if run.returncode != 0:
            print(run.stderr[-2000:])
        leaked = leaks_by_category(out, run, CT_FIELDS)
    planted = [p for p in corpus.PLANTED if any(f in p.field for f in CT_FIELDS)]
    total = 0
    for category in corpus.CATEGORIES:
        mine = [p for p in planted if p.category == category]
        if mine:
            found = len(mine) - len(leaked.get(category, []))
            total += found
            print(f"| {category} | {found}/{len(mine)} | {', '.join(leaked.get(category, []))} |")
    print(f"| all | {total}/{len(planted)} |")


if __name__ == "__main__":
    main()
