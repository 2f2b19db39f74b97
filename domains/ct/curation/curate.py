r"""`domainfm curate ct`: CT volumes + radiology reports + EHR phenotype labels (Merlin-style).

    domainfm curate ct --volumes DIR --ehr ehr.csv --reports reports.csv [--phecode-map map.csv] --out OUT

Inputs
- `--volumes DIR`: NIfTI files (`<study_id>.nii[.gz]`), DICOM series folders (`<study_id>/`, the
  series with most slices is used) or single `.dcm` files (`<study_id>.dcm`).
- `--ehr` CSV `patient_id, study_id, code, code_system, date` (code_system ICD9CM | ICD10CM |
  ICD10 (WHO)); the study -> patient link comes from here. Rows with an empty study_id are
  patient-level codes.
- `--reports` CSV `study_id, findings, impression` and an optional `study_date` column.
- `--phecode-map` CSV `vocabulary_id, code, phecode` (PheWAS phecode map 1.2 format). Without it,
  ICD-10 three-character categories are the phenotypes.

Study date (the centre of the code window): the reports' `study_date` when given, else the DICOM
StudyDate, else the earliest EHR date on rows carrying that study_id. The date is used, never written.

Output contract (OUT, besides the common manifest.parquet / rejects.csv / summary.json):
- `shards/{split}-NNNNNN.tar`, one sample per study, key `ct-<study_id>` (sanitised):
  - `npy`: float32 (1, X, Y, Z), channel first, voxel axes in RAS order, `pixdim` mm spacing,
    HU [a_min, a_max] -> [0, 1] clipped, padded with 0 (air) / centre-cropped to `spatial_size`;
  - `txt`: the scrubbed report, "FINDINGS: ...\nIMPRESSION: ..." (empty parts left out);
  - `json`: {id, group, source, caption_variants, provenance}; caption_variants holds "findings",
    "impression" and "organ:<key>" ("Liver: ...") when non-empty: the trainer samples the full
    findings or one organ section (`reports.report_views`); provenance holds `study_id`,
    `patient` (salted hash), `phenotypes` (sorted ids positive for the study, within the label
    space), `findings`, `impression`, `organ_sections` {organ key: text}, `modality`,
    `input_shape`, `input_spacing_mm`, `output_shape`, `preprocessing`, `cache_key`,
    `codes_in_window`, `codes_out_of_window`.
- `phenotypes.json`: {"label_source": "phecode" | "icd10_category", "min_positive",
  "window_days": [before, after], "n_studies", "phenotypes": [{"index", "id", "name", "count",
  "count_planned"}] (the label space, in head order), "dropped": [{"id", "name", "count"}]}.
  `count` = positive curated studies, `count_planned` = positives among studies planned before
  volumes were read (the `min_positive` filter uses it).

Privacy: groups and provenance carry sha256(patient_salt:patient_id)[:16], never the raw id; no
DICOM patient tag is read into any output; report text is scrubbed (reports.scrub).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer

from domains.ct.curation.ehr import (
    EHR_COLUMNS,
    PhecodeMap,
    clean_codes,
    label_space,
    load_phecode_map,
    phenotype_name,
    read_table,
    study_phenotypes,
)
from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume
from domains.ct.curation.reports import caption_variants, report_caption, scrub, split_organs
from domains.ct.curation.volumes import VolumeError, read_dicom_header, study_id_of, volume_kind
from pipelines.curation import CurationConfig, Pair, Reject, UnitResult, WorkUnit, run_curation
from pipelines.io.atomic import atomic_write_json
from pipelines.io.manifest import read_manifest
from pipelines.params import read

REPORT_COLUMNS = ("study_id", "findings", "impression")
STAGE_VOLUME, STAGE_STUDY, STAGE_EHR = "volume", "study", "ehr"


@dataclass
class CTCurateConfig(CurationConfig):
    """params.yaml `ct.curate`: the shared curation settings plus preprocessing and labels."""

    # Preprocessing (see preprocess.py)
    pixdim: list[float] = field(default_factory=lambda: [1.5, 1.5, 3.0])
    spatial_size: list[int] = field(default_factory=lambda: [224, 224, 160])
    a_min: float = -1000.0
    a_max: float = 1000.0
    interpolation: str = "bilinear"
    min_slices: int = 10  # fewer voxels than this along any axis: rejected
    air_hu: float = -900.0  # no-Modality volumes are CT only if >= min_air_fraction voxels are below air_hu
    min_air_fraction: float = 0.01
    cache_dir: Optional[str] = None  # None: OUT/../cache (a sibling of the curated folder)
    # Labels
    days_before: int = 365  # codes dated up to this many days before the study count
    days_after: int = 30  # ... and up to this many days after
    min_positive: int = 5  # phenotypes with fewer positive studies are dropped
    patient_salt: str = "domainfm-ct-v1"  # change per deployment; keep secret for real data
    # the shared settings, with CT's defaults
    shard_size: int = 64

    def preprocess(self) -> PreprocessConfig:
        """The preprocessing and validation settings, typed for preprocess_volume."""
        return PreprocessConfig(
            pixdim=[float(v) for v in self.pixdim],
            spatial_size=[int(v) for v in self.spatial_size],
            a_min=float(self.a_min),
            a_max=float(self.a_max),
            interpolation=self.interpolation,
            min_slices=int(self.min_slices),
            air_hu=float(self.air_hu),
            min_air_fraction=float(self.min_air_fraction),
        )

    def curation(self) -> CurationConfig:
        """The shared curation settings; CT samples are always written as npy."""
        return replace(super().curation(), image_format="npy")

    def resolve_cache_dir(self, out: Path) -> Path:
        """`cache_dir` if set, else a `cache` folder beside OUT."""
        return Path(self.cache_dir) if self.cache_dir else Path(out).resolve().parent / "cache"


def patient_hash(patient_id: str, salt: str) -> str:
    """The only form of a patient id that reaches any output."""
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- one study


def process(unit: WorkUnit) -> UnitResult:
    """Preprocess one study's volume (through the cache) and pair it with its report."""
    job: dict[str, Any] = unit.payload
    result = UnitResult()
    cfg = PreprocessConfig(**job["preprocess"])
    try:
        array, meta, hit = preprocess_volume(Path(job["source"]), cfg, job["cache_dir"])
    except VolumeError as exc:
        result.rejects.append(Reject(job["source"], STAGE_VOLUME, exc.reason))
        result.counts["volumes_rejected"] += 1
        return result
    result.counts["volumes_cache_hit" if hit else "volumes_preprocessed"] += 1
    result.counts["pairs_written"] += 1
    provenance = {
        "study_id": job["study_id"],
        "patient": job["group"],
        "phenotypes": job["phenotypes"],
        "findings": job["findings"],
        "impression": job["impression"],
        "organ_sections": job["organ_sections"],
        "modality": meta["modality"],
        "input_shape": meta["input_shape"],
        "input_spacing_mm": meta["input_spacing_mm"],
        "output_shape": meta["output_shape"],
        "preprocessing": job["preprocess"],
        "cache_key": meta["cache_key"],
        "codes_in_window": job["codes_in_window"],
        "codes_out_of_window": job["codes_out_of_window"],
    }
    result.pairs.append(
        Pair(
            id=f"ct-{job['study_id']}",
            group=job["group"],
            image=array,
            caption=job["caption"],
            source=job["source"],
            caption_variants=dict(sorted(job["caption_variants"].items())),
            provenance=dict(sorted(provenance.items())),
        )
    )
    return result


