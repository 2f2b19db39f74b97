r"""`domainfm curate ct`: CT volumes + radiology reports + EHR phenotype labels (Merlin-style).

    domainfm curate ct --volumes DIR --ehr ehr.csv --reports reports.csv [--phecode-map map.csv]
        [--key-file KEY] [--link-table PATH] --out OUT

Inputs
- `--volumes DIR`: NIfTI files (`<study_id>.nii[.gz]`), DICOM series folders (`<study_id>/`, the
  series with most slices is used, with a warning when there are several; volumes.py lists the
  series checks) or single `.dcm` files (`<study_id>.dcm`). Two volumes with one study id are both
  refused.
- `--ehr` table `patient_id, study_id, code, code_system, date` (code_system ICD9CM | ICD10CM |
  ICD10 (WHO)); the study -> patient link comes from here. Rows with an empty study_id are
  patient-level codes. A patient_id that looks like a person's name (two or more words of letters,
  or one listed first or last name) refuses its row: the column must hold record numbers.
- `--reports` table `study_id` plus `findings` and `impression` columns, or a `report` column with
  the whole text (split into findings and impression by its headings, reports.split_report), and an
  optional `study_date` column. HTML in a cell is reduced to text (a warning), RTF refuses the study,
  different reports for one study refuse it; a report without a volume is a rejects row.
- `--phecode-map` table `vocabulary_id, code, phecode` (PheWAS phecode map 1.2 format). Without it,
  ICD-10 three-character categories are the phenotypes.
- `--key-file KEY`: the pseudonym key (else $DOMAINFM_PSEUDONYM_KEY; without either the run refuses to
  start). `--link-table PATH`: write the pseudonym -> original id table there (refused inside OUT).
Tables are read by pipelines.io.text.read_table: any of , ; tab | as delimiter, UTF-8 (BOM or not),
UTF-16 with a BOM, else cp1252/Latin-1 with a warning; a missing column or an empty file stops the
run naming the file. Dates follow dates.py: one day/month order per file (`date_order`), time zones
dropped to the calendar date as written; an unreadable date is a rejects row naming file and row.

Study date (the centre of the code window): the reports' `study_date` when given, else the DICOM
StudyDate, else the earliest EHR date on rows carrying that study_id. The date is used, never written.

De-identification (pipelines/deid): patient and study ids become keyed pseudonyms (HMAC-SHA256,
"pt-..." and "st-..."): groups, pair ids (`ct-st-...`), shard keys, provenance.study_id and the
manifest's `source` (`<study pseudonym><suffix>`, e.g. "st-0123456789abcdef.nii.gz") carry no
original id or file name. Findings and impression pass `pipelines.deid.scrub` with the study's known
identifiers (its patient and study ids, the identifying attributes of its DICOM header, and names and
ids our rules find anywhere in its report, header lines included) and dates as day offsets from the
study date. DICOM headers never reach an output: only the allow-listed attributes
(pipelines.deid.dicom.ALLOWED) are kept, in provenance.dicom. Rejects and warnings name tables by
file name and row, volumes as `volumes/<study pseudonym><suffix>`, files inside a DICOM folder by
their scrubbed names, DICOM UIDs as [UID]; they never copy a cell of a table.
The caches beside OUT (`cache/`, `.OUT.units/`) name input files and hold the header's study date:
they are working state, to be kept with the raw data, not shared with the curated output.

Output contract (OUT, besides the common manifest.parquet / rejects.csv / summary.json):
- `shards/{split}-NNNNNN.tar`, one sample per study, key `ct-<study pseudonym>`:
  - `npy`: float32 (1, X, Y, Z), channel first, voxel axes in RAS order, `pixdim` mm spacing,
    HU [a_min, a_max] -> [0, 1] clipped, padded with 0 (air) / centre-cropped to `spatial_size`;
  - `txt`: the scrubbed report, "FINDINGS: ...\nIMPRESSION: ..." (empty parts left out);
  - `json`: {id, group, source, caption_variants, provenance}; caption_variants holds "findings",
    "impression" and "organ:<key>" ("Liver: ...") when non-empty: the trainer samples the full
    findings or one organ section (`reports.report_views`); provenance holds `study_id` (the study
    pseudonym), `patient` (the patient pseudonym), `phenotypes` (sorted ids positive for the study,
    within the label space), `findings`, `impression`, `organ_sections` {organ key: text},
    `modality`, `dicom` (allow-listed header attributes), `input_shape`, `input_spacing_mm`,
    `output_shape`, `preprocessing`, `cache_key`, `codes_in_window`, `codes_out_of_window`.
- `phenotypes.json`: {"label_source": "phecode" | "icd10_category", "min_positive",
  "window_days": [before, after], "n_studies", "phenotypes": [{"index", "id", "name", "count",
  "count_planned"}] (the label space, in head order), "dropped": [{"id", "name", "count"}]}.
  `count` = positive curated studies, `count_planned` = positives among studies planned before
  volumes were read (the `min_positive` filter uses it).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pandas as pd
import typer

from domains.ct.curation.dates import parse_dates
from domains.ct.curation.ehr import (
    EHR_COLUMNS,
    PhecodeMap,
    clean_codes,
    label_space,
    load_phecode_map,
    looks_like_name,
    phenotype_name,
    study_phenotypes,
)
from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume
from domains.ct.curation.reports import caption_variants, html_to_text, markup_kind, report_caption, split_organs, split_report
from domains.ct.curation.volumes import NIFTI_SUFFIXES, VolumeError, read_dicom_header, study_id_of, volume_kind
from pipelines.curation import EXECUTOR_HELP, CurationConfig, ExecutorName, Pair, Reject, UnitResult, WorkUnit, run_curation
from pipelines.deid import Context, PseudonymKey, check_link_table_path, load_key, scrub, scrub_name, warm_up, write_link_table
from pipelines.deid.dicom import identifying_values
from pipelines.deid.text import identifiers_in
from pipelines.errors import InputError
from pipelines.io.atomic import atomic_write_json
from pipelines.io.manifest import read_manifest, write_rejects
from pipelines.io.remote import fetch, fetch_folder
from pipelines.io.text import read_table
from pipelines.params import read

STAGE_VOLUME, STAGE_STUDY, STAGE_EHR, STAGE_REPORT = "volume", "study", "ehr", "report"
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")  # DICOM UIDs (1.2.840....): identifiers under PS3.15
_SENTINEL = "\x00\x01"  # stands for a volume's pseudonymous name while a note is scrubbed


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
    slice_spacing_tolerance: float = 0.05  # a DICOM slice step may differ this fraction from the median step (volumes.py)
    cache_dir: Optional[str] = None  # None: OUT/../cache (a sibling of the curated folder)
    # Labels
    days_before: int = 365  # codes dated up to this many days before the study count
    days_after: int = 30  # ... and up to this many days after
    min_positive: int = 5  # phenotypes with fewer positive studies are dropped
    # Day/month order of numeric dates (EHR `date`, reports `study_date`), one per file: "auto" infers
    # it from all the file's values and refuses a file where both orders read every value differently.
    date_order: Literal["auto", "day-first", "month-first"] = "auto"
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
            slice_spacing_tolerance=float(self.slice_spacing_tolerance),
        )

    def curation(self) -> CurationConfig:
        """The shared curation settings; CT samples are always written as npy."""
        return replace(super().curation(), image_format="npy")

    def resolve_cache_dir(self, out: Path) -> Path:
        """`cache_dir` if set, else a `cache` folder beside OUT."""
        return Path(self.cache_dir) if self.cache_dir else Path(out).resolve().parent / "cache"


class Pseudonyms:
    """The run's pseudonyms, made once per identifier, with the links (kind, pseudonym, original) for the link table."""

    def __init__(self, key: PseudonymKey) -> None:
        self.key = key
        self.links: set[tuple[str, str, str]] = set()

    def of(self, kind: str, identifier: str) -> str:
        """The pseudonym of `identifier` as a `kind` ("patient", "study")."""
        name = self.key.pseudonym(kind, identifier)
        self.links.add((kind, name, str(identifier).strip()))
        return name

    def study(self, sid: str) -> str:
        """A study id's pseudonym."""
        return self.of("study", sid)

    def patient(self, pid: str) -> str:
        """A patient id's pseudonym."""
        return self.of("patient", pid)


