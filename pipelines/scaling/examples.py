"""The sweep runs' per-example outcomes as `PerExample` sets, one reader per metric.

Each run folder holds `per_example_<table>.csv` files written by the evaluate stage for the
adapted model (pipelines/evaluate/clip.py, volume.py). Every run of a domain is scored on the same
evaluation set, so the tables line up example by example; a reader refuses runs whose examples
differ, since resampling them jointly would then mean nothing.

| metric | table | per-example value | resampling unit |
|---|---|---|---|
| zeroshot/acc1, zeroshot/mean_per_class_recall | zeroshot | correct (0/1) | zero-shot image |
| retrieval/mean_recall | retrieval | hit at each k per query, both ways (older runs: first-hit rank) | image (with its captions) |
| phenotypes/macro_auroc | phenotypes | phenotype probability per study | patient (all their studies) |
| zeroshot/macro_f1 | findings | predicted finding (0/1) per study | patient (all their studies) |
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from pipelines.evaluate.metrics import RETRIEVAL_KS
from pipelines.scaling.fit import PerExample, accuracy, balanced_accuracy, macro_auroc, macro_f1, mean_hit_recall, mean_recall

PREFIX = "per_example_"

ExampleReader = Callable[[Sequence[Path]], Optional[PerExample]]


def read_tables(run_dirs: Sequence[Path], table: str, keys: list[str]) -> Optional[list[pd.DataFrame]]:
    """Every run's `per_example_<table>.csv` sorted by `keys`; None when a run lacks it.

    Raises ValueError when the runs' examples (the `keys` columns) differ.
    """
    paths = [Path(d) / f"{PREFIX}{table}.csv" for d in run_dirs]
    if not paths or not all(p.is_file() for p in paths):
        return None
    tables = [pd.read_csv(p).sort_values(keys, ignore_index=True) for p in paths]
    first = tables[0][keys]
    for path, t in zip(paths, tables):
        if len(t) != len(first) or not t[keys].equals(first):
            raise ValueError(f"{path}: its examples differ from {paths[0]}'s: the runs were scored on different sets")
    return tables


def zeroshot_examples(balanced: bool) -> ExampleReader:
    """Zero-shot classification: 0/1 correct per image; accuracy or mean per-class recall."""

    def read(run_dirs: Sequence[Path]) -> Optional[PerExample]:
        tables = read_tables(run_dirs, "zeroshot", ["example", "label"])
        if tables is None:
            return None
        labels = tables[0]["label"].to_numpy()
        correct = np.stack([t["correct"].to_numpy(dtype=float) for t in tables])
        return PerExample(correct, balanced_accuracy(labels) if balanced else accuracy())

    return read


def retrieval_examples(run_dirs: Sequence[Path]) -> Optional[PerExample]:
    """Retrieval: mean recall over RETRIEVAL_KS, both ways; an image and its captions resampled together.

    The runs' hits per query and k (topk as the metric takes it, ties included) where every run saved
    them; else first-hit ranks, which agree with the metric only where no score ties.
    """
    tables = read_tables(run_dirs, "retrieval", ["direction", "query", "image"])
    if tables is None:
        return None
    direction, images = tables[0]["direction"].to_numpy(), tables[0]["image"].to_numpy()
    hit_columns = [f"hit@{k}" for k in RETRIEVAL_KS]
    if all(set(hit_columns) <= set(t.columns) for t in tables):
        hits = np.stack([t[hit_columns].to_numpy(dtype=float) for t in tables])
        return PerExample(hits, mean_hit_recall(direction), images)
    ranks = np.stack([t["rank"].to_numpy(dtype=float) for t in tables])
    return PerExample(ranks, mean_recall(direction, RETRIEVAL_KS), images)


def _wide(tables: list[pd.DataFrame], column: str, label_column: str, item: str, missing_label: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs x studies x items values, studies x items labels, and each study's group."""
    first = tables[0]
    labels = first.pivot(index="study", columns=item, values=label_column).fillna(missing_label)
    values = np.stack([t.pivot(index="study", columns=item, values=column).reindex(index=labels.index, columns=labels.columns)
                       .fillna(0).to_numpy(dtype=float) for t in tables])
    groups = first.drop_duplicates("study").set_index("study")["group"].reindex(labels.index).astype(str).to_numpy()
    return values, labels.to_numpy(dtype=int), groups


def phenotype_examples(run_dirs: Sequence[Path]) -> Optional[PerExample]:
    """Phenotypes: probability per study and phenotype; macro AUROC; a patient's studies resampled together."""
    tables = read_tables(run_dirs, "phenotypes", ["study", "phenotype", "group", "target"])
    if tables is None:
        return None
    scores, targets, groups = _wide(tables, "score", "target", "phenotype", 0)
    return PerExample(scores, macro_auroc(targets), groups)


def findings_examples(run_dirs: Sequence[Path]) -> Optional[PerExample]:
    """Zero-shot findings: 0/1 prediction per study and finding; macro F1 (labels -1 ignored); by patient."""
    tables = read_tables(run_dirs, "findings", ["study", "finding", "group", "label"])
    if tables is None:
        return None
    predicted, labels, groups = _wide(tables, "predicted", "label", "finding", -1)
    return PerExample(predicted, macro_f1(labels), groups)