# ---------------------------------------------------------------- planning


def _identity(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())


def discover_volumes(folder: Path) -> tuple[dict[str, Path], list[Reject]]:
    """study_id -> volume path for everything under `folder` (top level), rejects for the rest."""
    found: dict[str, Path] = {}
    rejects: list[Reject] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        kind = volume_kind(path)
        if kind is None:
            rejects.append(Reject(str(path), STAGE_VOLUME, "unsupported file type"))
            continue
        if kind == "image2d":
            rejects.append(Reject(str(path), STAGE_VOLUME, "2D image, not a volume"))
            continue
        sid = study_id_of(path)
        if sid in found:
            rejects.append(Reject(str(path), STAGE_VOLUME, "duplicate study id"))
            continue
        found[sid] = path
    return found, rejects


def _study_date(sid: str, path: Path, reports: pd.DataFrame, ehr: pd.DataFrame) -> Optional[pd.Timestamp]:
    if "study_date" in reports.columns:
        given = reports.loc[reports["study_id"] == sid, "study_date"]
        for value in given:
            date = pd.to_datetime(value, errors="coerce", format="mixed")
            if not pd.isna(date):
                return date
    if volume_kind(path) == "dicom":
        header = read_dicom_header(path)
        date = pd.to_datetime(str(header.get("StudyDate", "")) if header else "", errors="coerce", format="%Y%m%d")
        if not pd.isna(date):
            return date
    dates = pd.to_datetime(ehr.loc[ehr["study_id"] == sid, "date"], errors="coerce", format="mixed").dropna()
    return dates.min() if len(dates) else None


