r"""Radiology report text: sections, organ sections, markup, and caption views.

De-identification is not done here: curate.py passes every section it writes through
pipelines.deid (`scrub`), with the study's known identifiers and its date.

Whole reports (a `report` column) are split into sections by their headings (`split_report`):
FINDINGS ("Findings:", "FINDINGS AND IMPRESSION", "Report", "Body"), IMPRESSION ("Conclusion(s)",
"Opinion", "Summary", "Assessment", "Diagnosis"), and the sections that are neither (Comparison,
Technique, History, Indication, Clinical information, Procedure, Exam, Protocol, Addendum,
Recommendation ...) or header fields (Patient, MRN, DOB, Accession ...). A heading is a word or a few
words at a line start followed by a colon, or alone on its line in capitals; FINDINGS and IMPRESSION
headings also count inline, after a sentence.
Only findings and impression are kept. A report with no findings or impression heading is all
findings, less its header lines.

Organ sections: in the findings, a heading ("LIVER:", "Kidneys:", "Gallbladder and bile ducts:")
at a line start or inline after a sentence ("Liver: normal. Spleen: enlarged.") opens a section that
runs to the next heading. Non-organ headings (NON_ORGAN_HEADINGS: Comparison, Technique, History,
Indication, Clinical information, ...) close the current section and open none: they are not organs
and not captions. Keys are lower case with spaces as underscores ("gallbladder_and_bile_ducts").

Markup: report cells exported from a RIS sometimes hold HTML or RTF. HTML (a known tag such as
<p>, <br>, <b>, <div>, or an entity like &nbsp;) is reduced to its text, block tags becoming line
breaks so organ sections still split (the curation records a warning); RTF ({\rtf1 ...}) is not
converted (its control words, font tables and escapes need a real RTF reader): the study is refused.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_HTML_TAGS = ("a|b|i|u|p|br|hr|div|span|font|strong|em|ul|ol|li|table|thead|tbody|tr|td|th|html|head|body|"
              "h[1-6]|sup|sub|pre|blockquote|center|small|big|meta|style|title")
_HTML = re.compile(rf"</?(?:{_HTML_TAGS})\b[^<>]*/?>|&(?:nbsp|amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);", re.I)
_HTML_BLOCK = {"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "ul", "ol", "pre", "blockquote"}
_RTF = re.compile(r"^\s*\{\\rtf", re.I)


def markup_kind(text: str) -> str | None:
    """'rtf' or 'html' when a report cell holds that markup, else None (plain text)."""
    if not text:
        return None
    if _RTF.match(text):
        return "rtf"
    if _HTML.search(text):
        return "html"
    return None


class _TextOfHTML(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0  # inside <style>/<head> etc.

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(text: str) -> str:
    """The text of an HTML fragment: tags dropped, entities decoded, block tags as line breaks."""
    parser = _TextOfHTML()
    parser.feed(text)
    parser.close()
    plain = html.unescape("".join(parser.parts)).replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in plain.splitlines()]
    return "\n".join(line for line in lines if line)


def organ_key(heading: str) -> str:
    """A section heading as a snake_case key: "Liver/Gallbladder" -> "liver_gallbladder"."""
    return re.sub(r"[^a-z0-9]+", "_", heading.lower()).strip("_")


FINDINGS_HEADINGS = ("findings", "finding", "findings and impression", "findings/impression", "report", "body", "results")
IMPRESSION_HEADINGS = ("impression", "impressions", "conclusion", "conclusions", "opinion", "summary", "assessment", "diagnosis",
                       "final impression", "summary of findings")
NON_ORGAN_HEADINGS = frozenset((
    "comparison", "comparisons", "technique", "techniques", "history", "clinical history", "indication", "indications",
    "clinical indication", "clinical information", "clinical info", "clinical details", "clinical data", "reason for exam",
    "reason for study", "reason", "procedure", "exam", "examination", "study", "protocol", "contrast", "dose", "radiation dose",
    "addendum", "recommendation", "recommendations", "note", "notes", "prior", "priors", "patient", "patient name", "name",
    "mrn", "dob", "date of birth", "age", "sex", "accession", "acc", "exam date", "date", "study date", "referring",
    "referring physician", "ordering physician", "attending", "radiologist", "physician", "signed", "electronically signed",
    "dictated", "dictated by", "transcribed", "read by", "address", "phone", "fax", "email", "ssn", "location", "site",
    "facility", "institution", "account", "health plan id", "portal", "photo", "fingerprint id", "driver license",
    "workstation", "time", "critical result", "communication",
))
_LINE_HEADING = re.compile(r"^\s*([A-Z][A-Za-z]*(?:[ /&-]+[A-Za-z]+){0,4})\s*:\s*(.*)$")
_INLINE_HEADING = re.compile(r"(?<=[.;!?])[ \t]+(?=[A-Z][A-Za-z]*(?:[ /&-]+[A-Za-z]+){0,4}[ \t]*:(?!\d))")
# Inside a section only FINDINGS/IMPRESSION headings start a new section ("... normal. IMPRESSION: ..."); other
# headings count at line starts only, so "MRN: 123" in an impression sentence stays (and is scrubbed) there.
_MAIN_INLINE_HEADING = re.compile(r"(?<=[.;!?])[ \t]+(?=(?i:" + "|".join(
    re.escape(h).replace("\\ ", r"[ \t]+") for h in sorted(FINDINGS_HEADINGS + IMPRESSION_HEADINGS, key=len, reverse=True))
    + r")[ \t]*:)")
_CAPS_LINE = re.compile(r"^\s*([A-Z][A-Z /&-]{2,40}?)\s*:?\s*$")


def heading_kind(heading: str) -> str:
    """'findings', 'impression', 'other' (a non-organ section or header field) or 'organ' for a heading's words."""
    key = " ".join(heading.lower().replace("_", " ").split())
    if key in FINDINGS_HEADINGS:
        return "findings"
    if key in IMPRESSION_HEADINGS:
        return "impression"
    if key in NON_ORGAN_HEADINGS:
        return "other"
    return "organ"


