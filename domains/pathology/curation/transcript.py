"""Transcripts of lecture videos: WebVTT, SRT and Whisper-style JSON, parsed into checked cues.

Transcripts are decoded as users have them (UTF-8 with or without a BOM, UTF-16 with a BOM, legacy
Windows-1252/Latin-1 with a warning) by `pipelines.io.text.read_text`.

Bad cues do not sink a transcript: each becomes a reject row (stage "transcript", input
`<file>#cue<N>`) and the rest are used. Cue reasons: "cue without timing", "unparseable timestamp",
"malformed cue" (a JSON segment that is not an object with start, end and text), "empty cue",
"end before start", "overlapping cue", "beyond video duration". A transcript with no usable cue
raises `TranscriptError`, whose `reason` is one of "cannot read transcript", "not a text file",
"empty transcript", "invalid JSON", "JSON transcript without segments", "no usable cue".

Good cues are de-identified (`deidentify_cues`, pipelines.deid) before anything uses their text.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipelines.curation import Reject
from pipelines.deid import Context, scrub
from pipelines.deid.text import identifiers_in
from pipelines.errors import InputError
from pipelines.io.text import read_text

STAGE = "transcript"
TRANSCRIPT_SUFFIXES = (".vtt", ".srt", ".json")

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>]+>")  # VTT voice/timestamp tags, SRT <i>

REASON_NO_TIMING = "cue without timing"
REASON_BAD_TIMESTAMP = "unparseable timestamp"
REASON_MALFORMED = "malformed cue"
REASON_EMPTY_CUE = "empty cue"
REASON_END_BEFORE_START = "end before start"
REASON_OVERLAP = "overlapping cue"
REASON_BEYOND = "beyond video duration"

REASON_UNREADABLE = "cannot read transcript"
REASON_BINARY = "not a text file"
REASON_EMPTY = "empty transcript"
REASON_INVALID_JSON = "invalid JSON"
REASON_NO_SEGMENTS = "JSON transcript without segments"
REASON_NO_USABLE_CUE = "no usable cue"


class TranscriptError(ValueError):
    """The transcript has no usable cue: `reason` is the rejects row's phrase, `where` names the file (and line).

    `rejects` holds the rows of the cues that were refused one by one, when there were any.
    """

    def __init__(self, reason: str, where: str, rejects: Optional[list[Reject]] = None) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.where = where
        self.rejects = rejects or []


@dataclass(frozen=True)
class Cue:
    """One timed piece of narration."""

    start: float  # seconds
    end: float
    text: str


@dataclass
class Transcript:
    """A parsed transcript: its good cues in time order, a reject row per bad cue, and decoding warnings."""

    cues: list[Cue]
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. "x.srt: not UTF-8 (first bad byte 31); read as cp1252"


def find_transcript(video: Path) -> Optional[Path]:
    """The transcript next to a video: same stem, first of .vtt, .srt, .json found."""
    for suffix in TRANSCRIPT_SUFFIXES:
        candidate = video.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _seconds(h: Optional[str], m: str, s: str, frac: Optional[str]) -> Optional[float]:
    """Seconds of a parsed timestamp; None when minutes or seconds are out of range (00:00:75.000)."""
    if (h is not None and int(m) >= 60) or int(s) >= 60:
        return None
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + (int(frac.ljust(3, "0")) / 1000 if frac else 0.0)


@dataclass
class _RawCue:
    """A cue as written: its timing (None when it has none usable), text, and why it is unusable."""

    timing: Optional[tuple[float, float]]
    text: str
    problem: Optional[str] = None


def _parse_blocks(text: str) -> list[_RawCue]:
    """VTT and SRT share a shape: blank-line separated blocks with a `start --> end` line."""
    out: list[_RawCue] = []
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        head = lines[0].strip()
        if head.startswith("WEBVTT") or head.startswith(("NOTE", "STYLE", "REGION")):
            continue
        timing_at = next((i for i, ln in enumerate(lines[:2]) if "-->" in ln), None)
        if timing_at is None:
            out.append(_RawCue(None, " ".join(lines), REASON_NO_TIMING))  # e.g. an SRT index with no timing line
            continue
        m = _TIMING.match(lines[timing_at])
        body = " ".join(_TAG.sub("", ln).strip() for ln in lines[timing_at + 1 :]).strip()
        g = m.groups() if m else ()
        start, end = (_seconds(*g[:4]), _seconds(*g[4:])) if m else (None, None)
        if start is None or end is None:
            out.append(_RawCue(None, body, REASON_BAD_TIMESTAMP))
            continue
        out.append(_RawCue((start, end), body))
    return out


def _time(value: Any) -> Optional[float]:
    """A JSON start/end as seconds; None unless a finite number >= 0 (or a string of one)."""
    if isinstance(value, bool):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and t >= 0 else None


def _parse_json(text: str, where: str) -> list[_RawCue]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(REASON_INVALID_JSON, f"{where}#line{exc.lineno}") from None
    segments = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(segments, list):
        raise TranscriptError(REASON_NO_SEGMENTS, where)
    out: list[_RawCue] = []
    for seg in segments:
        if not isinstance(seg, dict) or not {"start", "end", "text"} <= seg.keys():
            out.append(_RawCue(None, "", REASON_MALFORMED))
            continue
        start, end = _time(seg["start"]), _time(seg["end"])
        if start is None or end is None:
            out.append(_RawCue(None, "", REASON_BAD_TIMESTAMP))
            continue
        out.append(_RawCue((start, end), str(seg["text"] or "").strip()))
    return out


def parse_transcript(path: Path, duration_s: Optional[float] = None) -> Transcript:
    """Good cues in time order, a reject row per bad cue (input: `path#cue<N>`) and decoding warnings.

    Raises TranscriptError when the transcript has no usable cue (its reason says why).
    """
    path = Path(path)
    try:
        decoded = read_text(path)
    except InputError as exc:
        binary = "not a text file" in str(exc)
        raise TranscriptError(REASON_BINARY if binary else REASON_UNREADABLE, str(path)) from None
    if not decoded.text.strip():
        raise TranscriptError(REASON_EMPTY, str(path))
    raw = _parse_json(decoded.text, str(path)) if path.suffix.lower() == ".json" else _parse_blocks(decoded.text)
    if not raw:
        raise TranscriptError(REASON_EMPTY, str(path))  # e.g. a WEBVTT header and nothing else

    cues: list[Cue] = []
    rejects: list[Reject] = []
    for i, cue in enumerate(raw, start=1):
        where = f"{path}#cue{i}"
        if cue.timing is None:
            rejects.append(Reject(where, STAGE, cue.problem or REASON_MALFORMED))
            continue
        start, end = cue.timing
        if not cue.text:
            rejects.append(Reject(where, STAGE, REASON_EMPTY_CUE))
        elif end <= start:
            rejects.append(Reject(where, STAGE, REASON_END_BEFORE_START))
        elif duration_s is not None and start >= duration_s:
            rejects.append(Reject(where, STAGE, REASON_BEYOND))
        elif cues and start < cues[-1].end - 1e-6:
            # ASR tools sometimes emit a cue twice or out of order; keep the first, drop the overlap
            rejects.append(Reject(where, STAGE, REASON_OVERLAP))
        else:
            cues.append(Cue(start, min(end, duration_s) if duration_s is not None else end, cue.text))
    if not cues:
        raise TranscriptError(REASON_NO_USABLE_CUE, str(path), rejects)
    return Transcript(deidentify_cues(cues), rejects, decoded.warnings)


def deidentify_cues(cues: list[Cue]) -> list[Cue]:
    """Cues with identifiers replaced (pipelines.deid.scrub): a narrated case can name its patient.

    Names and ids our rules find anywhere in the transcript are removed from every cue ("Mrs. Harrow"
    in one cue, "Harrow's slides" in the next). The transcript is scrubbed as one text, a cue a line,
    so philter-lite runs once per transcript; if a replacement swallowed a line break, cue by cue.
    """
    whole = "\n".join(c.text.replace("\n", " ") for c in cues)
    ids, names = identifiers_in(whole)
    context = Context(known=ids, names=names)
    lines = scrub(whole, context).split("\n")
    if len(lines) != len(cues):
        lines = [scrub(c.text, context) for c in cues]
    return [Cue(c.start, c.end, text) for c, text in zip(cues, lines)]


def cues_in_window(cues: list[Cue], start: float, end: float, margin: float) -> list[Cue]:
    """Cues overlapping [start - margin, end + margin]."""
    lo, hi = start - margin, end + margin
    return [c for c in cues if c.end > lo and c.start < hi]