def plan(
    volumes: Path, ehr_path: Path, reports_path: Path, phecode_map: Optional[Path], out: Path, cfg: CTCurateConfig
) -> tuple[list[WorkUnit], list[Reject], Counter, dict[str, Any]]:
    """Plan the curation: work units, rejects, counts and the phenotype label space.

    Units are the studies that have a volume, a report and EHR rows; rejects cover the rest. The
    label space (last item) is what write_phenotypes turns into phenotypes.json.
    """
    ehr = read_table(ehr_path, EHR_COLUMNS, "EHR")
    reports = read_table(reports_path, REPORT_COLUMNS, "reports")
    phemap: Optional[PhecodeMap] = load_phecode_map(phecode_map) if phecode_map else None
    if not Path(volumes).is_dir():
        raise FileNotFoundError(f"volumes folder not found: {volumes}")
    counts: Counter = Counter()
    rejects: list[Reject] = []

    codes, row_rejects = clean_codes(ehr, phemap)
    counts["ehr_rows"] = len(ehr)
    counts["ehr_rows_kept"] = len(codes)
    rejects += [Reject(f"{ehr_path}:row {r.row}", STAGE_EHR, r.reason) for r in row_rejects]

    found, vol_rejects = discover_volumes(Path(volumes))
    rejects += vol_rejects
    counts["volumes_seen"] = len(found) + len(vol_rejects)

    studies: dict[str, dict[str, Any]] = {}
    for sid, path in found.items():
        patients = sorted({p.strip() for p in ehr.loc[ehr["study_id"] == sid, "patient_id"] if p.strip()})
        if not patients:
            rejects.append(Reject(str(path), STAGE_STUDY, "no EHR rows"))
            continue
        if len(patients) > 1:
            rejects.append(Reject(str(path), STAGE_STUDY, "conflicting patient ids"))
            continue
        rows = reports[reports["study_id"] == sid]
        findings = scrub(str(rows["findings"].iloc[0])).strip() if len(rows) else ""
        impression = scrub(str(rows["impression"].iloc[0])).strip() if len(rows) else ""
        if not findings and not impression:
            rejects.append(Reject(str(path), STAGE_STUDY, "no report"))
            continue
        date = _study_date(sid, path, reports, ehr)
        if date is None:
            rejects.append(Reject(str(path), STAGE_STUDY, "no study date"))
            continue
        phenos, n_in, n_out = study_phenotypes(codes, patients[0], date, cfg.days_before, cfg.days_after)
        counts["codes_in_window"] += n_in
        counts["codes_out_of_window"] += n_out
        studies[sid] = {"path": path, "patient": patients[0], "findings": findings, "impression": impression,
                        "phenos": phenos, "n_in": n_in, "n_out": n_out}
    counts["reports_without_volume"] = int((~reports["study_id"].isin(list(found))).sum())

    kept, dropped = label_space({s: v["phenos"] for s, v in studies.items()}, cfg.min_positive)
    counts["phenotypes_kept"] = len(kept)
    counts["phenotypes_dropped_below_min_positive"] = len(dropped)
    keep = set(kept)
    use_phecodes = phemap is not None
    labels = {
        "label_source": "phecode" if use_phecodes else "icd10_category",
        "min_positive": cfg.min_positive,
        "window_days": [cfg.days_before, cfg.days_after],
        "kept": kept,
        "count_planned": {p: sum(p in v["phenos"] for v in studies.values()) for p in kept},
        "dropped": [{"id": p, "name": phenotype_name(p, use_phecodes), "count": n} for p, n in dropped.items()],
        "use_phecodes": use_phecodes,
    }

    pre = cfg.preprocess()
    pre_dict = asdict(pre)
    cache_dir = str(cfg.resolve_cache_dir(out))
    units: list[WorkUnit] = []
    for sid, s in studies.items():
        organs, _ = split_organs(s["findings"])
        group = patient_hash(s["patient"], cfg.patient_salt)
        phenos = sorted(s["phenos"] & keep, key=kept.index)
        payload = {
            "study_id": sid,
            "source": str(s["path"]),
            "group": group,
            "phenotypes": phenos,
            "findings": s["findings"],
            "impression": s["impression"],
            "organ_sections": organs,
            "caption": report_caption(s["findings"], s["impression"]),
            "caption_variants": caption_variants(s["findings"], s["impression"], organs),
            "preprocess": pre_dict,
            "cache_dir": cache_dir,
            "codes_in_window": s["n_in"],
            "codes_out_of_window": s["n_out"],
        }
        digest_src = {k: v for k, v in payload.items() if k != "cache_dir"} | {"identity": _identity(s["path"])}
        digest = hashlib.sha256(json.dumps(digest_src, sort_keys=True).encode()).hexdigest()[:16]
        units.append(WorkUnit(key=f"ct:{os.path.abspath(s['path'])}:{digest}", payload=payload, inputs=[str(s['path'])]))
    return units, rejects, counts, labels


