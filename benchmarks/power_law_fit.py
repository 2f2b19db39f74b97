"""Power-law fits per second: variable projection (pipelines.scaling.fit) against multi-start least squares.

The scaling report refits the power law err(N) = c + a * N^(-b) in every bootstrap replicate (per
metric, per quality level), so the fit's cost is the report's. Baseline: the naive way the fit was
done before, scipy's bounded `least_squares` (trf) from four starting exponents, best cost kept.
Both fit the same noisy curves (8 sizes x 2 seeds), interleaved in one process; medians of
`--repeats` timings. Also checks that the profiled fit's squared error is never worse.

Usage: python benchmarks/power_law_fit.py [--fits 100] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from scipy.optimize import least_squares

from pipelines.scaling.fit import B_MAX, fit_power_law


def multistart_least_squares(n: np.ndarray, metric: np.ndarray) -> dict[str, float]:
    """The baseline: bounded trf least squares from b0 in (0.1, 0.5, 1, 2)."""
    err = 1.0 - metric
    n_ref = float(np.exp(np.mean(np.log(n))))
    x = n / n_ref
    best = None
    for b0 in (0.1, 0.5, 1.0, 2.0):
        c0 = max(0.0, min(float(err.min()) * 0.5, 1.0))
        a0 = max(float(np.mean(err)) - c0, 1e-3)
        res = least_squares(lambda p: p[2] + p[0] * np.power(x, -p[1]) - err, x0=[a0, b0, c0],
                            bounds=([0.0, 0.0, 0.0], [np.inf, B_MAX, 1.0]), method="trf")
        if best is None or res.cost < best.cost:
            best = res
    a_ref, b, c = (float(v) for v in best.x)
    return {"a": a_ref * n_ref**b, "b": b, "c": c}


def sse(params: dict[str, float], n: np.ndarray, metric: np.ndarray) -> float:
    """Squared error of a fit on the data."""
    return float(np.sum((1 - metric - (params["c"] + params["a"] * n ** -params["b"])) ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fits", type=int, default=100, help="curves per timing")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = np.repeat(np.array([100, 200, 400, 800, 1600, 3200, 6400, 12800], dtype=float), 2)
    curves = []
    for _ in range(args.fits):
        a, b, c = rng.uniform(1, 5), rng.uniform(0.2, 1.0), rng.uniform(0.05, 0.4)
        curves.append(1 - (c + a * sizes**-b) + rng.normal(0, 0.01, len(sizes)))
    times: dict[str, list[float]] = {"variable_projection": [], "multistart_least_squares": []}
    worse = 0
    for _ in range(args.repeats):  # interleaved
        for name, fn in (("multistart_least_squares", multistart_least_squares), ("variable_projection", fit_power_law)):
            start = time.perf_counter()
            fits = [fn(sizes, m) for m in curves]
            times[name].append(time.perf_counter() - start)
            if name == "variable_projection":
                ours = fits
            else:
                theirs = fits
        worse += sum(sse(o, sizes, m) > sse(t, sizes, m) + 1e-12 for o, t, m in zip(ours, theirs, curves))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "fits_per_timing": args.fits, "repeats": args.repeats,
        "median_seconds": med,
        "fits_per_second": {k: args.fits / v for k, v in med.items()},
        "speedup_vs_multistart_least_squares": med["multistart_least_squares"] / med["variable_projection"],
        "fits_with_higher_squared_error_than_baseline": worse,
    }, indent=2))


if __name__ == "__main__":
    main()