def volume_suffix(path: Path) -> str:
    """What follows the study id in a volume's name: ".nii.gz", ".nii", ".dcm", "/" for a DICOM folder, else the suffix."""
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, ".dcm"):
        if name.endswith(suffix):
            return suffix
    if path.is_dir():
        return "/"
    return "".join(path.suffixes[-1:])


def volume_name(path: Path, names: Pseudonyms) -> str:
    """How outputs name a volume: `volumes/<study pseudonym><suffix>` (for other files, the pseudonym of their stem)."""
    sid, suffix = study_id_of(path), volume_suffix(path)
    if suffix and suffix != "/" and sid.endswith(suffix):  # not a volume: study_id_of kept the whole name
        sid = sid[: -len(suffix)]
    return f"volumes/{names.study(sid)}{suffix}"


def clean_note(text: str, raw: str, name: str, context: Context) -> str:
    """A reject detail or warning about a volume, with its path as `name`, UIDs as [UID], identifiers scrubbed."""
    text = _UID.sub("[UID]", str(text).replace(raw, _SENTINEL))
    return scrub(text, context).replace(_SENTINEL, name)


# ---------------------------------------------------------------- one study


def process(unit: WorkUnit) -> UnitResult:
    """Preprocess one study's volume (through the cache) and pair it with its report.

    Every note that names a file inside the study's folder is scrubbed here, in the worker: the unit
    cache stores what this returns.
    """
    job: dict[str, Any] = unit.payload
    result = UnitResult()
    cfg = PreprocessConfig(**job["preprocess"])
    context = Context(known=job["known"], names=job["names"])
    name = job["name"]

    def member_name(member: str) -> str:
        return f"{name.rstrip('/')}/{scrub_name(member, context)}" if member else name

    try:
        array, meta, hit = preprocess_volume(Path(job["path"]), cfg, job["cache_dir"])
    except VolumeError as exc:
        detail = clean_note(exc.detail, job["path"], name, context) if exc.detail else ""
        where = member_name(exc.member)
        result.rejects.append(Reject(f"{where} ({detail})" if detail else where, STAGE_VOLUME, exc.reason))
        result.counts["volumes_rejected"] += 1
        return result
    except Exception as exc:  # a bug or an unforeseen file: a rejects row that names the volume by its pseudonym only
        result.rejects.append(Reject(f"{name} ({type(exc).__name__})", STAGE_VOLUME, "unreadable volume"))
        result.counts["volumes_rejected"] += 1
        return result
    result.run_counts["volumes_cache_hit" if hit else "volumes_preprocessed"] += 1
    for member, note in meta.get("warnings", []):
        result.warnings.append(f"{member_name(member)}: {clean_note(note, job['path'], name, context)}")
    result.counts["pairs_written"] += 1
    provenance = {
        "study_id": job["study"],
        "patient": job["group"],
        "phenotypes": job["phenotypes"],
        "findings": job["findings"],
        "impression": job["impression"],
        "organ_sections": job["organ_sections"],
        "modality": meta["modality"],
        "dicom": meta.get("dicom", {}),
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
            id=f"ct-{job['study']}",
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


def discover_volumes(folder: Path, names: Pseudonyms) -> tuple[dict[str, Path], list[Reject], set[str]]:
    """study_id -> volume path for everything under `folder` (top level), rejects for the rest.

    Also returns the study ids whose volumes were refused here (duplicates): their reports are
    accounted for by those rejects. Two volumes claiming one study id are both refused: which one
    the report describes cannot be told. Rejects name volumes by pseudonym (volume_name).
    """
    claims: dict[str, list[Path]] = {}
    rejects: list[Reject] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        kind = volume_kind(path)
        if kind is None:
            rejects.append(Reject(volume_name(path, names), STAGE_VOLUME, "unsupported file type"))
            continue
        if kind == "image2d":
            rejects.append(Reject(volume_name(path, names), STAGE_VOLUME, "2D image, not a volume"))
            continue
        claims.setdefault(study_id_of(path), []).append(path)
    found: dict[str, Path] = {}
    duplicated: set[str] = set()
    for sid, paths in claims.items():
        if len(paths) == 1:
            found[sid] = paths[0]
            continue
        duplicated.add(sid)
        for path in paths:
            others = ", ".join(volume_name(p, names).split("/", 1)[1] for p in paths if p != path)
            rejects.append(Reject(f"{volume_name(path, names)} (also {others})", STAGE_VOLUME, "duplicate study id"))
    return found, rejects, duplicated


@dataclass
class StudyReport:
    """One study's report as read from the reports table (raw text: scrubbed once the study is known)."""

    where: str  # "<reports file name>:row N (study <pseudonym>)": how rejects and warnings name it
    findings: str = ""
    impression: str = ""
    full: str = ""  # the whole text as read (header lines too): where identifiers of the record are looked for
    date: Optional[pd.Timestamp] = None  # the table's study_date, when given
    refused: Optional[str] = None  # reject reason when the report cannot be used


def _safe_columns(columns: list[str]) -> str:
    """Column names for a message, unless they look like data (a table without its header row)."""
    plain = [c for c in columns if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ]{0,40}", c) and not any(ch.isdigit() for ch in c)]
    if len(plain) == len(columns):
        return ", ".join(columns) or "none"
    return f"{len(columns)} column(s) whose names look like data (is the header row missing?)"


def read_input_table(path: Path, required: tuple[str, ...], what: str) -> tuple[pd.DataFrame, list[str]]:
    """read_table, with messages that name the file by name and never quote its cells."""
    table, notes = read_table(path, (), what)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"{what} table {path.name} lacks column(s) {', '.join(missing)}; required: {', '.join(required)}; "
                         f"found: {_safe_columns(list(table.columns))}")
    return table, [n.replace(str(path), path.name) for n in notes]


