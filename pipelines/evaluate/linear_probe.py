"""Linear probes: logistic regression on a model's frozen, L2-normalised image embeddings.

The labelled images are the zero-shot set's, split once, by class and seeded, into
- probe-test (`test_fraction` of each class, at least one image when the class has two),
- probe-val (`val_fraction` of the rest of each class, at least one when two are left): picks C,
- the shot pool (the rest): the k-shot training images are the first k of a seeded permutation of
  each class's pool, so a seed's 2 shots hold its 1 shot (nested draws: k is the only change).
The split depends on the labels and `split_seed` only, so every model is probed on the same images.

Each k and seed fits scikit-learn's LogisticRegression (lbfgs, multinomial) once per C in `c_values`
on the shots and keeps the C with the best probe-val accuracy (ties: lower log loss), as
CLIP_benchmark's linear probe sweeps its weight decay on a validation set. "full" sweeps C on the
whole pool, then refits on pool + val with that C (CLIP_benchmark's full-data protocol). A k larger
than some class's pool is skipped with the reason, as CLIP_benchmark skips it ("insufficient data").
Reported: acc1 on probe-test per run, and per k its mean and sample standard deviation over seeds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class LinearProbeConfig:
    """params.yaml `<domain>.evaluate.linear_probe`: few-shot and full-data linear probes on the zero-shot set."""

    enabled: bool = True
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # images per class; each k needs that many in every class's pool
    seeds: int = 3  # shot draws per k
    test_fraction: float = 0.5  # share of each class held out as probe-test
    val_fraction: float = 0.2  # share of each class's remaining images held out to pick C
    split_seed: int = 0  # the probe-train/val/test split and the shot draws
    # Inverse L2 strengths swept on probe-val (CLIP's sweep spans 1e-6..1e6 in lambda = 1/C; unit-norm
    # features need a large C to separate classes with few shots, and below 1e-2 every class scores alike).
    c_values: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])

    def __post_init__(self) -> None:
        if any(k < 1 for k in self.shots):
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("test_fraction must lie in (0, 1) and val_fraction in [0, 1)")
        if not self.c_values or any(c <= 0 for c in self.c_values):
            raise ValueError(f"c_values must be a non-empty list of positive numbers, got {self.c_values}")


@dataclass
class ProbeSplit:
    """Indices into the labelled set: the shot pool, probe-val and probe-test."""

    pool: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _held_out(n: int, fraction: float) -> int:
    """How many of a class's n images to hold out: round(n * fraction), keeping at least one on each side when n >= 2."""
    if n < 2 or fraction == 0:
        return 0
    return min(max(round(n * fraction), 1), n - 1)


def probe_split(labels: Sequence[int], test_fraction: float, val_fraction: float, seed: int) -> ProbeSplit:
    """The seeded, per-class split of the labelled set (see the module docstring)."""
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pool, val, test = [], [], []
    for cls in np.unique(labels_arr):
        members = rng.permutation(np.flatnonzero(labels_arr == cls))
        n_test = _held_out(len(members), test_fraction)
        rest = members[n_test:]
        n_val = _held_out(len(rest), val_fraction)
        test += members[:n_test].tolist()
        val += rest[:n_val].tolist()
        pool += rest[n_val:].tolist()
    return ProbeSplit(np.sort(np.asarray(pool, int)), np.sort(np.asarray(val, int)), np.sort(np.asarray(test, int)))


def shot_order(labels: Sequence[int], pool: np.ndarray, seed: int | Sequence[int]) -> dict[int, np.ndarray]:
    """Per class, its pool images in a seeded order; k shots are the first k."""
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    return {int(c): rng.permutation(pool[labels_arr[pool] == c]) for c in np.unique(labels_arr[pool])}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        # A separable few-shot problem at large C has no finite optimum: lbfgs stops at max_iter with
        # weights that already separate the shots, and C's sweep on probe-val judges the result.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        return LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(x, y)


