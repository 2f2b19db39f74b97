"""Demo inputs for the CT domain.

Synthetic abdomen/chest phantoms with findings, EHR codes, template reports and a small phecode
map. Everything is procedural (no downloads).

`write_demo_data(out, params)` writes under OUT:
- `volumes/<study_id>.nii.gz`: int16 HU volumes; a fraction is stored with LPS-flipped axes
  (same anatomy in the world, different voxel order) to exercise reorientation;
- `ehr.csv` (patient_id, study_id, code, code_system, date): finding codes near the study date,
  unrelated noise codes (some outside the time window), a few malformed codes / unknown systems;
- `reports.csv` (study_id, study_date, report): whole reports as a RIS exports them, for the
  de-identification to work on: a header (patient name, MRN, DOB with the age, accession number,
  exam date, referring physician), clinical information, technique, comparison with a dated prior,
  organ-headed FINDINGS, an IMPRESSION naming the clinician it was discussed with (a date and an
  MRN) and the radiologist's signature; one study has an empty report and one volume has no EHR rows;
- `phecode_map.csv` (vocabulary_id, code, phecode): our own map for the codes used;
- `demo.key`: the demo's pseudonym key (`curate ct --key-file data/ct/raw/demo.key`). It is derived
  from the seed, so it is public: fine for synthetic data, never for real data;
- `labels.csv` (study_id + FINDINGS columns, 1/0/-1 unknown): ground truth drawn into the volumes,
  for zero-shot evaluation, keyed by the study's pseudonym under demo.key (what curation writes as
  provenance.study_id). The held-out set is the curated `test` split (split by patient pseudonym).
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from pipelines.deid import key_from_text

FINDINGS = ("liver_lesion", "kidney_stone", "pleural_effusion", "splenomegaly", "ascites")
# ICD-10-CM codes a positive finding is coded with (one is drawn per positive study).
FINDING_CODES = {
    "liver_lesion": ("K76.89", "C22.9"),
    "kidney_stone": ("N20.0",),
    "pleural_effusion": ("J91.8", "J90"),
    "splenomegaly": ("R16.1",),
    "ascites": ("R18.8",),
}
NOISE_CODES = (("ICD10CM", "I10"), ("ICD10CM", "E11.9"), ("ICD10CM", "K21.9"), ("ICD10CM", "J45.909"),
               ("ICD9CM", "250.00"), ("ICD9CM", "401.9"), ("ICD10CM", "M54.5"))
MALFORMED = (("ICD10CM", "7K.Q"), ("ICD10CM", "12"), ("ICD9CM", "ABC"), ("SNOMED", "22298006"))
PHECODE_MAP = (
    ("ICD10CM", "K76.89", "573"), ("ICD10CM", "C22.9", "155"), ("ICD10CM", "N20.0", "594.1"),
    ("ICD10CM", "J91.8", "507"), ("ICD10CM", "J90", "507"), ("ICD10CM", "R16.1", "289.5"),
    ("ICD10CM", "R18.8", "572"), ("ICD10CM", "I10", "401.1"), ("ICD10CM", "E11.9", "250.2"),
    ("ICD10CM", "K21.9", "530.11"), ("ICD10CM", "J45.909", "495"), ("ICD9CM", "250.00", "250.2"),
    ("ICD9CM", "401.9", "401.1"),
)  # M54.5 deliberately unmapped: "code not in phecode map"

NORMAL = {
    "LIVER": "Normal size and attenuation. No focal lesion.",
    "SPLEEN": "Normal in size.",
    "KIDNEYS": "No hydronephrosis or calculi.",
    "LUNGS": "The lung bases are clear. No pleural effusion.",
    "PERITONEUM": "No free fluid.",
}
ABNORMAL = {
    "liver_lesion": ("LIVER", "There is a {s} cm hypodense lesion in the right hepatic lobe.", "Hypodense liver lesion"),
    "kidney_stone": ("KIDNEYS", "A {m} mm calculus in the kidney. No hydronephrosis.", "Nephrolithiasis"),
    "pleural_effusion": ("LUNGS", "Bilateral dependent pleural effusions.", "Pleural effusions"),
    "splenomegaly": ("SPLEEN", "The spleen is enlarged, measuring {c} cm.", "Splenomegaly"),
    "ascites": ("PERITONEUM", "Moderate ascites, most prominent around the liver.", "Ascites"),
}
LIVER_HU = 100  # portal venous phase, as the reports say "with contrast"
NAMES = ("Alan Grant", "Ellie Sattler", "Ian Malcolm", "John Hammond", "Ray Arnold")
# Fictional patients and radiologists for the report headers.
FIRST_NAMES = ("Bartholomew", "Delphine", "Oswin", "Marisol", "Thaddeus", "Ingrid", "Cornelius", "Philippa", "Leopold", "Rosalind")
LAST_NAMES = ("Quince", "Harrow", "Pemberton", "Okafor", "Lindqvist", "Abernathy", "Castellanos", "Whitfield", "Nakamura", "Osei")
RADIOLOGISTS = ("Chidi Okonkwo", "Helena Marchetti", "Samuel Adeyemi", "Ines Duarte")
REPORT_KEY_FILE = "demo.key"


def demo_key_text(seed: int) -> str:
    """The demo's pseudonym key: derived from the seed, so the demo is reproducible (and its key public)."""
    return hashlib.sha256(f"domainfm-ct-demo-key:{seed}".encode()).hexdigest()