def write_phenotypes(out: Path, labels: dict[str, Any]) -> dict[str, Any]:
    """OUT/phenotypes.json: the label space in head order, with positive counts."""
    table = read_manifest(out)
    curated = Counter(p for prov in table["provenance"] for p in prov["phenotypes"])
    doc = {
        "label_source": labels["label_source"],
        "min_positive": labels["min_positive"],
        "window_days": labels["window_days"],
        "n_studies": int(len(table)),
        "phenotypes": [
            {
                "index": i,
                "id": p,
                "name": phenotype_name(p, labels["use_phecodes"]),
                "count": int(curated.get(p, 0)),
                "count_planned": int(labels["count_planned"][p]),
            }
            for i, p in enumerate(labels["kept"])
        ],
        "dropped": labels["dropped"],
    }
    atomic_write_json(Path(out) / "phenotypes.json", doc)
    return doc


def curate(
    volumes: Path, ehr: Path, reports: Path, phecode_map: Optional[Path], out: Path, cfg: CTCurateConfig
) -> dict[str, Any]:
    """The whole curation (the CLI's body, callable from tests and other code)."""
    out = Path(out)
    units, rejects, counts, labels = plan(volumes, ehr, reports, phecode_map, out, cfg)
    summary = run_curation(units, process, out, cfg.curation(), pre_rejects=rejects, pre_counts=dict(counts))
    write_phenotypes(out, labels)
    return summary


def load_config(params: Optional[Path], workers: Optional[int] = None, allow_empty: bool = False) -> CTCurateConfig:
    """Params `ct.curate`, typed; `workers` and `allow_empty` override it when given."""
    return read(params, CTCurateConfig, "ct", "curate", workers=workers, allow_empty=allow_empty or None)


def curate_command(
    volumes: Path = typer.Option(..., "--volumes", help="Folder of NIfTI files, DICOM series folders or .dcm files."),
    ehr: Path = typer.Option(..., "--ehr", help="CSV: patient_id, study_id, code, code_system, date."),
    reports: Path = typer.Option(..., "--reports", help="CSV: study_id, findings, impression [, study_date]."),
    phecode_map: Optional[Path] = typer.Option(None, "--phecode-map", help="CSV: vocabulary_id, code, phecode (PheWAS 1.2)."),
    out: Path = typer.Option(..., "--out", help="Output folder (shards/, manifest.parquet, phenotypes.json, ...)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section ct.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0 = in process); overrides params."),
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")] = False,
) -> dict[str, Any]:
    """Curate CT volume-report pairs with EHR phenotype labels."""
    cfg = load_config(params, workers, allow_empty)
    try:
        summary = curate(Path(volumes), Path(ehr), Path(reports), phecode_map, Path(out), cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(
        f"ct: {summary['pairs']['kept']} pairs {summary['pairs']['per_split']}, "
        f"{sum(summary['rejected'].values())} rejects -> {out}"
    )
    return summary