def _val_score(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, -log loss) on probe-val; labels the model never saw count as misses with probability 0."""
    proba = model.predict_proba(x)
    column = {int(c): i for i, c in enumerate(model.classes_)}
    p_true = np.array([proba[i, column[int(t)]] if int(t) in column else 0.0 for i, t in enumerate(y)])
    accuracy = float((model.classes_[proba.argmax(1)] == y).mean())
    return accuracy, float(np.log(np.maximum(p_true, 1e-12)).mean())


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              c_values: Sequence[float]) -> tuple[Any, float]:
    """The probe with the C of best probe-val accuracy (ties: lower log loss, then smaller C), and that C.

    Without probe-val images the middle of `c_values` is used.
    """
    if len(y_val) == 0:
        c = sorted(c_values)[len(c_values) // 2]
        return _fit(x_train, y_train, c), c
    best: tuple[tuple[float, float], Any, float] | None = None
    for c in sorted(c_values):
        model = _fit(x_train, y_train, c)
        score = _val_score(model, x_val, y_val)
        if best is None or score > best[0]:
            best = (score, model, c)
    assert best is not None
    return best[1], best[2]


def _test_metrics(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = model.predict(x)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {"acc1": float((pred == y).mean()), "mean_per_class_recall": float(np.mean(recalls))}


def linear_probe(features: np.ndarray, labels: Sequence[int], cfg: LinearProbeConfig) -> dict[str, Any]:
    """Few-shot and full-data linear probes of one model's image features; the record written to linear_probe.json.

    {"split": {...}, "shots": {"k": {"acc1_mean", "acc1_std", "runs": [...]} or {"skipped": reason}},
     "full": {"acc1", "mean_per_class_recall", "C", "n_train"}}, or {"skipped": reason}.
    """
    x = _normalise(np.asarray(features, np.float64))
    y = np.asarray(labels, dtype=np.int64)
    split = probe_split(y, cfg.test_fraction, cfg.val_fraction, cfg.split_seed)
    record: dict[str, Any] = {
        "split": {"pool": len(split.pool), "val": len(split.val), "test": len(split.test), "seed": cfg.split_seed,
                  "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction},
        "c_values": list(cfg.c_values),
    }
    if len(np.unique(y[split.pool])) < 2 or len(split.test) == 0:
        return {**record, "skipped": "a linear probe needs two classes with at least two images each"}

    orders = [shot_order(y, split.pool, (cfg.split_seed, s)) for s in range(cfg.seeds)]
    smallest = min(len(v) for v in orders[0].values())
    record["shots"] = {}
    for k in cfg.shots:
        if k > smallest:
            scarce = {c: len(v) for c, v in orders[0].items() if len(v) < k}
            record["shots"][str(k)] = {"skipped": f"{k} shots per class, but the pool of class(es) {scarce} holds fewer"}
            continue
        runs = []
        for s, order in enumerate(orders):
            train = np.concatenate([idx[:k] for idx in order.values()])
            model, c = fit_probe(x[train], y[train], x[split.val], y[split.val], cfg.c_values)
            runs.append({"seed": s, "C": c, **_test_metrics(model, x[split.test], y[split.test])})
        accs = np.array([r["acc1"] for r in runs])
        record["shots"][str(k)] = {"acc1_mean": float(accs.mean()), "acc1_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                                   "runs": runs}
        if all(len(v) == k for v in orders[0].values()):
            record["shots"][str(k)]["note"] = f"every class's pool holds exactly {k} images: all seeds train on the same shots"

    _, c = fit_probe(x[split.pool], y[split.pool], x[split.val], y[split.val], cfg.c_values)
    train = np.concatenate([split.pool, split.val])
    full = _fit(x[train], y[train], c)
    record["full"] = {"C": c, "n_train": len(train), **_test_metrics(full, x[split.test], y[split.test])}
    return record


def probe_summary(record: dict[str, Any]) -> dict[str, float]:
    """metrics.json's compact view: mean acc1 per k ("k1", ...) and full-data acc1; skipped parts are left out."""
    if "skipped" in record:
        return {}
    out = {f"k{k}": v["acc1_mean"] for k, v in record["shots"].items() if "acc1_mean" in v}
    out["full"] = record["full"]["acc1"]
    return {k: v for k, v in out.items() if not math.isnan(v)}