def report_columns(table: pd.DataFrame, path: Path) -> list[str]:
    """The report text columns of a reports table: ["report"] or ["findings", "impression"]; InputError otherwise."""
    if "findings" in table.columns and "impression" in table.columns:
        return ["findings", "impression"] + (["report"] if "report" in table.columns else [])
    if "report" in table.columns:
        return ["report"]
    raise InputError(f"reports table {path.name} needs a report column (the whole text) or findings and impression columns; "
                     f"found: {_safe_columns(list(table.columns))}")


def read_reports(
    table: pd.DataFrame, path: Path, date_order: str, names: Pseudonyms
) -> tuple[dict[str, StudyReport], list[Reject], list[str]]:
    """study_id -> report, rejects for unusable rows, and warnings for rows used with a caveat.

    Rows repeating a study's report are used once (a warning); rows giving one study different
    reports refuse it ("conflicting reports"). HTML in a cell is reduced to its text (a warning),
    RTF refuses the study. A `study_date` that is given but is no date refuses the study. With both
    findings/impression and report columns, a row's findings and impression are used when either is
    non-empty, else its report is split.
    """
    warnings: list[str] = []
    rejects: list[Reject] = []
    dates = None
    file_name = path.name
    text_columns = report_columns(table, path)
    if "study_date" in table.columns:
        parsed = parse_dates(list(table["study_date"]), file_name, "study_date", date_order)
        warnings += parsed.warnings
        dates = parsed.dates
    rows_of: dict[str, list[int]] = {}
    for i, sid in enumerate(table["study_id"], start=1):
        sid = str(sid).strip()
        if not sid:
            rejects.append(Reject(f"{file_name}:row {i}", STAGE_REPORT, "missing study id"))
            continue
        rows_of.setdefault(sid, []).append(i)
    columns = text_columns + (["study_date"] if dates is not None else [])
    reports: dict[str, StudyReport] = {}
    for sid, rows in rows_of.items():
        pseudonym = names.study(sid)
        where = (f"{file_name}:row {rows[0]} (study {pseudonym})" if len(rows) == 1
                 else f"{file_name}:rows {', '.join(map(str, rows))} (study {pseudonym})")
        texts = {tuple(str(table[c].iloc[i - 1]).strip() for c in columns) for i in rows}
        report = StudyReport(where=where)
        reports[sid] = report
        if len(texts) > 1:
            report.refused = "conflicting reports"
            continue
        if len(rows) > 1:
            warnings.append(f"{where}: the same report repeated; used once")
        i = rows[0]
        cells = {}
        for column in text_columns:
            text = str(table[column].iloc[i - 1])
            kind = markup_kind(text)
            if kind == "rtf":
                report.refused = "report is RTF markup (convert it to plain text)"
                break
            if kind == "html":
                text = html_to_text(text)
                warnings.append(f"{where}: HTML markup in {column} reduced to its text")
            cells[column] = text.strip()
        if report.refused:
            continue
        if cells.get("findings") or cells.get("impression") or "report" not in cells:
            report.findings, report.impression = cells.get("findings", ""), cells.get("impression", "")
            report.full = "\n".join(v for v in cells.values() if v)
        else:
            report.full = cells["report"]
            report.findings, report.impression = split_report(cells["report"])
        if dates is not None:
            raw = str(table["study_date"].iloc[i - 1]).strip()
            if raw and pd.isna(dates.iloc[i - 1]):
                report.refused = "unparseable study date"
            elif raw:
                report.date = dates.iloc[i - 1]
    return reports, rejects, warnings


