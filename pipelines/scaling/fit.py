"""Data-scaling-law fits: how a metric grows with the number of training pairs N.

Two curve families, both fitted to one point per run (every seed at every size):
- `power_law`: a saturating power law for the error, err(N) = c + a * N^(-b), by bounded non-linear
  least squares (a >= 0, 0 <= b <= 3, 0 <= c <= 1: an error rate cannot leave [0, 1]);
- `log_linear`: the metric itself, m(N) = alpha + beta * ln N, by ordinary least squares.

Every fit carries its parameters with 95% bootstrap intervals, R^2 and an extrapolation check (fit
without the largest size, predict it). The family with the smaller extrapolation error is the one
`select` picks, since the point of the curve is to predict beyond the data we have.

Intervals come from a bootstrap that, in each replicate, resamples the seeds (a seed is one nested
chain of subsets, so it is the independent unit) and, where runs saved per-example results on a
shared evaluation set, also resamples the evaluation examples (the same indices for every run, as
the runs are paired on that set) and recomputes each run's metric from them.

Degenerate inputs (fewer than 3 sizes, a constant metric, non-finite values) raise `FitRefused`
with the reason; callers record that message instead of drawing a curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.optimize import least_squares

FAMILIES = ("power_law", "log_linear")
MIN_SIZES = 3
B_MAX = 3.0  # beyond N^-3 a "scaling law" is a step function; bounding b keeps the fit well posed


class FitRefused(ValueError):
    """The data cannot support this fit; the message says why."""


# ---------------------------------------------------------------- per-example statistics


def accuracy(correct: np.ndarray, labels: Optional[np.ndarray]) -> np.ndarray:
    """Per-run accuracy from a runs x examples 0/1 matrix."""
    return correct.mean(axis=1)


def balanced_accuracy(correct: np.ndarray, labels: Optional[np.ndarray]) -> np.ndarray:
    """Per-run mean per-class recall (classes absent from the resample are skipped, as in metrics.py)."""
    if labels is None:
        raise ValueError("balanced accuracy needs the example labels")
    recalls = [correct[:, labels == k].mean(axis=1) for k in np.unique(labels)]
    return np.mean(recalls, axis=0)


PerExampleStatistic = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]


@dataclass
class Observations:
    """One row per run: pairs used, seed, metric (higher is better, in [0, 1]).

    `per_example` (runs x examples) and `labels` (examples), when given, let the bootstrap
    resample evaluation examples; `statistic` turns a resampled matrix back into per-run metrics.
    """

    n: np.ndarray
    seed: np.ndarray
    value: np.ndarray
    per_example: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    statistic: Optional[PerExampleStatistic] = None

    def __post_init__(self) -> None:
        self.n = np.asarray(self.n, dtype=float)
        self.seed = np.asarray(self.seed)
        self.value = np.asarray(self.value, dtype=float)
        if not (len(self.n) == len(self.seed) == len(self.value)):
            raise ValueError("n, seed and value must have the same length")
        if self.per_example is not None:
            self.per_example = np.asarray(self.per_example, dtype=float)
            if self.per_example.shape[0] != len(self.n):
                raise ValueError("per_example needs one row per run")

    def subset(self, mask: np.ndarray) -> "Observations":
        """The runs selected by boolean `mask` (per-example rows with them; labels and statistic shared)."""
        pe = self.per_example[mask] if self.per_example is not None else None
        return Observations(self.n[mask], self.seed[mask], self.value[mask], pe, self.labels, self.statistic)


# ---------------------------------------------------------------- the two families


def check_points(n: np.ndarray, y: np.ndarray) -> None:
    """Refuse data no curve should be drawn through."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(y))):
        raise FitRefused("non-finite sizes or metric values")
    if np.any(n <= 0):
        raise FitRefused("sizes must be positive")
    sizes = len(np.unique(n))
    if sizes < MIN_SIZES:
        raise FitRefused(f"only {sizes} distinct data size(s); a scaling fit needs at least {MIN_SIZES}")
    if np.ptp(y) <= 1e-12:
        raise FitRefused(f"the metric is constant ({y[0]:.4g}) across sizes: nothing to fit")


