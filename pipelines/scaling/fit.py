"""Data-scaling-law fits: how a metric grows with the number of training pairs N.

Two curve families, both fitted to one point per run (every seed at every size):
- `power_law`: a saturating power law for the error, err(N) = c + a * N^(-b), by bounded least
  squares (a >= 0, 0 <= b <= 3, 0 <= c <= 1: an error rate cannot leave [0, 1]), profiled over b;
- `log_linear`: the metric itself, m(N) = alpha + beta * ln N, by ordinary least squares.

Every fit carries its parameters with 95% bootstrap intervals, R^2 and an extrapolation check (fit
without the largest size, predict it). The family with the smaller extrapolation error is the one
`select` picks, since the point of the curve is to predict beyond the data we have.

Intervals come from a bootstrap that, in each replicate, resamples the seeds (a seed is one nested
chain of subsets, so it is the independent unit) and, where runs saved per-example results on a
shared evaluation set (`PerExample`), also resamples the evaluation examples by unit (an image, a
query's image, a patient's studies; the same draw for every run, as the runs are paired on that
set) and recomputes each run's metric from them with the metric's own statistic (accuracy,
balanced accuracy, mean recall from first-hit ranks, macro AUROC, macro F1). With one seed the
interval is the evaluation set's sampling noise alone.

Degenerate inputs (fewer than 3 sizes, a constant metric, non-finite values) raise `FitRefused`
with the reason; callers record that message instead of drawing a curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata

FAMILIES = ("power_law", "log_linear")
MIN_SIZES = 3
B_MAX = 3.0  # beyond N^-3 a "scaling law" is a step function; bounding b keeps the fit well posed


class FitRefused(ValueError):
    """The data cannot support this fit; the message says why."""


# ---------------------------------------------------------------- per-example outcomes


# (runs x examples [x ...] outcomes, the resampled example indices) -> one metric per run
PerExampleStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class PerExample:
    """Every run's outcome on each example of a shared evaluation set, and how to score them.

    `values` has one row per run and one column per example (trailing axes are the statistic's
    business: a study's phenotypes, say). `statistic(values[:, idx], idx)` gives each run's metric
    on the examples `idx` (with repeats); it must reproduce the run's recorded metric for
    idx = all examples. `clusters` names each example's resampling unit (the image a caption
    belongs to, the patient of a study); None: every example is its own unit.
    """

    values: np.ndarray
    statistic: PerExampleStatistic
    clusters: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float)
        if self.values.ndim < 2 or self.values.shape[1] == 0:
            raise ValueError(f"per-example values must be runs x examples (x ...), got shape {self.values.shape}")
        if self.clusters is not None:
            self.clusters = np.asarray(self.clusters)
            if self.clusters.shape != (self.values.shape[1],):
                raise ValueError(f"{len(self.clusters)} cluster ids for {self.values.shape[1]} examples")

    @property
    def n_examples(self) -> int:
        """Examples in the shared evaluation set."""
        return int(self.values.shape[1])

    def units(self) -> list[np.ndarray]:
        """The example indices of each resampling unit."""
        if self.clusters is None:
            return [np.array([i]) for i in range(self.n_examples)]
        _, inverse = np.unique(self.clusters, return_inverse=True)
        return [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)]

    def rows(self, rows: np.ndarray) -> "PerExample":
        """The same examples for the runs `rows` (an index array or boolean mask)."""
        return PerExample(self.values[rows], self.statistic, self.clusters)


def resample_examples(units: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Example indices of one bootstrap draw: as many units as there are, with replacement, all their examples."""
    drawn = rng.integers(0, len(units), size=len(units))
    return np.concatenate([units[k] for k in drawn])


def accuracy() -> PerExampleStatistic:
    """Share correct, from a runs x examples 0/1 matrix."""
    return lambda correct, idx: correct.mean(axis=1)


