"""EHR diagnosis codes -> phenotype labels per study.

Codes are normalised (dots and spaces stripped, upper case) and validated per code system:
ICD9CM (3-5 digits, V + 2-4 digits, E800-E999 + an optional digit), ICD10CM (letter, digit, alphanumeric, up to 4
more alphanumerics), ICD10 = WHO ICD-10 (letter, 2 digits, up to 2 more characters). Codes inside
[study date - days_before, study date + days_after] are mapped through a PheWAS-style phecode map
(`vocabulary_id, code, phecode`; dotted codes as in phecode map 1.2, matched after normalising both
sides; a code missing from the map falls back to its longest mapped prefix, so "E11.9" finds "E11"
when only the category is listed), and every phecode rolls up to its parents (250.23 -> 250.2 ->
250). Without a map, ICD-10 three-character categories are the phenotypes (ICD-9 rows are refused).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from domains.ct.curation.dates import parse_dates
from pipelines.io.text import read_table

if TYPE_CHECKING:
    import pandas as pd

CODE_SYSTEMS = ("ICD9CM", "ICD10CM", "ICD10")
_CODE_PATTERNS = {
    "ICD9CM": re.compile(r"^(\d{3,5}|V\d{2,4}|E[89]\d{2,3})$"),  # E codes: E800-E999
    "ICD10CM": re.compile(r"^[A-Z]\d[0-9A-Z][0-9A-Z]{0,4}$"),
    "ICD10": re.compile(r"^[A-Z]\d{2}[0-9A-Z]{0,2}$"),
}
PHECODE_NAMES = Path(__file__).with_name("phecode_names.csv")  # Merlin's phenotype list (MIT), see ATTRIBUTION.md

EHR_COLUMNS = ("patient_id", "study_id", "code", "code_system", "date")
MAP_COLUMNS = ("vocabulary_id", "code", "phecode")


def normalise_code(code: str) -> str:
    """A diagnosis code without dots or whitespace, upper-cased: " e11.9" -> "E119"."""
    return re.sub(r"[.\s]", "", str(code)).upper()


def normalise_system(system: str) -> str:
    """A code-system name upper-cased with everything but letters and digits dropped."""
    return re.sub(r"[^A-Z0-9]", "", str(system).upper())  # "ICD-10-CM" -> "ICD10CM"


def is_valid_code(code: str, system: str) -> bool:
    """`code` normalised, `system` one of CODE_SYSTEMS."""
    pattern = _CODE_PATTERNS.get(system)
    return bool(pattern and pattern.match(code))


def normalise_phecode(phecode: str) -> str:
    """'008.50' -> '8.5': the map writes zero-padded integers, Merlin's list does not."""
    text = str(phecode).strip()
    whole, _, frac = text.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def phecode_lineage(phecode: str) -> list[str]:
    """The phecode and its parents: '250.23' -> ['250.23', '250.2', '250']."""
    code = normalise_phecode(phecode)
    out = [code]
    while "." in code:
        whole, frac = code.split(".")
        code = f"{whole}.{frac[:-1]}" if len(frac) > 1 else whole
        out.append(code)
    return out


def phenotype_sort_key(pid: str) -> tuple:
    """Label order: numeric ids (phecodes) by value first, then the others (ICD-10 categories) by name."""
    try:
        return (0, float(pid), pid)
    except ValueError:
        return (1, 0.0, pid)


@lru_cache(maxsize=1)
def phecode_names() -> dict[str, str]:
    """Normalised phecode -> description, from the bundled phecode_names.csv."""
    with open(PHECODE_NAMES, newline="") as f:
        return {normalise_phecode(r["phecode"]): r["phecode_str"] for r in csv.DictReader(f)}


@dataclass
class PhecodeMap:
    """(code system, normalised code) -> phecodes (normalised)."""

    table: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def lookup(self, system: str, code: str) -> set[str]:
        """Phecodes of `code`, else of its longest mapped prefix (WHO ICD-10 also tries ICD-10-CM); empty if none."""
        systems = [system, "ICD10CM"] if system == "ICD10" else [system]  # WHO codes fall back to CM
        for sys_ in systems:
            for n in range(len(code), 2, -1):  # the code, then its parents down to the category
                hit = self.table.get((sys_, code[:n]))
                if hit:
                    return hit
        return set()


def load_phecode_map(path: Path | str, warnings: Optional[list[str]] = None) -> PhecodeMap:
    """Read a `vocabulary_id, code, phecode` table; rows with an empty code or phecode are skipped.

    The table is read by pipelines.io.text.read_table (encoding, delimiter; InputError naming the
    file and the missing columns); its decoding warnings are appended to `warnings` when given.
    """
    table, notes = read_table(path, MAP_COLUMNS, "phecode map")
    if warnings is not None:
        warnings.extend(notes)
    mapping: dict[tuple[str, str], set[str]] = {}
    for vocab, code, phe in zip(table["vocabulary_id"], table["code"], table["phecode"]):
        if code and phe:
            mapping.setdefault((normalise_system(vocab), normalise_code(code)), set()).add(normalise_phecode(phe))
    return PhecodeMap(mapping)