def _power_law_error(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    a, b, c = params
    return c + a * np.power(x, -b)


def fit_power_law(n: Sequence[float], metric: Sequence[float]) -> dict[str, float]:
    """Err = 1 - metric = c + a * N^(-b); returns {a, b, c} with a in units of pairs."""
    n, m = np.asarray(n, dtype=float), np.asarray(metric, dtype=float)
    check_points(n, m)
    err = 1.0 - m
    # Fit on N / n_ref so `a` is of order one whatever the scale of N, then convert back.
    n_ref = float(np.exp(np.mean(np.log(n))))
    x = n / n_ref
    best = None
    for b0 in (0.1, 0.5, 1.0, 2.0):  # a few starts: the loss surface is not convex in b
        c0 = max(0.0, min(float(err.min()) * 0.5, 1.0))
        a0 = max(float(np.mean(err)) - c0, 1e-3)
        res = least_squares(
            lambda p: _power_law_error(p, x) - err,
            x0=[a0, b0, c0],
            bounds=([0.0, 0.0, 0.0], [np.inf, B_MAX, 1.0]),
            method="trf",
        )
        if best is None or res.cost < best.cost:
            best = res
    a_ref, b, c = (float(v) for v in best.x)  # type: ignore[union-attr]
    return {"a": a_ref * n_ref**b, "b": b, "c": c}


def fit_log_linear(n: Sequence[float], metric: Sequence[float]) -> dict[str, float]:
    """Metric = alpha + beta * ln N by least squares."""
    n, m = np.asarray(n, dtype=float), np.asarray(metric, dtype=float)
    check_points(n, m)
    beta, alpha = np.polyfit(np.log(n), m, 1)
    return {"alpha": float(alpha), "beta": float(beta)}


def predict(family: str, params: dict[str, float], n: np.ndarray | float) -> np.ndarray:
    """The metric (not the error) the family predicts at N pairs."""
    n = np.asarray(n, dtype=float)
    if family == "power_law":
        return 1.0 - (params["c"] + params["a"] * np.power(n, -params["b"]))
    if family == "log_linear":
        return params["alpha"] + params["beta"] * np.log(n)
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def pairs_needed(family: str, params: dict[str, float], target: float) -> float:
    """N at which the fitted curve reaches metric `target`; inf when the fit never reaches it.

    Power law: the error's asymptote c bounds the metric at 1 - c, so a target at or above it is
    unreachable. Log-linear: unbounded in N, but a metric above 1 is still unreachable.
    """
    if family == "power_law":
        a, b, c = params["a"], params["b"], params["c"]
        err = 1.0 - target
        if err <= c:
            return math.inf
        if a <= 0 or b <= 0:  # a flat curve: reached from the first pair or never
            return 1.0 if c + a <= err else math.inf
        return float((a / (err - c)) ** (1.0 / b))
    if family == "log_linear":
        alpha, beta = params["alpha"], params["beta"]
        if target > 1.0 or beta <= 0:
            return math.inf
        exponent = (target - alpha) / beta
        return float(math.exp(exponent)) if exponent < 700 else math.inf
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


FITTERS: dict[str, Callable[[Sequence[float], Sequence[float]], dict[str, float]]] = {
    "power_law": fit_power_law,
    "log_linear": fit_log_linear,
}


def r_squared(y: np.ndarray, yhat: np.ndarray) -> float:
    """Coefficient of determination of `yhat` for `y`; NaN when `y` is constant."""
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


# ---------------------------------------------------------------- fit with intervals


@dataclass
class Extrapolation:
    """A fit without the largest size, compared with the observed metric at that size."""

    held_out_n: float
    observed: float  # mean metric over the seeds at the held-out size
    predicted: float
    abs_error: float


@dataclass
class FamilyFit:
    """One curve family fitted to the runs: parameters, intervals, R^2, extrapolation check, or why it was refused."""

    family: str
    params: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    r2: float = float("nan")
    extrapolation: Optional[Extrapolation] = None
    extrapolation_refused: Optional[str] = None  # why there is no extrapolation check
    refused: Optional[str] = None  # why there is no fit at all
    boot_params: list[dict[str, float]] = field(default_factory=list)  # successful replicates
    n_boot_failed: int = 0

    @property
    def ok(self) -> bool:
        """Whether the family could be fitted at all."""
        return self.refused is None

    def band(self, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise interval of the predicted metric over the bootstrap replicates."""
        if not self.boot_params:
            central = predict(self.family, self.params, n)
            return central, central
        preds = np.array([predict(self.family, p, n) for p in self.boot_params])
        lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
        return np.percentile(preds, lo, axis=0), np.percentile(preds, hi, axis=0)


@dataclass
class DataNeed:
    """The number of pairs at which a fitted curve reaches metric `target`, with a bootstrap interval."""

    target: float
    family: str
    n_pairs: float  # inf: not reachable under this fit
    interval: tuple[float, float]  # upper inf when some replicates never reach the target
    reachable: bool


def extrapolation_check(family: str, obs: Observations) -> Extrapolation:
    """Fit without the largest size, predict the mean metric there."""
    largest = float(np.max(obs.n))
    keep = obs.n < largest
    if len(np.unique(obs.n[keep])) < MIN_SIZES:
        raise FitRefused(f"the extrapolation check needs at least {MIN_SIZES + 1} sizes")
    params = FITTERS[family](obs.n[keep], obs.value[keep])
    observed = float(np.mean(obs.value[~keep]))
    predicted = float(predict(family, params, largest))
    return Extrapolation(largest, observed, predicted, abs(predicted - observed))


def bootstrap_samples(obs: Observations, n_boot: int, seed: int) -> list[Observations]:
    """Replicates resampling seeds and, where available, evaluation examples."""
    rng = np.random.default_rng(seed)
    seeds = np.unique(obs.seed)
    out = []
    for _ in range(n_boot):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        rows = np.concatenate([np.flatnonzero(obs.seed == s) for s in drawn])
        value = obs.value[rows]
        if obs.per_example is not None and obs.statistic is not None:
            idx = rng.integers(0, obs.per_example.shape[1], size=obs.per_example.shape[1])
            labels = obs.labels[idx] if obs.labels is not None else None
            value = obs.statistic(obs.per_example[rows][:, idx], labels)
        out.append(Observations(obs.n[rows], obs.seed[rows], value))
    return out


def fit_family(family: str, obs: Observations, replicates: Sequence[Observations], level: float = 0.95) -> FamilyFit:
    """Point fit, R^2, extrapolation check and percentile intervals from `replicates`."""
    result = FamilyFit(family)
    try:
        result.params = FITTERS[family](obs.n, obs.value)
    except FitRefused as exc:
        result.refused = str(exc)
        return result
    result.r2 = r_squared(obs.value, predict(family, result.params, obs.n))
    try:
        result.extrapolation = extrapolation_check(family, obs)
    except FitRefused as exc:
        result.extrapolation_refused = str(exc)
    for rep in replicates:
        try:
            result.boot_params.append(FITTERS[family](rep.n, rep.value))
        except FitRefused:
            result.n_boot_failed += 1  # e.g. every drawn run tied: that replicate has no curve
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    for name in result.params:
        values = np.array([p[name] for p in result.boot_params])
        result.intervals[name] = (
            (float(np.percentile(values, lo)), float(np.percentile(values, hi))) if len(values) else (math.nan, math.nan)
        )
    return result


def select(fits: dict[str, FamilyFit]) -> Optional[str]:
    """The family with the smallest extrapolation error; without checks, the best R^2."""
    usable = {k: f for k, f in fits.items() if f.ok}
    if not usable:
        return None
    checked = {k: f for k, f in usable.items() if f.extrapolation is not None}
    if checked:
        return min(checked, key=lambda k: checked[k].extrapolation.abs_error)  # type: ignore[union-attr]
    return max(usable, key=lambda k: -math.inf if math.isnan(usable[k].r2) else usable[k].r2)


def data_need(fit: FamilyFit, target: float, level: float = 0.95) -> DataNeed:
    """Pairs needed to reach `target` under `fit`, with a bootstrap interval."""
    point = pairs_needed(fit.family, fit.params, target)
    boot = np.array([pairs_needed(fit.family, p, target) for p in fit.boot_params]) if fit.boot_params else np.array([point])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    # Order statistics, not interpolation, so inf survives: an upper bound of inf means "possibly
    # never" at this level.
    interval = (float(np.percentile(boot, lo, method="lower")), float(np.percentile(boot, hi, method="higher")))
    return DataNeed(target, fit.family, point, interval, math.isfinite(point))


@dataclass
class ScalingFit:
    """Every family's fit of one metric, the family selected and the data needs under it."""

    metric: str
    fits: dict[str, FamilyFit]
    selected: Optional[str]
    needs: list[DataNeed]
    refused: Optional[str] = None  # set when no family could be fitted


def fit_scaling(
    obs: Observations,
    metric: str,
    targets: Sequence[float] = (),
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> ScalingFit:
    """Both families with intervals and extrapolation checks, the selected one, and data needs."""
    replicates = bootstrap_samples(obs, n_boot, seed)
    fits = {family: fit_family(family, obs, replicates, level) for family in FAMILIES}
    chosen = select(fits)
    if chosen is None:
        return ScalingFit(metric, fits, None, [], refused=fits["power_law"].refused)
    needs = [data_need(fits[chosen], float(t), level) for t in targets]
    return ScalingFit(metric, fits, chosen, needs)
