"""Transcripts of lecture videos: WebVTT, SRT and Whisper-style JSON, parsed into checked cues.

Bad cues do not sink a transcript: each becomes a reject row (stage "transcript") and the rest
are used. Reasons: "malformed cue", "empty cue", "end before start", "overlapping cue",
"beyond video duration". A transcript with no usable cue at all raises `TranscriptError`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipelines.curation import Reject

STAGE = "transcript"
TRANSCRIPT_SUFFIXES = (".vtt", ".srt", ".json")

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>]+>")  # VTT voice/timestamp tags, SRT <i>


class TranscriptError(ValueError):
    """The transcript has no usable cue (unreadable, empty, or every cue malformed)."""


@dataclass(frozen=True)
class Cue:
    """One timed piece of narration."""

    start: float  # seconds
    end: float
    text: str


def find_transcript(video: Path) -> Optional[Path]:
    """The transcript next to a video: same stem, first of .vtt, .srt, .json found."""
    for suffix in TRANSCRIPT_SUFFIXES:
        candidate = video.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _seconds(h: Optional[str], m: str, s: str, frac: Optional[str]) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + (int(frac.ljust(3, "0")) / 1000 if frac else 0.0)


def _parse_blocks(text: str) -> list[tuple[Optional[tuple[float, float]], str, str]]:
    """VTT and SRT share a shape: blank-line separated blocks with a `start --> end` line.

    Returns (timing or None when malformed, cue text, raw block) per cue-like block.
    """
    out: list[tuple[Optional[tuple[float, float]], str, str]] = []
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
            out.append((None, " ".join(lines), block))  # e.g. an SRT index with no timing line
            continue
        m = _TIMING.match(lines[timing_at])
        body = " ".join(_TAG.sub("", ln).strip() for ln in lines[timing_at + 1 :]).strip()
        if not m:
            out.append((None, body, block))
            continue
        g = m.groups()
        out.append(((_seconds(*g[:4]), _seconds(*g[4:])), body, block))
    return out


def _parse_json(text: str) -> list[tuple[Optional[tuple[float, float]], str, str]]:
    data: Any = json.loads(text)
    segments = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(segments, list):
        raise TranscriptError("JSON transcript is neither a list nor {'segments': [...]}")
    out: list[tuple[Optional[tuple[float, float]], str, str]] = []
    for seg in segments:
        raw = json.dumps(seg)[:80]
        try:
            timing = (float(seg["start"]), float(seg["end"]))
            body = str(seg["text"]).strip()
        except (KeyError, TypeError, ValueError):
            out.append((None, "", raw))
            continue
        out.append((timing, body, raw))
    return out


def parse_transcript(path: Path, duration_s: Optional[float] = None) -> tuple[list[Cue], list[Reject]]:
    """Good cues in time order, and a reject row per bad cue (input: `path#cue<N>`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        raw = _parse_json(text) if path.suffix.lower() == ".json" else _parse_blocks(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise TranscriptError(f"unreadable transcript: {exc}") from exc

    cues: list[Cue] = []
    rejects: list[Reject] = []
    for i, (timing, body, _) in enumerate(raw, start=1):
        where = f"{path}#cue{i}"
        if timing is None:
            rejects.append(Reject(where, STAGE, "malformed cue"))
            continue
        start, end = timing
        if not body:
            rejects.append(Reject(where, STAGE, "empty cue"))
        elif end <= start:
            rejects.append(Reject(where, STAGE, "end before start"))
        elif duration_s is not None and start >= duration_s:
            rejects.append(Reject(where, STAGE, "beyond video duration"))
        elif cues and start < cues[-1].end - 1e-6:
            # ASR tools sometimes emit a cue twice or out of order; keep the first, drop the overlap
            rejects.append(Reject(where, STAGE, "overlapping cue"))
        else:
            cues.append(Cue(start, min(end, duration_s) if duration_s is not None else end, body))
    if not cues:
        raise TranscriptError("no usable cue")
    return cues, rejects


def cues_in_window(cues: list[Cue], start: float, end: float, margin: float) -> list[Cue]:
    """Cues overlapping [start - margin, end + margin]."""
    lo, hi = start - margin, end + margin
    return [c for c in cues if c.end > lo and c.start < hi]
