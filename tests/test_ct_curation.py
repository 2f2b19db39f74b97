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

from domains.ct.curation.curate import CTCurateConfig, curate, patient_hash
from domains.ct.curation.ehr import (
    code_phenotypes,
    is_valid_code,
    load_phecode_map,
    normalise_code,
    phecode_lineage,
    read_table,
)
from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume
from domains.ct.curation.reports import report_views, scrub, split_organs
from domains.ct.demo.demo_data import FINDINGS, LIVER_HU, CTDemoConfig, phantom, write_demo_data

SMALL = dict(pixdim=[4.0, 4.0, 6.0], spatial_size=[48, 48, 32], min_positive=3)
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
    summary = curate(demo / "volumes", demo / "ehr.csv", demo / "reports.csv", demo / "phecode_map.csv", out, cfg)
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
        assert caption.startswith("FINDINGS:") and "[NAME]" in caption and "[ID]" in caption
    # Patient ids never reach any output; groups are the salted hash.
    raw_ids = set(pd.read_csv(demo / "ehr.csv")["patient_id"])
    blob = b"".join(s["json"] + s["txt"] for s in samples).decode() + (out / "manifest.parquet").read_bytes().decode("latin-1")
    assert not any(pid in blob for pid in raw_ids)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert set(manifest["group"]) <= {patient_hash(p, CTCurateConfig().patient_salt) for p in raw_ids}
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
    summary = curate(demo / "volumes", demo / "ehr.csv", demo / "reports.csv", demo / "phecode_map.csv", tmp_path / "again", cfg)
    assert summary["steps"]["volumes_cache_hit"] == 12
    assert "volumes_preprocessed" not in summary["steps"]


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
    summary = curate(vols, tmp_path / "ehr.csv", tmp_path / "reports.csv", None, tmp_path / "out", cfg)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    by_input = {Path(i).name: r for i, r in zip(rejects["input"], rejects["reason"])}
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


def test_missing_columns_named(tmp_path: Path) -> None:
    (tmp_path / "ehr.csv").write_text("patient_id,code,date\np,K76.89,2020-01-01\n")
    with pytest.raises(ValueError, match="study_id, code_system"):
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
