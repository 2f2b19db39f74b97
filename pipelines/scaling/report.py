"""The data-scaling report of one domain, from the sweep's run folders.

Reads every `run.json` under RUNS (written by `pipelines.scaling.sweep`), fits each metric's curve
(`pipelines.scaling.fit`), estimates the pairs needed for the targets in
`<domain>.scaling.targets`, relates concept frequency in the training captions to per-class
zero-shot accuracy (`pipelines.scaling.concepts`), and writes into OUT:

- scaling.md and a self-contained scaling.html (plots embedded as base64 PNG);
- plots/scaling_<metric>.png, plots/concepts.png: the same plots as files;
- scaling.csv: one row per run (fraction, quality_keep, n_pairs, seed, metrics) for `dvc plots`;
- concepts.csv: classname, mentions, accuracy; fits.json: every number of the tables.

`index_command` writes REPORTS/index.html linking every domain's scaling.html.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer

from pipelines.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.io.manifest import read_manifest
from pipelines.params import build, load_params, section
from pipelines.scaling.concepts import ConceptFit, count_mentions, fit_concept_frequency, long_tail
from pipelines.scaling.config import DomainScalingConfig, ScalingConfig
from pipelines.scaling.fit import (
    FitRefused,
    Observations,
    ScalingFit,
    accuracy,
    balanced_accuracy,
    fit_scaling,
    predict,
)

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# metric name -> (metrics.json task, key, per-example statistic or None)
METRICS: dict[str, tuple[str, str, Any]] = {
    "zeroshot/acc1": ("zeroshot", "acc1", accuracy),
    "zeroshot/mean_per_class_recall": ("zeroshot", "mean_per_class_recall", balanced_accuracy),
    "retrieval/mean_recall": ("retrieval", "mean_recall", None),
}
DEFAULT_METRICS = tuple(METRICS)


# ---------------------------------------------------------------- reading the runs


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run: run.json's fields, adapted and base metrics, and the run folder."""
    rows = []
    for run_json in sorted(Path(runs_dir).rglob("run.json")):
        run = json.loads(run_json.read_text())
        metrics = json.loads((run_json.parent / "metrics.json").read_text())
        row = {k: run[k] for k in ("fraction", "seed", "quality_keep", "n_pairs")}
        row["run_dir"] = str(run_json.parent)
        for name, (task, key, _) in METRICS.items():
            row[name] = metrics.get("adapted", {}).get(task, {}).get(key, math.nan)
            row[f"base:{name}"] = metrics.get("base", {}).get(task, {}).get(key, math.nan)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no run.json under {runs_dir}: run the scaling sweep first")
    return pd.DataFrame(rows).sort_values(["quality_keep", "fraction", "seed"], ignore_index=True)


def quantity_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the data-fraction sweep (no quality filter)."""
    return runs[np.isclose(runs["quality_keep"], 1.0)].reset_index(drop=True)


def quality_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the quality-filter sweep: all the data, top-k% by score."""
    return runs[np.isclose(runs["fraction"], 1.0)].reset_index(drop=True)


def observations(runs: pd.DataFrame, metric: str) -> Observations:
    """Observations for one metric, with per-example correctness where every run saved it."""
    _, _, statistic = METRICS[metric]
    obs = Observations(runs["n_pairs"].to_numpy(), runs["seed"].to_numpy(), runs[metric].to_numpy())
    if statistic is None:
        return obs
    files = [Path(d) / "per_example_zeroshot.csv" for d in runs["run_dir"]]
    if not files or not all(f.is_file() for f in files):
        return obs  # bootstrap over seeds only
    tables = [pd.read_csv(f).sort_values("example") for f in files]
    labels = tables[0]["label"].to_numpy()
    if any(len(t) != len(labels) or not np.array_equal(t["label"].to_numpy(), labels) for t in tables):
        raise ValueError("runs were scored on different zero-shot sets: cannot resample examples jointly")
    correct = np.stack([t["correct"].to_numpy(dtype=float) for t in tables])
    return Observations(obs.n, obs.seed, obs.value, correct, labels, statistic)


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