def _lines_with_inline_headings(text: str) -> list[str]:
    """Lines, with an inline heading ("... normal. Spleen: enlarged.") moved to a line of its own."""
    return _INLINE_HEADING.sub("\n", text or "").splitlines()


def split_report(text: str) -> tuple[str, str]:
    """(findings, impression) of a whole report; other sections and header fields are dropped (module docstring)."""
    sections: dict[str, list[str]] = {"findings": [], "impression": [], "other": [], "none": []}
    current = "none"
    seen_main = False
    for line in _MAIN_INLINE_HEADING.sub("\n", text or "").splitlines():
        caps = _CAPS_LINE.match(line)
        m = _LINE_HEADING.match(line)
        heading = m.group(1) if m else (caps.group(1) if caps else None)
        kind = heading_kind(heading) if heading else None
        if kind in ("findings", "impression", "other"):
            seen_main |= kind != "other"
            current = kind
            line = m.group(2) if m else ""
        elif kind == "organ" and current in ("other", "none") and not seen_main and m is not None:
            current = "findings"  # organ headings before any FINDINGS heading: the findings started unlabelled
            seen_main = True
        if line.strip():
            sections[current].append(line.strip())
    if not seen_main:  # no FINDINGS or IMPRESSION heading: the unlabelled text is the findings
        return "\n".join(sections["none"]), ""
    return "\n".join(sections["findings"]), "\n".join(sections["impression"])


def split_organs(findings: str) -> tuple[dict[str, str], dict[str, str]]:
    """({organ key: section text}, {organ key: heading as written}) from findings text.

    Headings at a line start or inline after a sentence open a section; non-organ headings close it.
    """
    sections: dict[str, list[str]] = {}
    headings: dict[str, str] = {}
    current: str | None = None
    for line in _lines_with_inline_headings(findings):
        m = _LINE_HEADING.match(line)
        if m:
            if heading_kind(m.group(1)) != "organ":
                current = None
                continue
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
