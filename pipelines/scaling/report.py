"""The data-scaling report of one domain, from the sweep's run folders.

Reads every `run.json` under RUNS (written by `pipelines.scaling.sweep`), fits each metric's curve
(`pipelines.scaling.fit`) on the unfiltered runs, fits one power law per quality level (the share
of pairs kept by image-caption score; 1.0 = unfiltered) so filtered and random data compare as
curves, estimates the pairs needed for the targets in `<domain>.scaling.targets`, relates concept
frequency in the training captions to per-class zero-shot accuracy (`pipelines.scaling.concepts`),
and writes into OUT:

- scaling.md and a self-contained scaling.html (plots embedded as base64 PNG);
- plots/scaling_<metric>.png, plots/quality_<metric>.png, plots/concepts.png: the plots as files;
- scaling.csv: one row per run (fraction, quality_keep, n_pairs, seed, each metric with its
  interval over evaluation examples) for `dvc plots`;
- quality_fits.csv: per metric and quality level, the power law's exponent b with its interval, a,
  c, R² and the runs it rests on; quality_curves.csv: each fitted curve and band on a grid of N;
- concepts.csv: classname, mentions, accuracy (header only when the domain has no per-class
  zero-shot accuracies); fits.json: every number of the tables.

Intervals: see pipelines/scaling/fit.py. Runs that saved per-example outcomes
(pipelines/scaling/examples.py) are bootstrapped over evaluation examples, by unit, and over seeds.

`index_command` writes REPORTS/index.html linking every domain's scaling.html.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer

from pipelines.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.io.manifest import read_manifest
from pipelines.params import build, load_params, section
from pipelines.scaling import examples as E
from pipelines.scaling.concepts import ConceptFit, count_mentions, fit_concept_frequency, long_tail
from pipelines.scaling.config import DomainScalingConfig, ScalingConfig
from pipelines.scaling.fit import (
    FamilyFit,
    FitRefused,
    Observations,
    ScalingFit,
    bootstrap_samples,
    example_interval,
    fit_family,
    fit_scaling,
    predict,
)

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Metric:
    """Where a scaling metric is in a run's metrics.json, and how its per-example outcomes are read."""

    task: str
    key: str
    examples: E.ExampleReader
    unit: str  # what one bootstrap draw of the evaluation set resamples


METRICS: dict[str, Metric] = {
    "zeroshot/acc1": Metric("zeroshot", "acc1", E.zeroshot_examples(False), "zero-shot images"),
    "zeroshot/mean_per_class_recall": Metric("zeroshot", "mean_per_class_recall", E.zeroshot_examples(True), "zero-shot images"),
    "retrieval/mean_recall": Metric("retrieval", "mean_recall", E.retrieval_examples, "retrieval images, each with its captions"),
    "phenotypes/macro_auroc": Metric("phenotypes", "macro_auroc", E.phenotype_examples, "patients, each with their test studies"),
    "zeroshot/macro_f1": Metric("zeroshot", "macro_f1", E.findings_examples, "patients, each with their test studies"),
}
DEFAULT_METRICS = ("zeroshot/acc1", "zeroshot/mean_per_class_recall", "retrieval/mean_recall")
CONSISTENCY_TOLERANCE = 1e-6  # the per-example statistic must give back each run's recorded metric


# ---------------------------------------------------------------- reading the runs


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run: run.json's fields, adapted and base metrics, and the run folder."""
    rows = []
    for run_json in sorted(Path(runs_dir).rglob("run.json")):
        run = json.loads(run_json.read_text())
        metrics = json.loads((run_json.parent / "metrics.json").read_text())
        row = {k: run[k] for k in ("fraction", "seed", "quality_keep", "n_pairs")}
        row["run_dir"] = str(run_json.parent)
        for name, spec in METRICS.items():
            row[name] = metrics.get("adapted", {}).get(spec.task, {}).get(spec.key, math.nan)
            row[f"base:{name}"] = metrics.get("base", {}).get(spec.task, {}).get(spec.key, math.nan)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no run.json under {runs_dir}: run the scaling sweep first")
    return pd.DataFrame(rows).sort_values(["quality_keep", "fraction", "seed"], ignore_index=True)


