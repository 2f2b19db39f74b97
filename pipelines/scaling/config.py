"""params.yaml's scaling sections: `scaling` (the sweep's matrix) and `<domain>.scaling`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

MetricName = str  # "zeroshot/acc1", ...: checked against pipelines.scaling.report.METRICS
# What a nested subset takes whole: the split group (a ground cell, a slide, a patient) or single pairs.
SubsetUnit = Literal["group", "pair"]


@dataclass
class ScalingConfig:
    """params.yaml `scaling`: which domains are swept, at which data fractions and seeds.

    The quantity sweep runs every (domain, fraction, seed) without a quality filter (quality 1.0).
    The quality sweep runs every (quality domain, quality_keep, quality_fraction, quality_seed):
    with the quantity runs at those fractions it gives one fitted curve per quality level.
    """

    domains: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    quality_domains: list[str] = field(default_factory=list)  # domains that also sweep the quality-filter share
    quality_keep: list[float] = field(default_factory=list)   # shares of the top pairs by image-caption score
    quality_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # >= 3 sizes: a curve per level
    quality_seeds: list[int] = field(default_factory=lambda: [0])
    n_boot: int = 500
    metrics: Optional[list[MetricName]] = None
    # "group" keeps each split group (ground cell, slide, patient) whole in every subset; "pair" nests single
    # pairs, for a domain whose train split has too few groups to give several sizes (the test split stays
    # group-disjoint from every subset either way, so nothing leaks into the scores)
    subset_unit: SubsetUnit = "group"


@dataclass
class DomainScalingConfig:
    """params.yaml `<domain>.scaling`."""

    # merged over `<domain>.train` for every sweep run (e.g. the same max_steps at every size)
    train: dict[str, Any] = field(default_factory=dict)
    # merged over `<domain>.adapt` and `<domain>.evaluate` (e.g. a schedule in steps, fewer bootstrap resamples)
    adapt: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    targets: dict[MetricName, list[float]] = field(default_factory=dict)  # metric values to estimate the pairs for
    synonyms: dict[str, list[str]] = field(default_factory=dict)          # class name -> words counted as mentions
    metrics: Optional[list[MetricName]] = None
    # "group" keeps each split group (ground cell, slide, patient) whole in every subset; "pair" nests single
    # pairs, for a domain whose train split has too few groups to give several sizes (the test split stays
    # group-disjoint from every subset either way, so nothing leaks into the scores)
    subset_unit: SubsetUnit = "group"