def _study_date(report: StudyReport, header: Any, first_ehr_date: Optional[pd.Timestamp]) -> Optional[pd.Timestamp]:
    """The report's study_date, else the DICOM StudyDate, else the earliest EHR date on the study's rows."""
    if report.date is not None:
        return report.date
    if header is not None:
        date = pd.to_datetime(str(header.get("StudyDate", "")), errors="coerce", format="%Y%m%d")
        if not pd.isna(date):
            return date
    return None if first_ehr_date is None or pd.isna(first_ehr_date) else first_ehr_date


def study_context(patient: str, sid: str, header: Any, report: StudyReport, date: Optional[pd.Timestamp]) -> Context:
    """What de-identification knows of a study: its ids, its DICOM header's identifying values, what our rules find in its report."""
    values, people = identifying_values(header)
    found_ids, found_names = identifiers_in(report.full)
    known = [patient, sid, *values, *found_ids]
    return Context(known=known, names=[*people, *found_names], reference_date=None if date is None else date.date())


@dataclass
class Plan:
    """What curation will do: work units, rejects and warnings found while planning, counts, labels, pseudonym links."""

    units: list[WorkUnit]
    rejects: list[Reject]
    counts: Counter
    labels: dict[str, Any]  # the label space, for write_phenotypes
    warnings: list[str]
    links: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, pseudonym, original): the link table


