r"""Radiology report text: scrubbing of identifiers, organ sections, and caption views.

Scrubbing replaces dates with "[DATE]", MRN/accession-like identifiers with "[ID]", and names
after a title (Dr./Mr./Mrs./Ms./Miss/Prof.) with "[NAME]" (the title is kept so the sentence still
reads). It is pattern based: a safety net for the common leaks, not a certified de-identifier.

Organ sections: in the findings, a line that starts with capitalised word(s) and a colon
("LIVER:", "Kidneys:", "Gallbladder and bile ducts:") opens a section that runs to the next such
line. Keys are lower case with spaces as underscores ("liver", "gallbladder_and_bile_ducts").

Markup: report cells exported from a RIS sometimes hold HTML or RTF. HTML (a known tag such as
<p>, <br>, <b>, <div>, or an entity like &nbsp;) is reduced to its text, block tags becoming line
breaks so organ sections still split (the curation records a warning); RTF ({\rtf1 ...}) is not
converted (its control words, font tables and escapes need a real RTF reader): the study is refused.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

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