def scaling_plot(domain: str, metric: str, quantity: pd.DataFrame, quality: pd.DataFrame, fit: Optional[ScalingFit]) -> bytes:
    """PNG of `metric` against training pairs: the runs, the base model, and each fitted curve with its band."""
    fig, ax = _figure()
    for seed, rows in quantity.groupby("seed"):
        ax.scatter(rows["n_pairs"], rows[metric], s=22, label=f"random subset, seed {seed}", zorder=3)
    filtered = quality[~np.isclose(quality["quality_keep"], 1.0)]
    if not filtered.empty:
        ax.scatter(filtered["n_pairs"], filtered[metric], marker="^", s=30, color="black", label="top-k% by quality score", zorder=3)
    base = quantity[f"base:{metric}"].dropna()
    if len(base):
        ax.axhline(float(base.iloc[0]), color="grey", lw=1, ls=":", label="base model")
    if fit is not None and fit.selected is not None:
        lo_n, hi_n = float(quantity["n_pairs"].min()), float(quantity["n_pairs"].max())
        grid = np.geomspace(lo_n / 1.5, hi_n * 4, 200)  # a little beyond the data: the curve is for extrapolating
        for family, style in (("power_law", "-"), ("log_linear", "--")):
            f = fit.fits[family]
            if not f.ok:
                continue
            chosen = family == fit.selected
            line = ax.plot(grid, predict(family, f.params, grid), ls=style, lw=2 if chosen else 1,
                           label=f"{family}{' (selected)' if chosen else ''}, R²={f.r2:.2f}")
            lo, hi = f.band(grid)
            ax.fill_between(grid, lo, hi, color=line[0].get_color(), alpha=0.2 if chosen else 0.1, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("training pairs N (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{domain}: {metric}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


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
    quantity, quality = quantity_runs(runs), quality_runs(runs)
    csv_cols = ["fraction", "quality_keep", "n_pairs", "seed", *metric_names]
    atomic_write_text(out_dir / "scaling.csv", runs[csv_cols].to_csv(index=False))

    fits: dict[str, ScalingFit] = {}
    refusals: dict[str, str] = {}
    plots: dict[str, bytes] = {}
    for metric in metric_names:
        try:
            fit = fit_scaling(observations(quantity, metric), metric, targets.get(metric, []), n_boot=n_boot)
            if fit.refused:
                refusals[metric] = fit.refused
            fits[metric] = fit
        except FitRefused as exc:
            refusals[metric] = str(exc)
        png = scaling_plot(domain, metric, quantity, quality, fits.get(metric))
        plots[f"scaling_{metric.replace('/', '_')}.png"] = png

    concepts: Optional[pd.DataFrame] = None
    concept_fit: Optional[ConceptFit] = None
    concept_note = ""
    if data is not None:
        try:
            concepts = concept_table(runs, data, cfg.synonyms)
            atomic_write_text(out_dir / "concepts.csv", concepts.to_csv(index=False))
            concept_fit = fit_concept_frequency(dict(zip(concepts["classname"], concepts["mentions"])),
                                                dict(zip(concepts["classname"], concepts["accuracy"])))
        except FitRefused as exc:
            concept_note = f"refused: {exc}"
        if concepts is not None:
            plots["concepts.png"] = concept_plot(domain, concepts, concept_fit)
    for name, png in plots.items():
        atomic_write_bytes(out_dir / "plots" / name, png)  # one folder: one DVC out

    quality_summary = (
        quality.groupby("quality_keep")
        .agg(n_pairs=("n_pairs", "mean"), **{m: (m, "mean") for m in metric_names}, seeds=("seed", "nunique"))
        .reset_index()
        if not quality.empty else pd.DataFrame()
    )
    fits_json = {
        "domain": domain,
        "runs": len(runs),
        "metrics": {m: _fit_json(f) for m, f in fits.items()},
        "refusals": refusals,
        "quality_sweep": quality_summary.to_dict(orient="records"),
        "concepts": {
            "fit": asdict(concept_fit) if concept_fit else None,
            "note": concept_note,
            "long_tail": long_tail(dict(zip(concepts["classname"], concepts["mentions"])),
                                   dict(zip(concepts["classname"], concepts["accuracy"])))
            if concepts is not None else [],
        },
    }
    atomic_write_json(Path(fits_path) if fits_path else out_dir / "fits.json", fits_json)
    _write_documents(domain, out_dir, runs, fits, refusals, quality_summary, metric_names, concepts, concept_fit, concept_note,
                     fits_json, plots)
    return fits_json


def _fit_json(fit: ScalingFit) -> dict[str, Any]:
    out: dict[str, Any] = {"selected": fit.selected, "refused": fit.refused, "families": {}, "needs": [asdict(n) for n in fit.needs]}
    for family, f in fit.fits.items():
        out["families"][family] = {
            "params": f.params, "intervals": f.intervals, "r2": f.r2, "refused": f.refused,
            "extrapolation": asdict(f.extrapolation) if f.extrapolation else None,
            "extrapolation_refused": f.extrapolation_refused, "bootstrap_fits": len(f.boot_params), "bootstrap_failed": f.n_boot_failed,
        }
    return out


def _write_documents(
    domain: str,
    out_dir: Path,
    runs: pd.DataFrame,
    fits: dict[str, ScalingFit],
    refusals: dict[str, str],
    quality_summary: pd.DataFrame,
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
        "Curves fitted on the random-subset runs (one point per seed); "
        "95% intervals from a bootstrap over seeds and, for zero-shot metrics, over evaluation examples. "
        "The selected family (✓) is the one that best predicts the largest size when fitted without it."
    )
    q_rows = [
        [_num(r["quality_keep"], 3), f"{r['n_pairs']:.0f}", *[_num(r[m], 3) for m in metric_names], str(r["seeds"])]
        for r in quality_summary.to_dict(orient="records")
    ] if len(quality_summary) else []
    q_header = ["quality keep", "pairs", *metric_names, "seeds"]
    tail = fits_json["concepts"]["long_tail"]
    tail_rows = [[c, str(n), _num(a, 3)] for c, n, a in tail]
    concept_text = (
        f"accuracy = {concept_fit.alpha:.3f} + {concept_fit.beta:.3f} · ln(1 + mentions) over {concept_fit.n_classes} classes; "
        f"Pearson r = {concept_fit.pearson_r:.3f} (p = {concept_fit.p_value:.3g})."
        if concept_fit else (concept_note or "no curated data given: skipped")
    )

    md = [f"# Data scaling: {domain}", "", intro, "", "## Fits", "", _md_table(FIT_HEADER, fit_table), "",
          "## Data needs", "",
          _md_table(NEED_HEADER, need_table) if need_table else "No targets in params (`<domain>.scaling.targets`).", ""]
    md += [f"![{name}](plots/{name})" for name in plots if name.startswith("scaling_")]
    if q_rows:
        md += ["", "## Quality filter (all data, top-k% by image-caption score)", "", _md_table(q_header, q_rows)]
    md += ["", "## Concept frequency", "", concept_text, ""]
    if tail_rows:
        md += ["Long-tail classes (fewest mentions):", "", _md_table(["class", "mentions", "accuracy"], tail_rows), ""]
    if "concepts.png" in plots:
        md += ["![concepts](plots/concepts.png)", ""]
    atomic_write_text(out_dir / "scaling.md", "\n".join(md) + "\n")

    img = lambda b: f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(b).decode()}">'  # noqa: E731
    body = [f"<h1>Data scaling: {html.escape(domain)}</h1>", f"<p>{html.escape(intro)}</p>",
            "<h2>Fits</h2>", _html_table(FIT_HEADER, fit_table),
            "<h2>Data needs</h2>", _html_table(NEED_HEADER, need_table) if need_table else "<p>No targets in params.</p>"]
    body += [img(png) for name, png in plots.items() if name.startswith("scaling_")]
    if q_rows:
        body += ["<h2>Quality filter (all data, top-k% by image-caption score)</h2>", _html_table(q_header, q_rows)]
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
