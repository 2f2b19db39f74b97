"""CT curation on synthetic inputs: demo data end to end, bad inputs, codes, reports, cache."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from bad_inputs.ct import EHR_HEADER, REPORT_HEADER, ehr_rows, regular, report_rows, write_csv, write_dicom_series, write_nifti

from domains.ct.curation.curate import CTCurateConfig, curate
from domains.ct.curation.dates import parse_dates
from domains.ct.curation.ehr import (
    clean_codes,
    code_phenotypes,
    is_valid_code,
    load_phecode_map,
    normalise_code,
    phecode_lineage,
)
from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume
from domains.ct.curation.reports import html_to_text, markup_kind, report_views, split_organs, split_report
from domains.ct.curation.volumes import VolumeError, check_slice_positions, load_dicom_series
from domains.ct.demo.demo_data import FINDINGS, LIVER_HU, CTDemoConfig, demo_key_text, phantom, write_demo_data
from pipelines.deid import key_from_text, scrub
from pipelines.errors import InputError
from pipelines.io.text import read_table

KEY = key_from_text("test-key-0123456789abcdef", "tests")
SMALL = dict(pixdim=[4.0, 4.0, 6.0], spatial_size=[48, 48, 32], min_positive=3)
DEMO_SEED = 0
DEMO = dict(n_patients=10, n_studies=14, shape=[64, 64, 40], spacing=[4.5, 4.5, 8.0], finding_probability=0.5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("ct") / "raw"
    write_demo_data(raw, CTDemoConfig(**DEMO))
    return raw


@pytest.fixture(scope="module")
def curated(demo: Path) -> tuple[Path, dict]:
    out = demo.parent / "curated"
    cfg = CTCurateConfig(**SMALL, test_fraction=0.3)
    key = key_from_text((demo / "demo.key").read_text(), "demo")
    summary = curate(demo / "volumes", demo / "ehr.csv", demo / "reports.csv", demo / "phecode_map.csv", out, cfg, key)
    return out, summary


def _samples(out: Path) -> list[dict]:
    samples = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            files: dict[str, dict] = {}
            for m in tar:
                key, ext = m.name.split(".", 1)
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()
        samples += files.values()
    return samples


def test_demo_end_to_end_contract(demo: Path, curated) -> None:
    out, summary = curated
    assert summary["pairs"]["kept"] == 12  # 14 studies - one without report - one without EHR rows
    assert summary["rejected"]["study: no report"] == 1
    assert summary["rejected"]["study: no EHR rows"] == 1
    assert summary["rejected"]["ehr: malformed code"] >= 2
    phenos = json.loads((out / "phenotypes.json").read_text())
    ids = [p["id"] for p in phenos["phenotypes"]]
    assert [p["index"] for p in phenos["phenotypes"]] == list(range(len(ids)))
    assert all(p["count_planned"] >= 3 for p in phenos["phenotypes"])
    samples = _samples(out)
    assert len(samples) == 12
    for s in samples:
        vol = np.load(io.BytesIO(s["npy"]))
        assert vol.shape == (1, 48, 48, 32) and vol.dtype == np.float32
        assert 0.0 <= vol.min() and vol.max() <= 1.0
        meta = json.loads(s["json"])
        prov = meta["provenance"]
        assert set(prov["phenotypes"]) <= set(ids)
        assert "liver" in prov["organ_sections"] and "organ:liver" in meta["caption_variants"]
        caption = s["txt"].decode()
        assert caption.startswith("FINDINGS:") and "Dr. [NAME]" in caption and "[DATE+0d]" in caption
        assert "PATIENT" not in caption and "Electronically signed" not in caption  # header and signature lines dropped
    # Patient and study ids never reach any output; groups are keyed pseudonyms.
    raw_ids = set(pd.read_csv(demo / "ehr.csv")["patient_id"]) | set(pd.read_csv(demo / "ehr.csv")["study_id"])
    blob = b"".join(s["json"] + s["txt"] for s in samples).decode() + (out / "manifest.parquet").read_bytes().decode("latin-1")
    assert not any(pid in blob for pid in raw_ids)
    manifest = pd.read_parquet(out / "manifest.parquet")
    key = key_from_text(demo_key_text(DEMO_SEED), "demo")
    assert set(manifest["group"]) <= {key.pseudonym("patient", p) for p in raw_ids}
    assert set(manifest["id"]) <= {f"ct-{key.pseudonym('study', s)}" for s in raw_ids}
    assert manifest.groupby("group")["split"].nunique().max() == 1  # a patient never straddles splits


def test_labels_follow_the_drawn_findings(demo: Path, curated) -> None:
    """Studies with a kidney stone drawn carry the kidney-calculus phecode (EHR coded near the scan)."""
    out, _ = curated
    labels = pd.read_csv(demo / "labels.csv").set_index("study_id")
    assert list(labels.columns) == list(FINDINGS)
    manifest = pd.read_parquet(out / "manifest.parquet")
    for prov in manifest["provenance"].map(json.loads):
        if labels.loc[prov["study_id"], "kidney_stone"] == 1:
            assert "594.1" in prov["phenotypes"] and "594" in prov["phenotypes"]


def test_rerun_hits_cache_and_resumes(demo: Path, curated, tmp_path: Path) -> None:
    out, _ = curated
    cfg = CTCurateConfig(**SMALL, test_fraction=0.3, cache_dir=str(out.parent / "cache"))
    key = key_from_text((demo / "demo.key").read_text(), "demo")
    summary = curate(demo / "volumes", demo / "ehr.csv", demo / "reports.csv", demo / "phecode_map.csv", tmp_path / "again", cfg, key)
    assert summary["run"]["volumes_cache_hit"] == 12
    assert "volumes_preprocessed" not in summary["run"]
    # Cache hits change how the run went, not what it wrote: every file is the same bytes, so DVC
    # sees no change downstream.
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in written:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_cache_key_changes_with_params_and_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data, affine = phantom(CTDemoConfig(shape=[40, 40, 24], spacing=[6, 6, 10]), set(), rng)
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    cfg = PreprocessConfig(pixdim=[6, 6, 10], spatial_size=[40, 40, 24])
    a, meta, hit = preprocess_volume(path, cfg, tmp_path / "cache")
    assert not hit
    b, _, hit = preprocess_volume(path, cfg, tmp_path / "cache")
    assert hit and np.array_equal(a, b)
    _, _, hit = preprocess_volume(path, PreprocessConfig(pixdim=[6, 6, 10], spatial_size=[32, 32, 24]), tmp_path / "cache")
    assert not hit
    data[0, 0, 0] += 1
    nib.save(nib.Nifti1Image(data, affine), str(path))
    _, meta2, hit = preprocess_volume(path, cfg, tmp_path / "cache")
    assert not hit and meta2["cache_key"] != meta["cache_key"]


def test_lps_file_lands_on_same_ras_volume(tmp_path: Path) -> None:
    """Voxel order in the file must not matter: RAS reorientation gives identical tensors."""
    data, affine = phantom(CTDemoConfig(shape=[40, 40, 24], spacing=[6, 6, 10], noise_hu=0), {"liver_lesion"}, np.random.default_rng(1))
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ras.nii.gz"))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1]), affine @ flip), str(tmp_path / "lps.nii.gz"))
    cfg = PreprocessConfig(pixdim=[6, 6, 10], spatial_size=[40, 40, 24])
    a, _, _ = preprocess_volume(tmp_path / "ras.nii.gz", cfg, None)
    b, _, _ = preprocess_volume(tmp_path / "lps.nii.gz", cfg, None)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # Liver (patient's right = +x in RAS) is in the upper half of axis 0.
    x_profile = (np.abs(a[0] - (LIVER_HU + 1000) / 2000) < 0.002).sum(axis=(1, 2))
    assert x_profile[20:].sum() > 5 * x_profile[:20].sum()


# ---------------------------------------------------------------- bad inputs


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    return path


def _singular_nifti(path: Path, data: np.ndarray) -> Path:
    """nibabel refuses to write a singular affine, so the header is patched on disk: sform only
    (qform_code 0 at byte 252), with row y (srow_y, bytes 296-311) zeroed."""
    _nifti(path, data)
    raw = bytearray(path.read_bytes())
    raw[252:254] = np.int16(0).tobytes()
    raw[254:256] = np.int16(1).tobytes()
    raw[296:312] = np.zeros(4, np.float32).tobytes()
    path.write_bytes(bytes(raw))
    return path


def test_bad_volumes_rejected_with_reasons(tmp_path: Path) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    ct = np.full((30, 30, 20), -1000, np.int16)
    ct[5:25, 5:25] = 40
    _nifti(vols / "good.nii.gz", ct)
    _nifti(vols / "mr.nii.gz", np.abs(ct).astype(np.int16) // 10)  # no air below -900
    _nifti(vols / "thin.nii.gz", ct[:, :, :3])
    _nifti(vols / "flat.nii", ct[:, :, 0])
    nan = ct.astype(np.float32)
    nan[1, 1, 1] = np.nan
    _nifti(vols / "nan.nii.gz", nan)
    _singular_nifti(vols / "singular.nii", ct)
    whole = (vols / "good.nii.gz").read_bytes()
    (vols / "trunc.nii.gz").write_bytes(whole[: len(whole) // 2])
    (vols / "notes.txt").write_text("hello")
    studies = ["good", "mr", "thin", "flat", "nan", "singular", "trunc", "orphan"]
    with open(tmp_path / "ehr.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "study_id", "code", "code_system", "date"])
        for i, s in enumerate(studies[:-1]):
            w.writerow([f"pat{i}", s, "R18.8", "ICD10CM", "2020-01-01"])
        w.writerow(["pat0", "good", "NOT A CODE", "ICD10CM", "2020-01-01"])
        w.writerow(["pat0", "good", "K76.89", "ICD11", "2020-01-01"])
    with open(tmp_path / "reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "findings", "impression"])
        for s in studies:
            w.writerow([s, "LIVER: ok.", "Ascites."])
    _nifti(vols / "orphan.nii.gz", ct)  # has a report, no EHR rows
    cfg = CTCurateConfig(pixdim=[3, 3, 3], spatial_size=[32, 32, 16], min_positive=1, min_slices=10)
    summary = curate(vols, tmp_path / "ehr.csv", tmp_path / "reports.csv", None, tmp_path / "out", cfg, KEY)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    by_input = {Path(i.split(" (")[0]).name: r for i, r in zip(rejects["input"], rejects["reason"])}  # "volumes/st-... (detail)"
    by_input = {_named(name): reason for name, reason in by_input.items()}
    assert not any(s in " ".join(rejects["input"]) for s in studies)  # volumes are named by pseudonym only
    assert by_input["mr.nii.gz"] == "not CT (no air near -1000 HU)"
    assert by_input["thin.nii.gz"] == "too few slices"
    assert by_input["flat.nii"] == "2D image, not a volume"
    assert by_input["nan.nii.gz"] == "NaN voxels"
    assert by_input["singular.nii"] == "broken affine"
    assert by_input["trunc.nii.gz"] == "truncated or unreadable NIfTI"
    assert by_input["notes.txt"] == "unsupported file type"
    assert by_input["orphan.nii.gz"] == "no EHR rows"
    assert summary["rejected"]["ehr: malformed code"] == 1
    assert summary["rejected"]["ehr: unknown code system"] == 1
    assert summary["pairs"]["kept"] == 1
    phenos = json.loads((tmp_path / "out" / "phenotypes.json").read_text())
    assert phenos["label_source"] == "icd10_category"
    assert [p["id"] for p in phenos["phenotypes"]] == ["R18"]


def _named(pseudonymous: str) -> str:
    """The test's own file name for a pseudonymous volume name (the test knows its study ids)."""
    for sid in ("good", "mr", "thin", "flat", "nan", "singular", "trunc", "orphan", "notes"):
        if pseudonymous.startswith(KEY.pseudonym("study", sid)):
            return sid + pseudonymous[len(KEY.pseudonym("study", sid)):]
    return pseudonymous