def plan(
    volumes: Path, ehr_path: Path, reports_path: Path, phecode_map: Optional[Path], out: Path, cfg: CTCurateConfig,
    key: PseudonymKey,
) -> Plan:
    """Plan the curation: work units, rejects, counts, warnings and the phenotype label space.

    Units are the studies that have a volume, a usable report and EHR rows; rejects cover the rest.
    Input paths are made absolute first, so how they were spelled never reaches an output; ids become
    pseudonyms and report text is scrubbed here, so no raw identifier enters a work unit's output.
    """
    volumes, ehr_path, reports_path = (Path(os.path.abspath(p)) for p in (volumes, ehr_path, reports_path))
    names = Pseudonyms(key)
    warnings: list[str] = []
    ehr, notes = read_input_table(ehr_path, EHR_COLUMNS, "EHR")
    warnings += notes
    reports_table, notes = read_input_table(reports_path, ("study_id",), "reports")
    warnings += notes
    report_columns(reports_table, reports_path)
    phemap: Optional[PhecodeMap] = load_phecode_map(Path(os.path.abspath(phecode_map)), warnings) if phecode_map else None
    if not volumes.is_dir():
        raise InputError(f"volumes folder not found: {volumes}")
    counts: Counter = Counter()
    rejects: list[Reject] = []

    ehr_name = ehr_path.name
    ehr_dates = parse_dates(list(ehr["date"]), ehr_name, "date", cfg.date_order)
    warnings += ehr_dates.warnings
    codes, row_rejects = clean_codes(ehr, phemap, ehr_dates.dates)
    counts["ehr_rows"] = len(ehr)
    counts["ehr_rows_kept"] = len(codes)
    rejects += [Reject(f"{ehr_name}:row {r.row}", STAGE_EHR, r.reason) for r in row_rejects]
    ehr_study = ehr["study_id"].str.strip()
    ehr_patient = ehr["patient_id"].str.strip()
    usable = ~ehr_patient.map(looks_like_name)  # rows with a name for an id are rejects (clean_codes), not links
    patients_of = {sid: sorted(set(g) - {""}) for sid, g in ehr_patient[usable].groupby(ehr_study[usable])}
    first_date_of = ehr_dates.dates.groupby(ehr_study.to_numpy()).min()  # NaT where no row has a date

    reports, report_rejects, notes = read_reports(reports_table, reports_path, cfg.date_order, names)
    rejects += report_rejects
    warnings += notes

    found, vol_rejects, duplicated = discover_volumes(volumes, names)
    rejects += vol_rejects
    counts["volumes_seen"] = len(found) + len(vol_rejects)

    studies: dict[str, dict[str, Any]] = {}
    for sid, path in found.items():
        name = volume_name(path, names)
        report = reports.get(sid)
        if report is not None and report.refused:
            rejects.append(Reject(f"{report.where}; volume {name}", STAGE_REPORT, report.refused))
            continue
        patients = patients_of.get(sid, [])
        if not patients:
            rejects.append(Reject(name, STAGE_STUDY, "no EHR rows"))
            continue
        if len(patients) > 1:
            rejects.append(Reject(name, STAGE_STUDY, "conflicting patient ids"))
            continue
        if report is None or (not report.findings.strip() and not report.impression.strip()):
            rejects.append(Reject(name, STAGE_STUDY, "no report"))
            continue
        header = read_dicom_header(path) if volume_kind(path) == "dicom" else None
        date = _study_date(report, header, first_date_of.get(sid))
        if date is None:
            rejects.append(Reject(name, STAGE_STUDY, "no study date"))
            continue
        context = study_context(patients[0], sid, header, report, date)
        findings, impression = scrub(report.findings, context).strip(), scrub(report.impression, context).strip()
        phenos, n_in, n_out = study_phenotypes(codes, patients[0], date, cfg.days_before, cfg.days_after)
        counts["codes_in_window"] += n_in
        counts["codes_out_of_window"] += n_out
        studies[sid] = {"path": path, "name": name, "patient": patients[0], "findings": findings, "impression": impression,
                        "phenos": phenos, "n_in": n_in, "n_out": n_out, "known": list(context.known), "names": list(context.names)}
    orphans = [r for sid, r in reports.items() if sid not in found and sid not in duplicated]
    rejects += [Reject(r.where, STAGE_REPORT, r.refused or "no volume") for r in orphans]
    counts["reports_without_volume"] = len(orphans)

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
        study = names.study(sid)
        phenos = sorted(s["phenos"] & keep, key=kept.index)
        payload = {
            "study": study,
            "name": s["name"],
            "source": s["name"].split("/", 1)[1],
            "path": str(s["path"]),
            "known": s["known"],  # raw identifiers travel to the worker only to scrub its notes; never written
            "names": s["names"],
            "group": names.patient(s["patient"]),
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
        units.append(WorkUnit(key=f"ct:{study}:{digest}", payload=payload, inputs=[str(s['path'])]))
    return Plan(units, rejects, counts, labels, warnings, names.links)


def _redact_crash_rows(out: Path, units: list[WorkUnit]) -> None:
    """Rejects rows of units whose worker died name the unit's input path (run_curation's WorkUnit.label): use the pseudonym."""
    path = Path(out) / "rejects.csv"
    if not path.is_file() or not units:
        return
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    paths = {u.payload["path"]: u.payload["name"] for u in units}
    crashed = table["input"].isin(list(paths))
    if crashed.any():
        table.loc[crashed, "input"] = table.loc[crashed, "input"].map(paths)
        write_rejects(table.to_dict("records"), Path(out))


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
    volumes: Path, ehr: Path, reports: Path, phecode_map: Optional[Path], out: Path, cfg: CTCurateConfig,
    key: Optional[PseudonymKey] = None, link_table: Optional[Path] = None,
) -> dict[str, Any]:
    """The whole curation (the CLI's body, callable from tests and other code).

    `key` defaults to $DOMAINFM_PSEUDONYM_KEY (MissingKeyError without it); `link_table`, when given,
    receives the pseudonym -> original id table (refused inside OUT).
    """
    out = Path(out)
    key = key or load_key(None)
    link_path = check_link_table_path(link_table, out) if link_table is not None else None
    warm_up()  # load the de-identification filters once, before workers fork
    planned = plan(volumes, ehr, reports, phecode_map, out, cfg, key)
    summary = run_curation(planned.units, process, out, cfg.curation(), pre_rejects=planned.rejects,
                           pre_counts=dict(planned.counts), pre_warnings=planned.warnings)
    _redact_crash_rows(out, planned.units)
    write_phenotypes(out, planned.labels)
    if link_path is not None:
        write_link_table(link_path, planned.links)
    return summary