def balanced_accuracy(labels: np.ndarray) -> PerExampleStatistic:
    """Mean per-class recall (classes absent from the resample are skipped, as in metrics.py)."""
    labels = np.asarray(labels)

    def statistic(correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
        drawn = labels[idx]
        return np.mean([correct[:, drawn == k].mean(axis=1) for k in np.unique(drawn)], axis=0)

    return statistic


def mean_recall(direction: np.ndarray, ks: Sequence[int]) -> PerExampleStatistic:
    """Mean of recall@k over `ks` and both retrieval directions, from runs x queries first-hit ranks.

    `direction[q]` tells which direction query q belongs to (e.g. image->text, text->image);
    recall@k of a direction is the share of its queries whose first correct item ranks <= k, so
    the mean over every (direction, k) is retrieval_metrics' mean_recall.
    """
    direction = np.asarray(direction)

    def statistic(ranks: np.ndarray, idx: np.ndarray) -> np.ndarray:
        drawn = direction[idx]
        recalls = [(ranks[:, drawn == d] <= k).mean(axis=1) for d in np.unique(drawn) for k in ks]
        return np.mean(recalls, axis=0)

    return statistic


def mean_hit_recall(direction: np.ndarray) -> PerExampleStatistic:
    """Mean of recall@k over every k and both retrieval directions, from runs x queries x ks hits (0/1).

    `direction[q]` as in `mean_recall`; hits[:, q, j] is whether recall@ks[j] counts query q
    (`pipelines.evaluate.metrics.retrieval_hits`), so the mean over every (direction, k) is
    retrieval_metrics' mean_recall exactly, tied scores included.
    """
    direction = np.asarray(direction)

    def statistic(hits: np.ndarray, idx: np.ndarray) -> np.ndarray:
        drawn = direction[idx]
        recalls = [hits[:, drawn == d, j].mean(axis=1) for d in np.unique(drawn) for j in range(hits.shape[2])]
        return np.mean(recalls, axis=0)

    return statistic


def _auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each row of `scores` (runs x examples) for one shared 0/1 label vector; NaN with one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[0], np.nan)
    ranks = rankdata(scores, axis=1)  # ties get their average rank: the Mann-Whitney U with ties counted half
    return (ranks[:, positive].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def macro_auroc(targets: np.ndarray) -> PerExampleStatistic:
    """Mean AUROC over labels, from runs x examples x labels scores and examples x labels 0/1 `targets`.

    Labels with one class only in the full set are left out (as evaluate does), and so are those
    with one class in a resample.
    """
    targets = np.asarray(targets).astype(bool)
    kept = [j for j in range(targets.shape[1]) if 0 < targets[:, j].sum() < targets.shape[0]]

    def statistic(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        drawn = targets[idx]
        per = np.array([_auroc_rows(scores[:, :, j], drawn[:, j]) for j in kept])  # labels x runs
        return np.nanmean(per, axis=0) if len(per) else np.full(scores.shape[0], np.nan)

    return statistic


def macro_f1(labels: np.ndarray) -> PerExampleStatistic:
    """Mean F1 over labels, from runs x examples x labels 0/1 predictions and examples x labels 1/0/-1 `labels`.

    -1 (unknown) is ignored; a label with no known example in the draw is left out; F1 is 0 when
    there are no true positives, false positives or false negatives (as evaluate's f1_binary).
    """
    labels = np.asarray(labels, dtype=int)

    def statistic(predicted: np.ndarray, idx: np.ndarray) -> np.ndarray:
        drawn = labels[idx]
        per = []
        for j in range(drawn.shape[1]):
            known = drawn[:, j] >= 0
            if not known.any():
                continue
            pred, truth = predicted[:, known, j] > 0.5, drawn[known, j] == 1
            tp = (pred & truth).sum(axis=1)
            fp = (pred & ~truth).sum(axis=1)
            fn = (~pred & truth).sum(axis=1)
            denom = 2 * tp + fp + fn
            per.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        return np.mean(per, axis=0) if per else np.full(predicted.shape[0], np.nan)

    return statistic


def example_interval(examples: PerExample, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """Each run's metric with a percentile interval over resampled examples: runs x (point, low, high)."""
    rng = np.random.default_rng(seed)
    units = examples.units()
    point = examples.statistic(examples.values, np.arange(examples.n_examples))
    draws = np.array([examples.statistic(examples.values[:, idx], idx)
                      for idx in (resample_examples(units, rng) for _ in range(n_boot))])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return np.column_stack([point, np.nanpercentile(draws, lo, axis=0), np.nanpercentile(draws, hi, axis=0)])


@dataclass
class Observations:
    """One row per run: pairs used, seed, metric (higher is better, in [0, 1]).

    `examples`, when given, holds every run's per-example outcomes on the shared evaluation set,
    so the bootstrap can resample evaluation examples as well as seeds.
    """

    n: np.ndarray
    seed: np.ndarray
    value: np.ndarray
    examples: Optional[PerExample] = None

    def __post_init__(self) -> None:
        self.n = np.asarray(self.n, dtype=float)
        self.seed = np.asarray(self.seed)
        self.value = np.asarray(self.value, dtype=float)
        if not (len(self.n) == len(self.seed) == len(self.value)):
            raise ValueError("n, seed and value must have the same length")
        if self.examples is not None and self.examples.values.shape[0] != len(self.n):
            raise ValueError("per-example values need one row per run")

    def subset(self, mask: np.ndarray) -> "Observations":
        """The runs selected by boolean `mask` (their per-example rows with them)."""
        examples = self.examples.rows(mask) if self.examples is not None else None
        return Observations(self.n[mask], self.seed[mask], self.value[mask], examples)


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


B_GRID = np.linspace(0.0, B_MAX, 121)  # the profile over b is scanned here, then refined


def _best_a_c(xb: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of `xb` (= x^-b for one b), the least-squares a >= 0, 0 <= c <= 1 of err ~ c + a * xb, and its SSE.

    A convex quadratic in two variables with box constraints: its minimum is the unconstrained
    one when feasible, else the best of the minima along the edges (a = 0; c = 0; c = 1), each a
    one-variable problem solved in closed form and clipped.
    """
    mx, me = xb.mean(axis=1), err.mean()
    dx = xb - mx[:, None]
    var = (dx**2).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_free = np.where(var > 1e-15, (dx * (err - me)).mean(axis=1) / var, 0.0)
        sxx = (xb**2).sum(axis=1)
        a_c0 = np.maximum(0.0, (xb * err).sum(axis=1) / sxx)
        a_c1 = np.maximum(0.0, (xb * (err - 1.0)).sum(axis=1) / sxx)
    zeros = np.zeros(len(xb))
    candidates = [
        (a_free, me - a_free * mx),
        (zeros, np.full(len(xb), min(max(me, 0.0), 1.0))),
        (a_c0, zeros),
        (a_c1, np.ones(len(xb))),
    ]
    best_a, best_c, best_sse = zeros.copy(), zeros.copy(), np.full(len(xb), np.inf)
    for a, c in candidates:
        feasible = (a >= 0) & (c >= 0) & (c <= 1) & np.isfinite(a) & np.isfinite(c)
        sse = np.where(feasible, ((c[:, None] + a[:, None] * xb - err) ** 2).sum(axis=1), np.inf)
        better = sse < best_sse
        best_a, best_c, best_sse = np.where(better, a, best_a), np.where(better, c, best_c), np.where(better, sse, best_sse)
    return best_a, best_c, best_sse


def fit_power_law(n: Sequence[float], metric: Sequence[float]) -> dict[str, float]:
    """Err = 1 - metric = c + a * N^(-b); returns {a, b, c} with a in units of pairs.

    Variable projection: for a fixed b the model is linear in (a, c), solved exactly under the
    bounds, so only the profile SSE(b) is searched (a grid over [0, B_MAX], then a bounded scalar
    minimisation around the best grid point). The search is global in b, and ~10x faster
    than multi-start non-linear least squares (benchmarks/power_law_fit.py): it runs in every bootstrap replicate.
    """
    n, m = np.asarray(n, dtype=float), np.asarray(metric, dtype=float)
    check_points(n, m)
    err = 1.0 - m
    # Fit on N / n_ref so `a` is of order one whatever the scale of N, then convert back.
    n_ref = float(np.exp(np.mean(np.log(n))))
    x = n / n_ref

    def profile(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _best_a_c(np.power(x[None, :], -np.atleast_1d(b)[:, None]), err)

    sse = profile(B_GRID)[2]
    i = int(np.argmin(sse))
    lo, hi = B_GRID[max(i - 1, 0)], B_GRID[min(i + 1, len(B_GRID) - 1)]
    res = minimize_scalar(lambda b: float(profile(np.array([b]))[2][0]), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-7})
    b = float(res.x) if res.fun <= sse[i] else float(B_GRID[i])
    a_ref, c, _ = (float(v[0]) for v in profile(np.array([b])))
    if a_ref * float(np.max(np.power(x, -b))) <= 1e-9:
        # a = 0: the best curve is a constant (the error does not fall with N) and b could be anything
        raise FitRefused("the best power law is flat (the error does not fall with N): it has no exponent")
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
        log_n = (math.log(a) - math.log(err - c)) / b  # in logs: a nearly flat curve (b -> 0) needs astronomically many
        return float(math.exp(log_n)) if log_n < 700 else math.inf
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
    """Replicates resampling seeds and, where per-example outcomes exist, evaluation examples.

    Seeds are drawn with replacement (every run of a drawn seed comes along). Examples are drawn
    by unit (`PerExample.clusters`) with replacement, the same draw for every run of a replicate,
    since all runs are scored on the same set; each run's metric is then recomputed from them.
    """
    rng = np.random.default_rng(seed)
    seeds = np.unique(obs.seed)
    units = obs.examples.units() if obs.examples is not None else []
    out = []
    for _ in range(n_boot):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        rows = np.concatenate([np.flatnonzero(obs.seed == s) for s in drawn])
        value = obs.value[rows]
        if obs.examples is not None:
            idx = resample_examples(units, rng)
            value = obs.examples.statistic(obs.examples.values[rows][:, idx], idx)
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