_NAME_WORDS = re.compile(r"^[A-Za-z][A-Za-z'.-]*(?:[\s,^]+[A-Za-z][A-Za-z'.-]*)+$")
REASON_NAME_ID = "patient id looks like a name (the column must hold record numbers)"


def looks_like_name(patient_id: str) -> bool:
    """Whether a patient id reads as a person's name: two or more words of letters, or one listed first or last name.

    The column is then not the record number the curation expects (a name is no unique key, and a
    name-shaped id is usually a column mix-up); the names list is philter-lite's (pipelines.deid).
    """
    text = str(patient_id).strip()
    if not text or any(c.isdigit() for c in text):
        return False
    if _NAME_WORDS.match(text):
        return True
    from pipelines.deid.text import name_dictionaries

    first, last = name_dictionaries()
    return text.isalpha() and len(text) > 2 and (text.lower() in first or text.lower() in last)


@dataclass
class CodeRowReject:
    """An EHR row refused by clean_codes, and why."""

    row: int  # 1-based data row of the EHR CSV (header excluded)
    reason: str


def code_phenotypes(system: str, code: str, phemap: Optional[PhecodeMap]) -> tuple[set[str], Optional[str]]:
    """(phenotype ids, None) or (empty, reject reason) for one normalised code."""
    if system not in CODE_SYSTEMS:
        return set(), "unknown code system"
    if not is_valid_code(code, system):
        return set(), "malformed code"
    if phemap is None:
        if system == "ICD9CM":
            return set(), "ICD-9 code needs a phecode map"
        return {code[:3]}, None
    direct = phemap.lookup(system, code)
    if not direct:
        return set(), "code not in phecode map"
    return {p for phe in direct for p in phecode_lineage(phe)}, None


def clean_codes(
    ehr: pd.DataFrame, phemap: Optional[PhecodeMap], dates: Optional[pd.Series] = None
) -> tuple[pd.DataFrame, list[CodeRowReject]]:
    """Valid rows as (patient_id, study_id, date, phenotypes); row-level rejects for the others.

    `dates` are the `date` column already read with the file's one day/month order
    (dates.parse_dates), aligned by position; without it the column is read here.
    """
    import pandas as pd  # here, not at the top: `predict ct` names phenotypes through this module, and reads no table (0.25 s)

    rejects: list[CodeRowReject] = []
    rows = []
    if dates is None:
        dates = parse_dates(list(ehr["date"]), "EHR", "date").dates
    for i, (pid, sid, code, system, raw_date, date) in enumerate(
        zip(ehr["patient_id"], ehr["study_id"], ehr["code"], ehr["code_system"], ehr["date"], dates), start=1
    ):
        if not str(pid).strip():
            rejects.append(CodeRowReject(i, "missing patient id"))
            continue
        if looks_like_name(pid):
            rejects.append(CodeRowReject(i, REASON_NAME_ID))
            continue
        if pd.isna(date):
            rejects.append(CodeRowReject(i, "missing date" if not str(raw_date).strip() else "unparseable date"))
            continue
        phenos, reason = code_phenotypes(normalise_system(system), normalise_code(code), phemap)
        if reason:
            rejects.append(CodeRowReject(i, reason))
            continue
        rows.append({"patient_id": str(pid).strip(), "study_id": str(sid).strip(), "date": date, "phenotypes": phenos})
    return pd.DataFrame(rows, columns=["patient_id", "study_id", "date", "phenotypes"]), rejects


def study_phenotypes(
    codes: pd.DataFrame, patient_id: str, study_date: pd.Timestamp, days_before: int, days_after: int
) -> tuple[set[str], int, int]:
    """(phenotypes, codes in window, codes out of window) for one study of a patient.

    All the patient's codes count, whichever study row carried them: a diagnosis belongs to the
    patient; the window ties it to the scan's time.
    """
    mine = codes[codes["patient_id"] == patient_id]
    delta = (mine["date"] - study_date).dt.days
    inside = mine[(delta >= -days_before) & (delta <= days_after)]
    found: set[str] = set()
    for phenos in inside["phenotypes"]:
        found |= phenos
    return found, len(inside), len(mine) - len(inside)


def label_space(per_study: dict[str, set[str]], min_positive: int) -> tuple[list[str], dict[str, int]]:
    """(kept phenotype ids in label order, dropped id -> positive count)."""
    counts: dict[str, int] = {}
    for phenos in per_study.values():
        for p in phenos:
            counts[p] = counts.get(p, 0) + 1
    kept = sorted((p for p, n in counts.items() if n >= min_positive), key=phenotype_sort_key)
    dropped = {p: n for p, n in sorted(counts.items()) if n < min_positive}
    return kept, dropped


def phenotype_name(pid: str, use_phecodes: bool) -> str:
    """A readable name for a phenotype id: the phecode's description, or "ICD-10 category <id>"."""
    if use_phecodes:
        return phecode_names().get(pid, f"phecode {pid}")
    return f"ICD-10 category {pid}"