def test_missing_columns_named(tmp_path: Path) -> None:
    (tmp_path / "ehr.csv").write_text("patient_id,code,date\np,K76.89,2020-01-01\n")
    with pytest.raises(InputError, match="ehr.csv lacks column.s. study_id, code_system"):
        read_table(tmp_path / "ehr.csv", ("patient_id", "study_id", "code", "code_system", "date"), "EHR")


# ---------------------------------------------------------------- codes and reports


def test_code_normalisation_and_validation() -> None:
    assert normalise_code(" e11.9 ") == "E119"
    assert is_valid_code("E119", "ICD10CM") and is_valid_code("25000", "ICD9CM")
    assert is_valid_code("V4582", "ICD9CM") and is_valid_code("E8800", "ICD9CM")
    assert not is_valid_code("E119", "ICD9CM")  # ICD-9 E codes run E800-E999
    assert not is_valid_code("25000", "ICD10CM") and not is_valid_code("12", "ICD9CM")
    assert not is_valid_code("E11999", "ICD10")  # WHO ICD-10: at most 5 characters
    assert phecode_lineage("250.23") == ["250.23", "250.2", "250"]
    assert phecode_lineage("008.51") == ["8.51", "8.5", "8"]


def test_phecode_map_rollup_and_prefix(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text("vocabulary_id,code,phecode\nICD9CM,250.00,250.2\nICD10CM,E11,250.2\nICD10CM,N20.0,594.1\n")
    m = load_phecode_map(tmp_path / "map.csv")
    assert code_phenotypes("ICD9CM", "25000", m) == ({"250.2", "250"}, None)
    assert code_phenotypes("ICD10CM", "E119", m)[0] == {"250.2", "250"}  # falls back to the category
    assert code_phenotypes("ICD10", "N200", m)[0] == {"594.1", "594"}  # WHO code through the CM map
    assert code_phenotypes("ICD10CM", "K7689", m) == (set(), "code not in phecode map")
    assert code_phenotypes("ICD10CM", "K7689", None) == ({"K76"}, None)


def test_scrub_and_organ_sections() -> None:
    text = (
        "Compared with 03/04/2021, 2019-01-02 and March 5, 2020. MRN: 12345678. Acc# A99812 seen by "
        "Dr. John Smith and Mrs. O'Neil on 4 Jan 2022; id 1234567.\n"
        "LIVER: Hypodense lesion,\nmeasuring 2 cm.\nKidneys: Normal.\nGallbladder and bile ducts: Unremarkable."
    )
    s = scrub(text)
    for leak in ("03/04/2021", "2019-01-02", "March 5", "12345678", "A99812", "John", "Smith", "O'Neil", "4 Jan", "1234567"):
        assert leak not in s
    assert s.count("[DATE]") == 4 and "Dr. [NAME]" in s and "[ID]" in s
    assert "measuring 2 cm" in s  # ordinary numbers survive
    organs, _ = split_organs(s)
    assert organs == {
        "liver": "Hypodense lesion, measuring 2 cm.",
        "kidneys": "Normal.",
        "gallbladder_and_bile_ducts": "Unremarkable.",
    }
    views = report_views(s, organs)
    assert views[0] == s.strip() and "Liver: Hypodense lesion, measuring 2 cm." in views and len(views) == 4


def test_whole_report_split_into_sections() -> None:
    report = ("PATIENT: DOE, JANE  MRN: 00123456\nCLINICAL INFORMATION: Pain.\nComparison: CT of 2020.\n"
              "Findings:\nLiver: normal. Spleen: enlarged, 15 cm. Technique: venous phase. Kidneys: no calculi.\n"
              "Conclusion: Splenomegaly. Note: follow up.\nElectronically signed: X, MD")
    findings, impression = split_report(report)
    assert impression == "Splenomegaly. Note: follow up."
    assert "PATIENT" not in findings and "Pain" not in findings and "2020" not in findings
    organs, headings = split_organs(findings)
    # inline organ headings split; Technique is no organ, closes the spleen section and is no caption
    assert organs == {"liver": "normal.", "spleen": "enlarged, 15 cm.", "kidneys": "no calculi."}
    for variant in ("FINDINGS AND IMPRESSION", "Opinion", "Summary", "IMPRESSION"):
        f, i = split_report(f"{variant}:\nLiver: normal.")
        assert (f or i) == "Liver: normal."
    assert split_report("Liver: normal.\nSpleen: ok.") == ("Liver: normal.\nSpleen: ok.", "")  # no heading: all findings


def test_demo_data_fast_and_complete(tmp_path: Path) -> None:
    import time

    t = time.time()
    write_demo_data(tmp_path, CTDemoConfig())
    assert time.time() - t < 30
    assert len(list((tmp_path / "volumes").glob("*.nii.gz"))) == 40
    img = nib.load(str(tmp_path / "volumes" / "S0000.nii.gz"))
    hu = np.asarray(img.dataobj)
    assert hu.min() <= -950 and hu.max() >= 600  # air and bone present
    codes = set(nib.aff2axcodes(nib.load(str(p)).affine) for p in (tmp_path / "volumes").glob("*.nii.gz"))
    assert codes == {("R", "A", "S"), ("L", "P", "S")}


# ---------------------------------------------------------------- issue 10: DICOM geometry, dates, tables, paths


def test_slice_positions_gap_uneven_duplicate_and_tolerance() -> None:
    names = [f"IM{i}" for i in range(1, 13)]
    assert check_slice_positions(np.arange(12) * 2.0, names, 0.05) == pytest.approx(2.0)
    jitter = np.arange(12) * 2.0 + np.tile([0.0, 0.04], 6)  # 2% rounding noise passes
    assert check_slice_positions(jitter, names, 0.05) == pytest.approx(2.0, abs=0.05)
    cases = {
        "missing slices": np.delete(np.arange(12) * 2.0, 5),
        "non-uniform slice spacing": np.array([0, 2, 4, 6, 8, 10, 13, 16, 19, 22.0]),
        "duplicate slice positions": np.array([0, 2, 4, 4, 6, 8.0]),
    }
    for reason, offsets in cases.items():
        with pytest.raises(VolumeError) as err:
            check_slice_positions(offsets, names, 0.05)
        assert err.value.reason == reason
    with pytest.raises(VolumeError, match=r"gap of 4.00 mm after slice 5 of 11, IM5; spacing 2.00 mm"):
        check_slice_positions(cases["missing slices"], names, 0.05)
    with pytest.raises(VolumeError):  # 2% jitter fails a 1% tolerance
        check_slice_positions(jitter, names, 0.01)


def test_dicom_series_gap_refused_and_regular_series_spacing(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "ok", regular(12))
    vol = load_dicom_series(tmp_path / "ok")
    assert vol.data.shape == (24, 24, 12) and vol.warnings == []
    np.testing.assert_allclose(np.sqrt((vol.affine[:3, :3] ** 2).sum(axis=0)), [2.0, 2.0, 2.0])
    write_dicom_series(tmp_path / "gap", [z for z in regular(12) if z != 10.0])
    with pytest.raises(VolumeError) as err:
        load_dicom_series(tmp_path / "gap")
    assert err.value.reason == "missing slices" and "after slice 5" in err.value.detail


def test_dicom_slice_with_cut_pixel_data_is_named(tmp_path: Path) -> None:
    files = write_dicom_series(tmp_path / "s", regular(12))
    raw = files[6].read_bytes()
    files[6].write_bytes(raw[: len(raw) - 200])  # header whole, pixel data short
    with pytest.raises(VolumeError) as err:
        load_dicom_series(tmp_path / "s")
    assert err.value.reason == "unreadable DICOM slice" and err.value.member == files[6].name


def test_dicom_warnings_survive_the_cache(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "s", regular(12))
    (tmp_path / "s" / "notes.txt").write_text("PACS export")
    cfg = PreprocessConfig(pixdim=[6, 6, 6], spatial_size=[8, 8, 8], min_slices=4)
    _, meta, hit = preprocess_volume(tmp_path / "s", cfg, tmp_path / "cache")
    _, again, hit2 = preprocess_volume(tmp_path / "s", cfg, tmp_path / "cache")
    assert not hit and hit2
    assert meta["warnings"] == again["warnings"] == [["notes.txt", "not a DICOM file; skipped"]]


def test_dates_one_order_per_file() -> None:
    day = parse_dates(["12/04/2021", "25/03/2021", "01/02/21 10:30"], "ehr.csv", "date")
    assert day.order == "day-first" and [str(d.date()) for d in day.dates] == ["2021-04-12", "2021-03-25", "2021-02-01"]
    assert "row 2 is only valid that way" in day.warnings[0] and "25/03" not in day.warnings[0]  # values never quoted
    month = parse_dates(["12/04/2021", "03/25/2021"], "ehr.csv", "date")
    assert month.order == "month-first" and str(month.dates[0].date()) == "2021-12-04"
    with pytest.raises(InputError, match=r"ehr.csv: dates in column 'date' are ambiguous.*row 1, row 2\).*date_order"):
        parse_dates(["12/04/2021", "03/04/2021"], "ehr.csv", "date")
    with pytest.raises(InputError, match=r"mixes day-first and month-first.*only valid day-first: row 1;.*month-first: row 2"):
        parse_dates(["13/04/2021", "04/13/2021"], "ehr.csv", "date")
    fixed = parse_dates(["12/04/2021", "03/04/2021"], "ehr.csv", "date", "month-first")
    assert [str(d.date()) for d in fixed.dates] == ["2021-12-04", "2021-03-04"]
    assert parse_dates(["05/05/2021"], "f", "date").warnings == []  # both orders agree: nothing to say
    zoned = parse_dates(["2021-03-04T23:30:00-05:00", "2021-03-04T10:00:00Z", "2021-03-04", "20210304", "4 March 2021",
                         "", "soon", "2021-02-30"], "ehr.csv", "date")
    assert [str(d.date()) for d in zoned.dates[:5]] == ["2021-03-04"] * 5  # the calendar date as written
    assert zoned.dates[5:].isna().all() and zoned.empty == [5] and "time zone" in zoned.warnings[0]


def test_ehr_rows_with_bad_dates_are_named(tmp_path: Path) -> None:
    ehr = pd.DataFrame({"patient_id": ["p", "p", "p"], "study_id": ["s", "s", "s"], "code": ["R18.8"] * 3,
                        "code_system": ["ICD10CM"] * 3, "date": ["2021-01-01", "", "2021-13-01"]})
    codes, rejects = clean_codes(ehr, None)
    assert len(codes) == 1 and [(r.row, r.reason) for r in rejects] == [(2, "missing date"), (3, "unparseable date")]


def test_report_markup() -> None:
    html = "<p>LIVER: Normal&nbsp;size.</p><p>KIDNEYS: No calculi &amp; no cysts.<br>Bladder normal.</p>"
    assert markup_kind(html) == "html" and markup_kind(r"{\rtf1\ansi LIVER: ok.\par}") == "rtf"
    assert markup_kind("Lesion <5 mm, density > 20 HU.") is None
    organs, _ = split_organs(html_to_text(html))
    assert organs == {"liver": "Normal size.", "kidneys": "No calculi & no cysts. Bladder normal."}


def _tiny_studies(root: Path) -> None:
    vols = root / "inputs" / "volumes"
    vols.mkdir(parents=True)
    for sid in ("A", "B", "C"):
        write_nifti(vols / f"{sid}.nii.gz")
    write_dicom_series(vols / "D", regular(12))
    write_csv(root / "inputs" / "ehr.csv", EHR_HEADER, ehr_rows(["A", "B", "C", "D"]))
    write_csv(root / "inputs" / "reports.csv", REPORT_HEADER, report_rows(["A", "B", "C", "D"]))


def test_relative_and_absolute_paths_give_identical_manifests(tmp_path: Path, monkeypatch) -> None:
    _tiny_studies(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = CTCurateConfig(pixdim=[6, 6, 6], spatial_size=[8, 8, 8], min_slices=4, min_positive=1)
    inputs = tmp_path / "inputs"
    curate(Path("inputs/volumes"), Path("inputs/ehr.csv"), Path("inputs/reports.csv"), None, Path("rel"), cfg, KEY)
    curate(inputs / "volumes", inputs / "ehr.csv", inputs / "reports.csv", None, tmp_path / "abs", cfg, KEY)
    rel, abs_ = pd.read_parquet(tmp_path / "rel" / "manifest.parquet"), pd.read_parquet(tmp_path / "abs" / "manifest.parquet")
    assert len(rel) == 4
    pd.testing.assert_frame_equal(rel, abs_)
    assert set(rel["group"]) == {KEY.pseudonym("patient", f"P{s}") for s in "ABCD"}  # from the EHR, not a path
    assert (tmp_path / "rel" / "rejects.csv").read_text() == (tmp_path / "abs" / "rejects.csv").read_text()