def quantity_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the data-fraction sweep (no quality filter)."""
    return runs[np.isclose(runs["quality_keep"], 1.0)].reset_index(drop=True)


def quality_levels(runs: pd.DataFrame) -> list[float]:
    """The quality levels swept, 1.0 (unfiltered) included, highest first."""
    return sorted({float(q) for q in runs["quality_keep"]}, reverse=True)


def observations(runs: pd.DataFrame, metric: str) -> tuple[Observations, str]:
    """Observations for one metric, with per-example outcomes where every run saved them; and how its interval is made.

    The note says what the bootstrap resamples, or why it falls back to seeds only.
    """
    spec = METRICS[metric]
    obs = Observations(runs["n_pairs"].to_numpy(), runs["seed"].to_numpy(), runs[metric].to_numpy())
    seeds = f"{runs['seed'].nunique()} seed(s)"
    examples = spec.examples([Path(d) for d in runs["run_dir"]])
    if examples is None:
        return obs, f"resampling {seeds} only (some runs saved no per-example outcomes)"
    recomputed = examples.statistic(examples.values, np.arange(examples.n_examples))
    off = np.abs(recomputed - obs.value)
    if not np.all(off <= CONSISTENCY_TOLERANCE):
        worst = int(np.nanargmax(np.where(np.isfinite(off), off, np.inf)))
        return obs, (f"resampling {seeds} only: the per-example outcomes of {runs['run_dir'].iloc[worst]} give "
                     f"{recomputed[worst]:.6g}, not its recorded {obs.value[worst]:.6g}")
    return (Observations(obs.n, obs.seed, obs.value, examples),
            f"resampling {seeds} and {len(examples.units())} {spec.unit} (the same draw for every run)")


# ---------------------------------------------------------------- concept frequency


def concept_table(runs: pd.DataFrame, data: Path, synonyms: dict[str, list[str]]) -> pd.DataFrame:
    """classname, mentions in the full training split, accuracy (mean over the full-data runs' seeds)."""
    full = runs[np.isclose(runs["fraction"], 1.0) & np.isclose(runs["quality_keep"], 1.0)]
    if full.empty:
        full = runs[runs["n_pairs"] == runs["n_pairs"].max()]
    per_class: dict[str, list[float]] = {}
    classnames: list[str] = []
    for run_dir in full["run_dir"]:
        zs = Path(run_dir) / "zeroshot_adapted.json"
        if not zs.is_file():
            continue
        record = json.loads(zs.read_text())
        classnames = classnames or list(record["classnames"])
        for name, acc in record.get("per_class", {}).items():
            if acc is not None:
                per_class.setdefault(name, []).append(float(acc))
    if not classnames:
        raise FitRefused("no zero-shot results with class names in the full-data runs")
    if not per_class:
        raise FitRefused("the zero-shot results hold no per-class accuracies (not a classification set)")
    manifest = read_manifest(data)
    train = manifest[manifest["split"] == "train"]
    texts = [
        [caption, *[v for v in variants.values() if isinstance(v, str)]]
        for caption, variants in zip(train["caption"], train["caption_variants"])
    ]
    counts = count_mentions(texts, classnames, synonyms)
    return pd.DataFrame(
        {"classname": classnames, "mentions": [counts[c] for c in classnames],
         "accuracy": [float(np.mean(per_class[c])) if c in per_class else math.nan for c in classnames]}
    )


# ---------------------------------------------------------------- plots


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure() -> tuple[Figure, Axes]:
    # Figure + Agg canvas directly, not pyplot: no global backend or state (as evaluate.py).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _points(ax: Axes, rows: pd.DataFrame, metric: str, **style: Any) -> None:
    """Runs as points, with their interval over evaluation examples as error bars where known."""
    y = rows[metric].to_numpy(dtype=float)
    lo, hi = rows.get(f"{metric}:low"), rows.get(f"{metric}:high")
    if lo is not None and hi is not None and np.isfinite(lo).all() and np.isfinite(hi).all():
        err = np.vstack([np.clip(y - lo.to_numpy(), 0, None), np.clip(hi.to_numpy() - y, 0, None)])
        ax.errorbar(rows["n_pairs"], y, yerr=err, fmt="o", ms=4, capsize=2, elinewidth=0.8, zorder=3, **style)
    else:
        ax.scatter(rows["n_pairs"], y, s=22, zorder=3, **style)


def _grid(n: pd.Series) -> np.ndarray:
    # a little beyond the data: the curve is for extrapolating
    return np.geomspace(float(n.min()) / 1.5, float(n.max()) * 4, 200)


def scaling_plot(domain: str, metric: str, quantity: pd.DataFrame, fit: Optional[ScalingFit]) -> bytes:
    """PNG of `metric` against training pairs: the unfiltered runs, the base model, and each fitted curve with its band."""
    fig, ax = _figure()
    for seed, rows in quantity.groupby("seed"):
        _points(ax, rows, metric, label=f"random subset, seed {seed}")
    base = quantity[f"base:{metric}"].dropna()
    if len(base):
        ax.axhline(float(base.iloc[0]), color="grey", lw=1, ls=":", label="base model")
    if fit is not None and fit.selected is not None:
        grid = _grid(quantity["n_pairs"])
        for family, style in (("power_law", "-"), ("log_linear", "--")):
            f = fit.fits[family]
            if not f.ok:
                continue
            chosen = family == fit.selected
            line = ax.plot(grid, predict(family, f.params, grid), ls=style, lw=2 if chosen else 1,
                           label=f"{family}{' (selected)' if chosen else ''}, R²={f.r2:.2f}")
            lo, hi = f.band(grid)
            ax.fill_between(grid, lo, hi, color=line[0].get_color(), alpha=0.2 if chosen else 0.1, lw=0)
    _finish(ax, domain, metric)
    return _png(fig)


def quality_plot(domain: str, metric: str, runs: pd.DataFrame, curves: dict[float, FamilyFit]) -> bytes:
    """PNG of `metric` against training pairs, one power law (and band) per quality level, with its runs."""
    fig, ax = _figure()
    for level in quality_levels(runs):
        rows = runs[np.isclose(runs["quality_keep"], level)]
        name = "all pairs (random subsets)" if level == 1.0 else f"top {level:.0%} by quality score"
        fit = curves.get(level)
        if fit is not None and fit.ok:
            grid = _grid(rows["n_pairs"])
            lo_b, hi_b = fit.intervals.get("b", (math.nan, math.nan))
            line = ax.plot(grid, predict("power_law", fit.params, grid), lw=1.6,
                           label=f"{name}: b={fit.params['b']:.2f} [{lo_b:.2f}, {hi_b:.2f}]")
            lo, hi = fit.band(grid)
            ax.fill_between(grid, lo, hi, color=line[0].get_color(), alpha=0.15, lw=0)
            _points(ax, rows, metric, color=line[0].get_color())
        else:
            _points(ax, rows, metric, label=f"{name}: no curve ({fit.refused if fit is not None else 'not fitted'})")
    _finish(ax, domain, f"{metric} by quality level")
    return _png(fig)


def _finish(ax: Axes, domain: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("training pairs N (log scale)")
    ax.set_ylabel(title.split(" ")[0])
    ax.set_title(f"{domain}: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.figure.tight_layout()


def concept_plot(domain: str, table: pd.DataFrame, fit: Optional[ConceptFit]) -> bytes:
    """PNG of per-class zero-shot accuracy against caption mentions, with the log-linear fit if any."""
    fig, ax = _figure()
    x = table["mentions"].to_numpy(dtype=float) + 1
    ax.scatter(x, table["accuracy"], zorder=3)
    for name, xi, yi in zip(table["classname"], x, table["accuracy"]):
        ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if fit is not None:
        grid = np.geomspace(max(1.0, x.min() / 1.5), x.max() * 1.5, 100)
        ax.plot(grid, fit.alpha + fit.beta * np.log(grid), ls="--", label=f"log-linear, Pearson r={fit.pearson_r:.2f}")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training pairs mentioning the class + 1 (log scale)")
    ax.set_ylabel("zero-shot accuracy (adapted, full data)")
    ax.set_title(f"{domain}: concept frequency vs zero-shot accuracy")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- tables


def _num(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "∞"
    return f"{v:.{digits}g}"


def fit_rows(metric: str, fit: ScalingFit) -> list[list[str]]:
    """Rows of the fits table (FIT_HEADER), one per curve family; the selected family is ticked."""
    rows = []
    for family, f in fit.fits.items():
        if not f.ok:
            rows.append([metric, family, f"refused: {f.refused}", "-", "-", "-"])
            continue
        params = ", ".join(f"{k}={_num(v)} [{_num(f.intervals[k][0])}, {_num(f.intervals[k][1])}]" for k, v in f.params.items())
        check = f.extrapolation
        extra = (f"{_num(check.abs_error, 3)} (pred {_num(check.predicted, 3)} vs {_num(check.observed, 3)} at N={_num(check.held_out_n)})"
                 if check else f"n/a: {f.extrapolation_refused}")
        rows.append([metric, family + (" ✓" if family == fit.selected else ""), params, _num(f.r2, 3), extra, str(len(f.boot_params))])
    return rows


FIT_HEADER = ["metric", "family", "parameters [95% interval]", "R²", "extrapolation error (largest size held out)", "bootstrap fits"]
NEED_HEADER = ["metric", "target", "fit", "pairs needed", "95% interval"]


# Beyond this multiple of the largest swept size an estimate is extrapolation, not a plan.
EXTRAPOLATION_LIMIT = 1000


def need_rows(metric: str, fit: ScalingFit, largest_n: float = float("inf")) -> list[list[str]]:
    """Rows of the data-needs table (NEED_HEADER); estimates far beyond `largest_n` are not given as numbers."""
    rows = []
    for need in fit.needs:
        if not need.reachable:
            rows.append([metric, _num(need.target, 3), need.family, "not reachable under this fit", "-"])
        elif need.n_pairs > EXTRAPOLATION_LIMIT * largest_n:
            rows.append([metric, _num(need.target, 3), need.family,
                         f"beyond {EXTRAPOLATION_LIMIT}x the largest swept size (fit says {_num(need.n_pairs)})", "-"])
        else:
            interval = f"[{_num(need.interval[0])}, {_num(need.interval[1])}]"
            rows.append([metric, _num(need.target, 3), need.family, f"{need.n_pairs:,.0f}", interval])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- quality levels


QUALITY_HEADER = ["metric", "quality keep", "runs", "sizes", "exponent b [95% interval]", "error floor c [95% interval]", "R²"]


def quality_curves(runs: pd.DataFrame, obs: Observations, main: Optional[ScalingFit], n_boot: int,
                   seed: int = 0) -> dict[float, FamilyFit]:
    """One power law per quality level, fitted to that level's runs with the same bootstrap as the main fit.

    `obs` holds every run (rows as in `runs`); the unfiltered level reuses the main fit's power law.
    """
    curves: dict[float, FamilyFit] = {}
    for level in quality_levels(runs):
        if level == 1.0 and main is not None:
            curves[level] = main.fits["power_law"]
            continue
        level_obs = obs.subset(np.isclose(runs["quality_keep"].to_numpy(dtype=float), level))
        curves[level] = fit_family("power_law", level_obs, bootstrap_samples(level_obs, n_boot, seed))
    return curves


def quality_table(metric: str, runs: pd.DataFrame, curves: dict[float, FamilyFit]) -> pd.DataFrame:
    """quality_fits.csv rows of one metric: the exponent with its interval per quality level."""
    rows = []
    for level, fit in curves.items():
        level_runs = runs[np.isclose(runs["quality_keep"], level)]
        b_lo, b_hi = fit.intervals.get("b", (math.nan, math.nan))
        c_lo, c_hi = fit.intervals.get("c", (math.nan, math.nan))
        rows.append({"metric": metric, "quality_keep": level, "runs": len(level_runs), "sizes": level_runs["n_pairs"].nunique(),
                     "b": fit.params.get("b", math.nan), "b_low": b_lo, "b_high": b_hi, "a": fit.params.get("a", math.nan),
                     "c": fit.params.get("c", math.nan), "c_low": c_lo, "c_high": c_hi, "r2": fit.r2,
                     "bootstrap_fits": len(fit.boot_params), "refused": fit.refused or ""})
    return pd.DataFrame(rows)


def quality_curve_points(metric: str, runs: pd.DataFrame, curves: dict[float, FamilyFit]) -> pd.DataFrame:
    """quality_curves.csv rows of one metric: each level's fitted curve and band on a grid of N."""
    frames = []
    for level, fit in curves.items():
        if not fit.ok:
            continue
        grid = _grid(runs.loc[np.isclose(runs["quality_keep"], level), "n_pairs"])
        lo, hi = fit.band(grid)
        frames.append(pd.DataFrame({"metric": metric, "quality_keep": level, "n_pairs": grid,
                                    "predicted": predict("power_law", fit.params, grid), "lower": lo, "upper": hi}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["metric", "quality_keep", "n_pairs", "predicted", "lower", "upper"])


def _quality_rows(table: pd.DataFrame) -> list[list[str]]:
    rows = []
    for r in table.to_dict(orient="records"):
        if r["refused"]:
            rows.append([r["metric"], _num(r["quality_keep"], 3), str(r["runs"]), str(r["sizes"]), f"refused: {r['refused']}", "-", "-"])
        else:
            rows.append([r["metric"], _num(r["quality_keep"], 3), str(r["runs"]), str(r["sizes"]),
                         f"{_num(r['b'], 3)} [{_num(r['b_low'], 3)}, {_num(r['b_high'], 3)}]",
                         f"{_num(r['c'], 3)} [{_num(r['c_low'], 3)}, {_num(r['c_high'], 3)}]", _num(r["r2"], 3)])
    return rows


# ---------------------------------------------------------------- the report


def build_report(
    domain: str, runs_dir: Path, out_dir: Path, params: dict, data: Optional[Path] = None, fits_path: Optional[Path] = None
) -> dict[str, Any]:
    """Fit, plot and write the report.

    Returns the content of fits.json (written to `fits_path`, default OUT/fits.json).
    """
    cfg = build(DomainScalingConfig, section(params, domain, "scaling"), f"{domain}.scaling")
    global_cfg = build(ScalingConfig, section(params, "scaling"), "scaling")
    metric_names = list(cfg.metrics or global_cfg.metrics or DEFAULT_METRICS)
    unknown = sorted(set(metric_names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown scaling metric(s) {unknown}; known: {list(METRICS)}")
    targets = cfg.targets
    n_boot = global_cfg.n_boot
    out_dir = Path(out_dir)

    runs = load_runs(runs_dir)
    unfiltered = np.isclose(runs["quality_keep"].to_numpy(dtype=float), 1.0)
    quantity = runs[unfiltered].reset_index(drop=True)

    fits: dict[str, ScalingFit] = {}
    refusals: dict[str, str] = {}
    interval_notes: dict[str, str] = {}
    plots: dict[str, bytes] = {}
    quality_fits, curve_points = [], []
    quality_json: dict[str, dict[str, Any]] = {}
    for metric in metric_names:
        obs, interval_notes[metric] = observations(runs, metric)
        if obs.examples is not None:
            per_run = example_interval(obs.examples, n_boot)
            runs[f"{metric}:low"], runs[f"{metric}:high"] = per_run[:, 1], per_run[:, 2]
            quantity[f"{metric}:low"], quantity[f"{metric}:high"] = per_run[unfiltered, 1], per_run[unfiltered, 2]
        try:
            fit = fit_scaling(obs.subset(unfiltered), metric, targets.get(metric, []), n_boot=n_boot)
            if fit.refused:
                refusals[metric] = fit.refused
            fits[metric] = fit
        except FitRefused as exc:
            refusals[metric] = str(exc)
        plots[f"scaling_{metric.replace('/', '_')}.png"] = scaling_plot(domain, metric, quantity, fits.get(metric))
        curves = quality_curves(runs, obs, fits.get(metric), n_boot)
        quality_fits.append(quality_table(metric, runs, curves))
        curve_points.append(quality_curve_points(metric, runs, curves))
        quality_json[metric] = {str(level): _family_json(f) for level, f in curves.items()}
        if len(curves) > 1:
            plots[f"quality_{metric.replace('/', '_')}.png"] = quality_plot(domain, metric, runs, curves)

    interval_cols = [c for m in metric_names for c in (m, f"{m}:low", f"{m}:high") if c in runs]
    atomic_write_text(out_dir / "scaling.csv", runs[["fraction", "quality_keep", "n_pairs", "seed", *interval_cols]].to_csv(index=False))
    quality_fit_table = pd.concat(quality_fits, ignore_index=True)
    atomic_write_text(out_dir / "quality_fits.csv", quality_fit_table.to_csv(index=False))
    atomic_write_text(out_dir / "quality_curves.csv", pd.concat(curve_points, ignore_index=True).to_csv(index=False))

    concepts: Optional[pd.DataFrame] = None
    concept_fit: Optional[ConceptFit] = None
    concept_note = "no curated data given: skipped"
    if data is not None:
        try:
            concepts = concept_table(runs, data, cfg.synonyms)
            concept_note = ""
            concept_fit = fit_concept_frequency(dict(zip(concepts["classname"], concepts["mentions"])),
                                                dict(zip(concepts["classname"], concepts["accuracy"])))
        except FitRefused as exc:
            concept_note = f"refused: {exc}"
        if concepts is not None:
            plots["concepts.png"] = concept_plot(domain, concepts, concept_fit)
    # always written (header only without per-class accuracies): it is a declared output of the stage
    concept_csv = concepts if concepts is not None else pd.DataFrame(columns=["classname", "mentions", "accuracy"])
    atomic_write_text(out_dir / "concepts.csv", concept_csv.to_csv(index=False))
    for name, png in plots.items():
        atomic_write_bytes(out_dir / "plots" / name, png)  # one folder: one DVC out

    fits_json = {
        "domain": domain,
        "runs": len(runs),
        "n_boot": n_boot,
        "metrics": {m: _fit_json(f) for m, f in fits.items()},
        "refusals": refusals,
        "intervals": interval_notes,
        "quality_curves": quality_json,
        "concepts": {
            "fit": asdict(concept_fit) if concept_fit else None,
            "note": concept_note,
            "long_tail": long_tail(dict(zip(concepts["classname"], concepts["mentions"])),
                                   dict(zip(concepts["classname"], concepts["accuracy"])))
            if concepts is not None else [],
        },
    }
    atomic_write_json(Path(fits_path) if fits_path else out_dir / "fits.json", fits_json)
    _write_documents(domain, out_dir, runs, fits, refusals, quality_fit_table, metric_names, concepts, concept_fit, concept_note,
                     fits_json, plots)
    return fits_json


def _family_json(f: FamilyFit) -> dict[str, Any]:
    return {
        "params": f.params, "intervals": f.intervals, "r2": f.r2, "refused": f.refused,
        "extrapolation": asdict(f.extrapolation) if f.extrapolation else None,
        "extrapolation_refused": f.extrapolation_refused, "bootstrap_fits": len(f.boot_params), "bootstrap_failed": f.n_boot_failed,
    }


def _fit_json(fit: ScalingFit) -> dict[str, Any]:
    return {"selected": fit.selected, "refused": fit.refused, "needs": [asdict(n) for n in fit.needs],
            "families": {family: _family_json(f) for family, f in fit.fits.items()}}


def interval_text(n_boot: int, notes: dict[str, str]) -> str:
    """How the report's intervals are computed, with each metric's resampling units."""
    per_metric = "; ".join(f"{m}: {note}" for m, note in notes.items())
    return (f"95% intervals are percentile intervals over {n_boot} bootstrap replicates. Each replicate draws the seeds "
            "with replacement (a seed is one nested chain of subsets) and, where every run saved its per-example outcomes, "
            "the units of the shared evaluation set with replacement (the same draw for every run, since all runs are scored "
            "on the same set); every run's metric is recomputed from the drawn examples and the curves are refitted. "
            f"Per-run intervals (error bars, scaling.csv) resample the examples only. Per metric: {per_metric}.")


def _write_documents(
    domain: str,
    out_dir: Path,
    runs: pd.DataFrame,
    fits: dict[str, ScalingFit],
    refusals: dict[str, str],
    quality_fit_table: pd.DataFrame,
    metric_names: list[str],
    concepts: Optional[pd.DataFrame],
    concept_fit: Optional[ConceptFit],
    concept_note: str,
    fits_json: dict[str, Any],
    plots: dict[str, bytes],
) -> None:
    fit_table = [r for m in metric_names if m in fits for r in fit_rows(m, fits[m])]
    fit_table += [[m, "-", f"refused: {refusals[m]}", "-", "-", "-"] for m in metric_names if m not in fits]
    largest_n = float(runs["n_pairs"].max()) if "n_pairs" in runs else float("inf")
    need_table = [r for m in metric_names if m in fits for r in need_rows(m, fits[m], largest_n)]
    intro = (
        f"{len(runs)} runs: data fractions {sorted(runs['fraction'].unique().tolist())}, "
        f"seeds {sorted(runs['seed'].unique().tolist())}, "
        f"quality keep {sorted(runs['quality_keep'].unique().tolist())}. "
        "The main curves are fitted on the unfiltered random-subset runs (one point per run); "
        "the selected family (✓) is the one that best predicts the largest size when fitted without it."
    )
    intervals = interval_text(int(fits_json["n_boot"]), fits_json["intervals"])
    levels = sorted({float(q) for q in runs["quality_keep"]})
    q_rows = _quality_rows(quality_fit_table) if len(levels) > 1 else []
    q_text = ("Quality levels keep the top share of each subset's train pairs by image-caption score under the base model "
              "(1.0 = all pairs). One power law err(N) = c + a·N^(-b) per level, fitted to that level's runs with the bootstrap "
              "above: at equal N, a curve above another means its data is worth more per pair.")
    tail = fits_json["concepts"]["long_tail"]
    tail_rows = [[c, str(n), _num(a, 3)] for c, n, a in tail]
    concept_text = (
        f"accuracy = {concept_fit.alpha:.3f} + {concept_fit.beta:.3f} · ln(1 + mentions) over {concept_fit.n_classes} classes; "
        f"Pearson r = {concept_fit.pearson_r:.3f} (p = {concept_fit.p_value:.3g})."
        if concept_fit else concept_note
    )

    md = [f"# Data scaling: {domain}", "", intro, "", intervals, "", "## Fits", "", _md_table(FIT_HEADER, fit_table), "",
          "## Data needs", "",
          _md_table(NEED_HEADER, need_table) if need_table else "No targets in params (`<domain>.scaling.targets`).", ""]
    md += [f"![{name}](plots/{name})" for name in plots if name.startswith("scaling_")]
    if q_rows:
        md += ["", "## Quality vs quantity: one curve per quality level", "", q_text, "", _md_table(QUALITY_HEADER, q_rows), ""]
        md += [f"![{name}](plots/{name})" for name in plots if name.startswith("quality_")]
    md += ["", "## Concept frequency", "", concept_text, ""]
    if tail_rows:
        md += ["Long-tail classes (fewest mentions):", "", _md_table(["class", "mentions", "accuracy"], tail_rows), ""]
    if "concepts.png" in plots:
        md += ["![concepts](plots/concepts.png)", ""]
    atomic_write_text(out_dir / "scaling.md", "\n".join(md) + "\n")

    img = lambda b: f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(b).decode()}">'  # noqa: E731
    body = [f"<h1>Data scaling: {html.escape(domain)}</h1>", f"<p>{html.escape(intro)}</p>", f"<p>{html.escape(intervals)}</p>",
            "<h2>Fits</h2>", _html_table(FIT_HEADER, fit_table),
            "<h2>Data needs</h2>", _html_table(NEED_HEADER, need_table) if need_table else "<p>No targets in params.</p>"]
    body += [img(png) for name, png in plots.items() if name.startswith("scaling_")]
    if q_rows:
        body += ["<h2>Quality vs quantity: one curve per quality level</h2>", f"<p>{html.escape(q_text)}</p>",
                 _html_table(QUALITY_HEADER, q_rows)]
        body += [img(png) for name, png in plots.items() if name.startswith("quality_")]
    body += ["<h2>Concept frequency</h2>", f"<p>{html.escape(concept_text)}</p>"]
    if tail_rows:
        body += ["<p>Long-tail classes (fewest mentions):</p>", _html_table(["class", "mentions", "accuracy"], tail_rows)]
    if "concepts.png" in plots:
        body.append(img(plots["concepts.png"]))
    atomic_write_text(out_dir / "scaling.html", _html_page(f"Data scaling: {domain}", "\n".join(body)))


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}"
    "img{max-width:100%;display:block;margin:1em 0}"
)


def _html_page(title: str, body: str) -> str:
    head = f"<head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
    return f"<!DOCTYPE html>\n<html>{head}\n<body>\n{body}\n</body></html>\n"


def write_index(reports_dir: Path) -> Path:
    """reports/index.html linking every reports/<domain>/scaling.html."""
    reports_dir = Path(reports_dir)
    links = [f'<li><a href="{html.escape(p.parent.name)}/scaling.html">{html.escape(p.parent.name)}</a></li>'
             for p in sorted(reports_dir.glob("*/scaling.html"))]
    body = "<h1>Data-scaling reports</h1>\n" + (f"<ul>{''.join(links)}</ul>" if links else "<p>No domain reports yet.</p>")
    path = reports_dir / "index.html"
    atomic_write_text(path, _html_page("Data-scaling reports", body))
    return path


# ---------------------------------------------------------------- commands


def report_command(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    runs: Annotated[Path, typer.Option("--runs", help="Folder holding the sweep's run folders.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder, e.g. reports/<domain>.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Curated pairs (for concept frequency).")] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml.")] = Path("params.yaml"),
    fits: Annotated[Optional[Path], typer.Option("--fits", help="Where fits.json goes (default OUT/fits.json).")] = None,
) -> None:
    """Fit data-scaling laws to a domain's sweep and write its report."""
    result = build_report(domain, runs, out, load_params(params), data, fits)
    for metric, fit in result["metrics"].items():
        typer.echo(f"{metric}: selected {fit['selected']}")
    for metric, reason in result["refusals"].items():
        typer.echo(f"{metric}: refused: {reason}")
    typer.echo(f"wrote {out}/scaling.html")


def index_command(
    reports: Annotated[Path, typer.Option("--reports", help="Reports folder.")] = Path("reports"),
) -> None:
    """Write reports/index.html linking every domain's scaling report."""
    typer.echo(f"wrote {write_index(reports)}")