def load_config(params: Optional[Path], workers: Optional[int] = None, allow_empty: bool = False,
                executor: Optional[ExecutorName] = None) -> CTCurateConfig:
    """Params `ct.curate`, typed; `workers`, `allow_empty` and `executor` override it when given."""
    return read(params, CTCurateConfig, "ct", "curate", workers=workers, allow_empty=allow_empty or None, executor=executor)


def curate_command(
    volumes: str = typer.Option(..., "--volumes", metavar="PATH|URL", help=(
        "Folder of NIfTI files, DICOM series folders or .dcm files; a URL (https://, s3://, ...) is mirrored into the "
        "local cache ($DOMAINFM_CACHE) and refreshed file by file.")),
    ehr: str = typer.Option(..., "--ehr", metavar="PATH|URL", help="CSV: patient_id, study_id, code, code_system, date."),
    reports: str = typer.Option(
        ..., "--reports", metavar="PATH|URL", help="CSV: study_id, findings and impression or report [, study_date]."),
    phecode_map: Optional[str] = typer.Option(
        None, "--phecode-map", metavar="PATH|URL", help="CSV: vocabulary_id, code, phecode (PheWAS 1.2)."),
    out: Path = typer.Option(..., "--out", help="Output folder (shards/, manifest.parquet, phenotypes.json, ...)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section ct.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0 = in process); overrides params."),
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")
    ] = False,
    key_file: Annotated[Optional[Path], typer.Option(
        "--key-file", help="File holding the secret pseudonym key (else $DOMAINFM_PSEUDONYM_KEY; one of them is required).")] = None,
    link_table: Annotated[Optional[Path], typer.Option(
        "--link-table", help="Write the pseudonym -> original id table here (outside --out; keep it secret).")] = None,
    executor: Annotated[Optional[ExecutorName], typer.Option("--executor", help=EXECUTOR_HELP)] = None,
) -> dict[str, Any]:
    """Curate CT volume-report pairs with EHR phenotype labels; ids become keyed pseudonyms, reports are de-identified."""
    try:
        cfg = load_config(params, workers, allow_empty, executor)
        key = load_key(key_file)
        local = {"volumes": fetch_folder(volumes), "ehr": fetch(ehr), "reports": fetch(reports)}
        phecodes = fetch(phecode_map) if phecode_map else None
        summary = curate(local["volumes"], local["ehr"], local["reports"], phecodes, Path(out), cfg, key, link_table)
    except InputError as exc:
        # Said here, not left to pipelines/cli.py: its click.ClickException is not the class typer's vendored
        # click catches (typer >= 0.2x), so there it would end in a traceback.
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"ct: {summary['pairs']['kept']} pairs {summary['pairs']['per_split']}, "
        f"{sum(summary['rejected'].values())} rejects -> {out}"
    )
    return summary
