"""Concept frequency in training captions against zero-shot accuracy.

"No zero-shot without exponential data" (Udandarao et al., 2024) found zero-shot accuracy on a
concept grows log-linearly with how often the concept appears in pretraining captions. Here we
count, per evaluation class, the training captions that mention it (normalised, stemmed matching,
with per-domain synonyms), fit accuracy = alpha + beta * ln(1 + count) and report Pearson's r and
the long-tail classes.

Matching: a concept term ("parking lot") matches a caption when its stemmed tokens occur there
contiguously; a pair counts once however many of its texts (caption and variants) mention it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from pipelines.scaling.fit import FitRefused

_TOKEN = re.compile(r"[a-z0-9]+")
_VOWEL = re.compile(r"[aeiouy]")


def stem(word: str) -> str:
    """A small suffix stripper (Porter's step 1, simplified): plurals and -ed/-ing forms.

    Enough to match "roads"/"road", "buildings"/"building", "parks"/"parked" is not needed;
    it is deliberately conservative so distinct concepts do not collapse.
    """
    w = word.lower()
    if len(w) <= 3:
        return w
    if w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        # only when a vowel stays in the stem, so "bed" and "string" survive
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and _VOWEL.search(w[: -len(suffix)]):
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":  # "mapped" -> "map"
                w = w[:-1]
            break
    return w


def normalise(text: str) -> list[str]:
    """Lower-cased, punctuation-free, stemmed tokens."""
    return [stem(t) for t in _TOKEN.findall(text.lower())]


def _contains(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    k = len(phrase)
    return k > 0 and any(list(tokens[i : i + k]) == list(phrase) for i in range(len(tokens) - k + 1))


def concept_terms(classnames: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[list[str]]]:
    """Per class, the normalised terms that count as a mention: the class name plus its synonyms."""
    synonyms = synonyms or {}
    unknown = sorted(set(synonyms) - set(classnames))
    if unknown:
        raise ValueError(f"synonyms given for unknown class(es) {unknown}; classes: {list(classnames)}")
    terms: dict[str, list[list[str]]] = {}
    for name in classnames:
        phrases = [name, *synonyms.get(name, [])]
        terms[name] = [normalise(p) for p in dict.fromkeys(phrases) if normalise(p)]
    return terms


def count_mentions(
    pair_texts: Iterable[Sequence[str]], classnames: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None
) -> dict[str, int]:
    """Number of pairs (each given as its list of texts) mentioning each class."""
    terms = concept_terms(classnames, synonyms)
    counts = {name: 0 for name in classnames}
    for texts in pair_texts:
        token_lists = [normalise(t) for t in texts]
        for name, phrases in terms.items():
            if any(_contains(tokens, p) for tokens in token_lists for p in phrases):
                counts[name] += 1
    return counts


@dataclass
class ConceptFit:
    """The line accuracy = alpha + beta * ln(1 + mentions) through the classes, with its correlation."""

    alpha: float
    beta: float  # accuracy gained per e-fold increase of mentions
    pearson_r: float  # between ln(1 + count) and accuracy
    p_value: float
    n_classes: int


def fit_concept_frequency(counts: Mapping[str, int], accuracy: Mapping[str, float]) -> ConceptFit:
    """Accuracy = alpha + beta * ln(1 + mentions) over the classes with a finite accuracy."""
    names = [c for c in counts if c in accuracy and accuracy[c] is not None and math.isfinite(accuracy[c])]
    if len(names) < 3:
        raise FitRefused(f"only {len(names)} class(es) with both a count and an accuracy; need at least 3")
    x = np.log1p(np.array([counts[c] for c in names], dtype=float))
    y = np.array([accuracy[c] for c in names], dtype=float)
    if np.ptp(x) == 0:
        raise FitRefused("every class has the same number of mentions: nothing to correlate")
    if np.ptp(y) == 0:
        raise FitRefused("every class has the same accuracy: nothing to correlate")
    beta, alpha = np.polyfit(x, y, 1)
    r, p = stats.pearsonr(x, y)
    return ConceptFit(float(alpha), float(beta), float(r), float(p), len(names))


def long_tail(counts: Mapping[str, int], accuracy: Mapping[str, float], k: int = 3) -> list[tuple[str, int, float]]:
    """The k classes with the fewest mentions: (class, mentions, accuracy), rarest first."""
    order = sorted(counts, key=lambda c: (counts[c], c))
    return [(c, counts[c], float(accuracy.get(c, math.nan))) for c in order[:k]]
