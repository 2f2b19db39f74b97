"""Cleaning narration into captions, as Quilt-1M does with its ASR text (reimplemented simply).

`clean_text` takes the raw transcript text of an image's time window and:

1. drops ASR markup ("[Music]", ">>") and fillers: "um", "uh", "erm", "hmm", "you know", "I mean"
   anywhere; "so", "okay", "alright", "well", "now", "and", "yeah", "basically" at sentence starts;
2. collapses ASR repetitions of a word or phrase of up to five words ("the the", "in the in the");
3. keeps only sentences that contain a term of the pathology vocabulary (vocabulary.txt plus
   `extra_vocabulary`): "don't forget to subscribe" goes, "neutrophils in the muscularis" stays.

Terms are matched on tokens normalised by a small plural rule set (cells -> cell, nuclei ->
nucleus, metastases -> metastasis, mucosae -> mucosa, arteries -> artery), longest term first, so
"squamous cell carcinoma" is found as one term. Magnification is read from the raw text: "40x",
"at 20 x", "40 times magnification", "high power" / "low power".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.txt")

_TOKEN = re.compile(r"[a-z0-9]+(?:[&'\-][a-z0-9]+)*'?")
_MARKUP = re.compile(r"\[[^\]]*\]|>>+|&gt;&gt;")
_FILLER_ANYWHERE = re.compile(r",?\s*\b(?:u+m+|u+h+|e+r+m+|u+h+m+|h+m+|a+h+|you know|i mean)\b,?", re.IGNORECASE)
_FILLER_START = re.compile(r"^(?:(?:so|okay|ok|alright|all right|well|now|and|yeah|yes|basically|right)\b[,.]?\s*)+", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\w+(?:\s+\w+){0,4})(?:[\s,]+\1\b)+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MAGNIFICATION = [
    re.compile(r"\b(\d{1,3}(?:\.\d{1,2})?)\s?[x×](?![a-z0-9])", re.IGNORECASE),
    re.compile(r"\b(\d{1,3})\s+times\s+(?:magnification|objective|magnified)", re.IGNORECASE),
]
_POWER = re.compile(r"\b(high|low|medium|intermediate)[ -]power\b", re.IGNORECASE)


def normalise_token(token: str) -> str:
    """A crude singular: enough to match 'nuclei' with 'nucleus' and 'cells' with 'cell'."""
    t = token.lower().rstrip("'")
    if t.endswith("'s"):
        t = t[:-2]
    if len(t) <= 3 or not t.isalpha():
        return t
    if t.endswith("ies") and len(t) > 4:
        return t[:-3] + "y"
    if t.endswith("uses"):
        return t[:-2]
    if t.endswith("ses") and not t.endswith("sses"):
        return t[:-3] + "sis"  # metastases -> metastasis
    if t.endswith("ae"):
        return t[:-1]  # mucosae -> mucosa
    if t.endswith("i") and len(t) > 4:
        return t[:-1] + "us"  # nuclei -> nucleus, villi -> villus
    if t.endswith("s") and not t.endswith(("ss", "us", "is")):
        return t[:-1]
    return t


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens of `text` (inner hyphens, ampersands and apostrophes kept)."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """Medical terms, looked up by their normalised token sequences."""

    terms: dict[tuple[str, ...], str]  # normalised token tuple -> the term as written in the list
    max_len: int

    def find(self, text: str) -> list[str]:
        """Terms in `text`, in order of first appearance, longest match first."""
        toks = [normalise_token(t) for t in tokens(text)]
        found: dict[str, None] = {}
        i = 0
        while i < len(toks):
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                term = self.terms.get(tuple(toks[i : i + n]))
                if term is not None:
                    found[term] = None
                    i += n
                    break
            else:
                i += 1
        return list(found)


def _read_terms(path: Path) -> list[str]:
    return [ln.strip().lower() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@lru_cache(maxsize=8)
def _load(extra: tuple[str, ...]) -> Vocabulary:
    terms: dict[tuple[str, ...], str] = {}
    for term in [*_read_terms(VOCABULARY_FILE), *(e.strip().lower() for e in extra if e.strip())]:
        key = tuple(normalise_token(t) for t in tokens(term))
        if key:
            terms.setdefault(key, term)
    return Vocabulary(terms, max(len(k) for k in terms))


def load_vocabulary(extra: Iterable[str] = ()) -> Vocabulary:
    """The shipped vocabulary plus `extra` terms (cached)."""
    return _load(tuple(extra))


@dataclass
class CleanedText:
    """Narration after cleaning: the caption, the medical terms and magnification it states, and sentence counts."""

    text: str  # the caption: kept sentences, fillers and repetitions removed; "" when nothing is medical
    terms: list[str] = field(default_factory=list)
    magnification: Optional[str] = None
    sentences_kept: int = 0
    sentences_dropped: int = 0


def find_magnification(text: str) -> Optional[str]:
    """The first stated magnification: '40x', '2.5x', 'high power'; None when none is stated."""
    hits: list[tuple[int, str]] = []
    for pattern in _MAGNIFICATION:
        for m in pattern.finditer(text):
            value = float(m.group(1))
            if 0 < value <= 100:  # objectives run 1x-100x; '1000x' is total and rare in lectures
                hits.append((m.start(), f"{value:g}x"))
    hits += [(m.start(), f"{m.group(1).lower()} power") for m in _POWER.finditer(text)]
    return min(hits)[1] if hits else None


def _collapse_repeats(s: str) -> str:
    while True:
        new = _REPEAT.sub(r"\1", s)
        if new == s:
            return s
        s = new


def _tidy(sentence: str) -> str:
    s = _FILLER_ANYWHERE.sub(" ", sentence)
    s = re.sub(r"\s+", " ", s).strip(" ,;")
    s = _FILLER_START.sub("", s).strip(" ,;")
    s = _collapse_repeats(s)
    s = re.sub(r"\s+([,.!?;:])", r"\1", s)
    s = re.sub(r"([,;])(?=[.!?]$)", "", s)
    if not s or not any(c.isalnum() for c in s):
        return ""
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (whitespace collapsed), split after '.', '!' or '?'."""
    return [s for s in _SENTENCE_END.split(re.sub(r"\s+", " ", text).strip()) if s]


def clean_text(raw: str, vocabulary: Optional[Vocabulary] = None) -> CleanedText:
    """Caption text, terms and magnification from raw narration (see the module docstring)."""
    vocab = vocabulary or load_vocabulary()
    text = _MARKUP.sub(" ", raw)
    kept: list[str] = []
    terms: dict[str, None] = {}
    dropped = 0
    for sentence in split_sentences(text):
        tidy = _tidy(sentence)
        found = vocab.find(tidy) if tidy else []
        if not found:
            dropped += 1
            continue
        kept.append(tidy)
        terms.update(dict.fromkeys(found))
    return CleanedText(" ".join(kept), list(terms), find_magnification(raw), len(kept), dropped)
