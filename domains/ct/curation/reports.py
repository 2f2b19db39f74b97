"""Radiology report text: scrubbing of identifiers, organ sections, and caption views.

Scrubbing replaces dates with "[DATE]", MRN/accession-like identifiers with "[ID]", and names
after a title (Dr./Mr./Mrs./Ms./Miss/Prof.) with "[NAME]" (the title is kept so the sentence still
reads). It is pattern based: a safety net for the common leaks, not a certified de-identifier.

Organ sections: in the findings, a line that starts with capitalised word(s) and a colon
("LIVER:", "Kidneys:", "Gallbladder and bile ducts:") opens a section that runs to the next such
line. Keys are lower case with spaces as underscores ("liver", "gallbladder_and_bile_ducts").
"""
from __future__ import annotations

import re

_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DATE_PATTERNS = [
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?\b"),  # 2021-03-04
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),  # 03/04/2021, 4.3.21
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{4}}\b", re.I),  # 4 March 2021
    re.compile(rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.I),  # March 4, 2021
    re.compile(rf"\b{_MONTHS}\.?\s+\d{{4}}\b", re.I),  # March 2021
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),  # 20210304
]
_ID_LABELLED = re.compile(
    r"\b(?:MRN|MR#|Medical\s+record(?:\s+(?:number|no\.?))?|Acc(?:ession)?(?:\s*(?:#|No\.?|number))?|Patient\s+ID)"
    r"\s*[:#]?\s*[A-Z0-9][A-Z0-9-]*",
    re.I,
)
_ID_DIGITS = re.compile(r"\b\d{6,}\b")
_NAME = re.compile(r"\b(Dr|Mr|Mrs|Ms|Miss|Prof)(\.?)\s+[A-Z][A-Za-z'-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][A-Za-z'-]+)*")
_HEADING = re.compile(r"^\s*([A-Z][A-Za-z]*(?:[ /&-]+[A-Za-z]+){0,4})\s*:\s*(.*)$")


def scrub(text: str) -> str:
    """Report text with dates, identifiers and titled names replaced by placeholders."""
    if not text:
        return ""
    for pattern in _DATE_PATTERNS:
        text = pattern.sub("[DATE]", text)
    text = _ID_LABELLED.sub("[ID]", text)
    text = _ID_DIGITS.sub("[ID]", text)
    text = _NAME.sub(lambda m: f"{m.group(1)}{m.group(2)} [NAME]", text)
    return text


def organ_key(heading: str) -> str:
    """A section heading as a snake_case key: "Liver/Gallbladder" -> "liver_gallbladder"."""
    return re.sub(r"[^a-z0-9]+", "_", heading.lower()).strip("_")


def split_organs(findings: str) -> tuple[dict[str, str], dict[str, str]]:
    """({organ key: section text}, {organ key: heading as written}) from findings text."""
    sections: dict[str, list[str]] = {}
    headings: dict[str, str] = {}
    current: str | None = None
    for line in (findings or "").splitlines():
        m = _HEADING.match(line)
        if m:
            current = organ_key(m.group(1))
            headings.setdefault(current, m.group(1).strip())
            sections.setdefault(current, [])
            line = m.group(2)
        if current is not None and line.strip():
            sections[current].append(line.strip())
    return {k: " ".join(v) for k, v in sections.items() if v}, {k: headings[k] for k in sections if sections[k]}


def report_views(findings: str, organ_sections: dict[str, str]) -> list[str]:
    """Texts a training sample may see: the full findings, or one organ's section.

    The trainer samples one view per epoch; an organ view reads "Liver: <text>".
    """
    views = [findings.strip()] if findings and findings.strip() else []
    for organ, text in organ_sections.items():
        views.append(f"{organ.replace('_', ' ').capitalize()}: {text}")
    return views


def caption_variants(findings: str, impression: str, organ_sections: dict[str, str]) -> dict[str, str]:
    """{"findings", "impression", "organ:<key>"} for the pair's caption_variants (non-empty only)."""
    out: dict[str, str] = {}
    if findings.strip():
        out["findings"] = findings.strip()
    if impression.strip():
        out["impression"] = impression.strip()
    for organ, view in zip(organ_sections, report_views("", organ_sections)):
        out[f"organ:{organ}"] = view
    return out


def report_caption(findings: str, impression: str) -> str:
    """The pair's caption: findings then impression, each labelled, empty parts left out."""
    parts = []
    if findings.strip():
        parts.append(f"FINDINGS: {findings.strip()}")
    if impression.strip():
        parts.append(f"IMPRESSION: {impression.strip()}")
    return "\n".join(parts)