@dataclass
class CTDemoConfig:
    """params.yaml `ct.demo`."""

    seed: int = 0
    n_patients: int = 30
    n_studies: int = 40  # the first n_patients studies give every patient one; the rest are repeats
    shape: list[int] = field(default_factory=lambda: [96, 96, 64])
    spacing: list[float] = field(default_factory=lambda: [3.0, 3.0, 5.0])  # mm
    finding_probability: float = 0.35
    lps_fraction: float = 0.3  # volumes stored with flipped x/y voxel axes
    noise_codes_per_study: int = 2
    malformed_rows: int = 4
    noise_hu: float = 15.0


def _ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float], radii: Sequence[float] | np.ndarray
) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 <= 1


def phantom(cfg: CTDemoConfig, positives: set[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(HU int16 (X, Y, Z), RAS affine) of a simplified trunk with the given findings drawn in."""
    shape = np.asarray(cfg.shape)
    sp = np.asarray(cfg.spacing, dtype=float)
    origin = -(shape - 1) / 2 * sp
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = origin
    x, y, z = np.meshgrid(*(origin[i] + sp[i] * np.arange(shape[i]) for i in range(3)), indexing="ij")
    j = rng.normal(0, 4, size=8)  # per-study anatomical jitter (mm)
    hu = np.full(cfg.shape, -1000.0, dtype=np.float32)
    body_r = (130 + j[0], 100 + j[1])
    hu[(x / body_r[0]) ** 2 + (y / body_r[1]) ** 2 <= 1] = -100  # subcutaneous fat
    inner = (x / (body_r[0] - 10)) ** 2 + (y / (body_r[1] - 10)) ** 2 <= 1
    hu[inner] = 40  # soft tissue
    lungs = np.zeros(cfg.shape, bool)
    for side in (-1, 1):
        lungs |= _ellipsoid(x, y, z, (side * 60, 0, 110 + j[2]), (45, 60, 90))
    hu[lungs] = -850
    liver_c, liver_r = (60 + j[3], 10, 5 + j[4]), (60, 55, 50)
    liver = _ellipsoid(x, y, z, liver_c, liver_r)
    if "ascites" in positives:  # fluid rim around the liver and a pelvic pocket
        hu[_ellipsoid(x, y, z, liver_c, [r * 1.35 for r in liver_r]) & inner & ~lungs] = 0
        hu[_ellipsoid(x, y, z, (0, 10, -110), (70, 45, 30)) & inner] = 0
    hu[liver] = LIVER_HU
    spleen_r = np.array([30, 25, 35]) * (1.6 if "splenomegaly" in positives else 1.0)
    hu[_ellipsoid(x, y, z, (-70, -30, 10 + j[5]), spleen_r) & inner] = 110
    kidney_c = [(side * 55, -50, -50 + j[6]) for side in (-1, 1)]
    for c in kidney_c:
        hu[_ellipsoid(x, y, z, c, (22, 20, 45))] = 170  # enhancing parenchyma
    hu[(x ** 2 + (y + 70) ** 2 <= 15 ** 2) & inner] = 700  # spine
    if "liver_lesion" in positives:
        hu[_ellipsoid(x, y, z, (liver_c[0] + 15, liver_c[1], liver_c[2] + 10), (20, 20, 20))] = 5
    if "kidney_stone" in positives:
        c = kidney_c[int(rng.integers(2))]
        hu[_ellipsoid(x, y, z, c, (8, 8, 9))] = 900
    if "pleural_effusion" in positives:  # dependent fluid at the lung bases
        hu[lungs & (z < 80 + j[2]) & (y < -10)] = 10
    hu += rng.normal(0, cfg.noise_hu, size=hu.shape).astype(np.float32)
    return np.clip(hu, -1024, 3000).astype(np.int16), affine


def _flip_xy(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same world, voxel x/y reversed (an LPS-ordered file)."""
    flip = np.eye(4)
    for axis in (0, 1):
        flip[axis, axis] = -1
        flip[axis, 3] = data.shape[axis] - 1
    return np.ascontiguousarray(data[::-1, ::-1, :]), affine @ flip


def _report(positives: set[str], rng: np.random.Generator, study_date: date) -> tuple[str, str]:
    sections = dict(NORMAL)
    impressions = []
    for finding in FINDINGS:
        if finding in positives:
            organ, text, imp = ABNORMAL[finding]
            sections[organ] = text.format(s=round(float(rng.uniform(1, 4)), 1), m=int(rng.integers(3, 9)), c=int(rng.integers(14, 20)))
            impressions.append(imp)
    prior = study_date - timedelta(days=int(rng.integers(90, 900)))
    name = NAMES[int(rng.integers(len(NAMES)))]
    preamble = f"CT abdomen and pelvis with contrast. Compared with prior exam of {prior:%m/%d/%Y}."
    findings = preamble + "\n" + "\n".join(f"{k}: {v}" for k, v in sections.items())
    impression = ("; ".join(impressions) + "." if impressions else "No acute abnormality.") + (
        f" Results discussed with Dr. {name} on {study_date:%B %d, %Y}. MRN: {int(rng.integers(10**7, 10**8))}."
    )
    return findings, impression


def _whole_report(findings: str, impression: str, study_date: date, mrn: str, sid: str, rng: np.random.Generator) -> str:
    """A report as a RIS exports it: identifying header, clinical sections, findings, impression, signature.

    `rng` is a generator of its own, so the header draws leave the volumes' and findings' draws as they were.
    """
    first, last = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))], LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]
    born = date(int(rng.integers(1925, 2000)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    age = study_date.year - born.year - ((study_date.month, study_date.day) < (born.month, born.day))
    referring = RADIOLOGISTS[int(rng.integers(len(RADIOLOGISTS)))]
    signer = RADIOLOGISTS[int(rng.integers(len(RADIOLOGISTS)))]
    phone = f"({int(rng.integers(200, 999))}) 555-{int(rng.integers(0, 10000)):04d}"
    header = (f"PATIENT: {last.upper()}, {first.upper()}    MRN: {mrn}    DOB: {born:%m/%d/%Y} (age {age})\n"
              f"ACCESSION: ACC{sid[1:]}{int(rng.integers(10**5, 10**6))}    EXAM DATE: {study_date:%B %d, %Y}\n"
              f"REFERRING: Dr. {referring}, phone {phone}\n")
    return (f"{header}CLINICAL INFORMATION: {age}-year-old with abdominal pain.\nTECHNIQUE: Portal venous phase.\n"
            f"FINDINGS:\n{findings}\nIMPRESSION: {impression}\nElectronically signed: {signer}, MD")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_demo_data(out: Path, cfg: CTDemoConfig) -> None:
    """Write the demo's raw CT inputs under OUT (see module docstring)."""
    out = Path(out)
    vol_dir = out / "volumes"
    vol_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    patients = [f"P{i:04d}" for i in range(cfg.n_patients)]
    owners = patients[: cfg.n_studies] + [patients[int(rng.integers(cfg.n_patients))] for _ in range(cfg.n_studies - cfg.n_patients)]
    ehr_rows: list[list[Any]] = []
    report_rows: list[list[Any]] = []
    label_rows: list[list[Any]] = []
    base = date(2019, 1, 1)
    header_rng = np.random.default_rng([cfg.seed, 1])
    mrns = {p: f"{int(header_rng.integers(10**7, 10**8)):08d}" for p in patients}
    key = key_from_text(demo_key_text(cfg.seed), "the demo key")
    for k, patient in enumerate(owners):
        sid = f"S{k:04d}"
        positives = {f for f in FINDINGS if rng.random() < cfg.finding_probability}
        study_date = base + timedelta(days=int(rng.integers(0, 4 * 365)))
        data, affine = phantom(cfg, positives, rng)
        if rng.random() < cfg.lps_fraction:
            data, affine = _flip_xy(data, affine)
        nib.save(nib.Nifti1Image(data, affine), str(vol_dir / f"{sid}.nii.gz"))
        label_rows.append([key.pseudonym("study", sid), *(int(f in positives) for f in FINDINGS)])
        findings, impression = _report(positives, rng, study_date)
        report = _whole_report(findings, impression, study_date, mrns[patient], sid, header_rng)
        if k == 3:
            report = ""  # a study without a report: rejected "no report"
        report_rows.append([sid, study_date.isoformat(), report])
        if k == 5:
            continue  # a volume without EHR rows: rejected "no EHR rows"
        for finding in sorted(positives):
            codes = FINDING_CODES[finding]
            code = codes[int(rng.integers(len(codes)))]
            when = study_date + timedelta(days=int(rng.integers(-60, 20)))
            ehr_rows.append([patient, sid, code, "ICD10CM", when.isoformat()])
        for _ in range(cfg.noise_codes_per_study):
            system, code = NOISE_CODES[int(rng.integers(len(NOISE_CODES)))]
            offset = int(rng.integers(-200, 20)) if rng.random() < 0.6 else -int(rng.integers(500, 1500))  # some out of window
            ehr_rows.append([patient, sid, code, system, (study_date + timedelta(days=offset)).isoformat()])
    for m in range(cfg.malformed_rows):
        system, code = MALFORMED[m % len(MALFORMED)]
        ehr_rows.append([owners[m], f"S{m:04d}", code, system, base.isoformat()])

    _write_csv(out / "ehr.csv", ["patient_id", "study_id", "code", "code_system", "date"], ehr_rows)
    _write_csv(out / "reports.csv", ["study_id", "study_date", "report"], report_rows)
    (out / REPORT_KEY_FILE).write_text(demo_key_text(cfg.seed) + "\n")
    _write_csv(out / "phecode_map.csv", ["vocabulary_id", "code", "phecode"], [list(r) for r in PHECODE_MAP])
    _write_csv(out / "labels.csv", ["study_id", *FINDINGS], label_rows)
