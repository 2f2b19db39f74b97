"""Evaluating the volume family as Merlin does, base (untrained init) and adapted (trained) side by side.

* Phenotypes: per-phenotype AUROC of the sigmoid head with bootstrap 95% intervals, and macro
  AUROC (with its own bootstrap interval); phenotypes with one class only in the test set are
  skipped and listed.
* Zero-shot findings: for each finding, the mean similarity of the image embedding to its
  positive prompts vs its negative prompts; positive if pos > neg. F1 per finding and macro F1;
  label -1 (uncertain) is ignored. Labels: labels.csv (study_id, <finding>...: 1/0/-1), matched
  to the evaluation split by the json provenance's study_id.
* Retrieval: image -> findings and image -> impression R@1/5/10 (one text per image; the
  pipelines.evaluate.metrics implementation).

Per-example outcomes (when a folder is given; the scaling sweep bootstraps over them), per model:
phenotypes_<model>.csv (study, group, phenotype, target, score), findings_<model>.csv (study, group,
finding, label, margin = positive minus negative prompt similarity, predicted) and
retrieval_<model>.csv (direction, query, image, rank of the first correct item, both ways, for
findings and impressions); `group` is the study's patient, the unit a bootstrap resamples.

"base" is the model the trainer starts from (same seed, same tokenizer, untrained heads), so the
delta measures what training added.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch

from pipelines.evaluate.clip_benchmark import write_not_applicable
from pipelines.evaluate.metrics import retrieval_metrics, retrieval_ranks
from pipelines.io import volume_shards as DS
from pipelines.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.models import volume as M
from pipelines.models.report_text import tokenize

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RETRIEVAL_KS = (1, 5, 10)


FindingPrompts = dict[str, dict[str, list[str]]]  # finding -> {"positive": [...], "negative": [...]}


@dataclass
class VolumeEvaluateConfig:
    """params.yaml `<domain>.evaluate` of a volume domain."""

    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 8
    bootstrap: int = 1000                   # resamples for the AUROC intervals
    seed: int = 0
    prompts: Optional[FindingPrompts] = None  # default: the domain's prompts.FINDING_PROMPTS


# ----------------------------------------------------------------------------- metrics


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties counted half.

    NaN when labels hold only one class.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, clusters: Optional[Sequence[str]] = None) -> tuple[float, float]:
    """Percentile interval of stat(idx) over resampled index sets; NaN resamples (one class) are dropped.

    With `clusters` (e.g. the patient of each study) whole clusters are resampled, so a patient's
    studies stay together: studies of one patient are not independent, and resampling them one by
    one would give intervals that are too narrow.
    """
    rng = np.random.default_rng(seed)
    if clusters is None:
        members = [np.array([i]) for i in range(n)]
    else:
        by_cluster: dict[str, list[int]] = {}
        for i, c in enumerate(clusters):
            by_cluster.setdefault(str(c), []).append(i)
        members = [np.array(ix) for ix in by_cluster.values()]
    values = [stat(np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])) for _ in range(n_boot)]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def phenotype_auroc(probs: np.ndarray, targets: np.ndarray, names: Sequence[str], n_boot: int = 1000,
                    seed: int = 0, patients: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Per-phenotype AUROC with 95% bootstrap CIs (resampling `patients` when given), macro AUROC (+ CI), skipped phenotypes."""
    probs, targets = np.asarray(probs, float), np.asarray(targets, int)
    per: dict[str, dict[str, float]] = {}
    kept, skipped = [], []
    for j, name in enumerate(names):
        if len(set(targets[:, j].tolist())) < 2:
            skipped.append(name)
            continue
        kept.append(j)
        lo, hi = bootstrap_ci(lambda idx, j=j: auroc(probs[idx, j], targets[idx, j]), len(probs), n_boot, seed + j,
                              clusters=patients)
        per[name] = {"auroc": auroc(probs[:, j], targets[:, j]), "ci_low": lo, "ci_high": hi,
                     "n_pos": int(targets[:, j].sum()), "n": int(len(targets))}

    def macro(idx: np.ndarray) -> float:
        vals = [auroc(probs[idx, j], targets[idx, j]) for j in kept]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    out: dict[str, Any] = {"per_phenotype": per, "skipped": skipped}
    if kept:
        out["macro_auroc"] = float(np.mean([per[names[j]]["auroc"] for j in kept]))
        out["macro_auroc_ci_low"], out["macro_auroc_ci_high"] = bootstrap_ci(macro, len(probs), n_boot, seed, clusters=patients)
    return out


def f1_binary(pred: Sequence[int], label: Sequence[int]) -> float:
    """F1 of the positive class (0.0 when there are no true and no predicted positives... and no hits)."""
    p, y = np.asarray(pred).astype(bool), np.asarray(label).astype(bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def zero_shot_findings(image_emb: torch.Tensor, prompt_emb: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       labels: dict[str, Sequence[int]]) -> dict[str, Any]:
    """Merlin's zero-shot: positive iff mean sim to positive prompts > mean sim to negative prompts.

    prompt_emb: {finding: (positive embeddings [P, D], negative embeddings [Q, D])}, normalised;
    labels: {finding: per-image 1/0/-1}; -1 is ignored. Findings with no labelled image are skipped.
    """
    f1, acc, support, margins = {}, {}, {}, {}
    for finding, (pos, neg) in prompt_emb.items():
        y = np.asarray(labels.get(finding, []), dtype=int)
        if y.size == 0:
            continue
        keep = y >= 0
        if not keep.any():
            continue
        score_pos = (image_emb @ pos.T).mean(dim=1).numpy()
        score_neg = (image_emb @ neg.T).mean(dim=1).numpy()
        pred = (score_pos > score_neg).astype(int)
        margins[finding] = score_pos - score_neg
        f1[finding] = f1_binary(pred[keep], y[keep])
        acc[finding] = float((pred[keep] == y[keep]).mean())
        support[finding] = int(keep.sum())
    # margins: per image, positive minus negative prompt similarity (positive iff > 0), for per-example outputs
    out: dict[str, Any] = {"f1": f1, "accuracy": acc, "support": support, "margins": margins}
    if f1:
        out["macro_f1"] = float(np.mean(list(f1.values())))
    return out


# ----------------------------------------------------------------------------- data


def read_labels(zeroshot: Optional[Path], findings: Sequence[str]) -> dict[str, dict[str, int]]:
    """{study_id: {finding: 1/0/-1}} from labels.csv at ZEROSHOT, ZEROSHOT/labels.csv or beside it."""
    if zeroshot is None:
        return {}
    zeroshot = Path(zeroshot)
    for cand in (zeroshot, zeroshot / "labels.csv", zeroshot.parent / "labels.csv"):
        if cand.is_file():
            with cand.open(newline="") as f:
                return {str(r["study_id"]): {k: int(float(r[k])) for k in findings if r.get(k) not in (None, "")}
                        for r in csv.DictReader(f)}
    return {}


@torch.no_grad()
def _encode_split(
    model: M.VolumeCLIP, samples: Sequence[DS.VolumeSample], tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> tuple[dict[str, torch.Tensor], list[DS.VolumeSample]]:
    """Embeddings and phenotype probabilities, plus the samples without their volumes.

    `samples` may be a ShardIndex: volumes are read batch by batch and dropped after use.
    """
    img, probs, fnd, imp, light = [], [], [], [], []
    for i in range(0, len(samples), batch_size):
        chunk = [samples[j] for j in range(i, min(i + batch_size, len(samples)))]
        light += [dataclasses.replace(s, volume=np.zeros((0,), np.float32)) for s in chunk]
        vols = M.volume_batch(chunk, model.cfg.input_size)
        out = model(vols)
        img.append(out["image_features"].float())
        probs.append(torch.sigmoid(out["phenotype_logits"].float()))
        for texts, acc in (([s.findings for s in chunk], fnd), ([s.impression or s.findings for s in chunk], imp)):
            acc.append(model.encode_text(**tokenize(tokenizer, texts, model.cfg.context_length)).float())
    enc = {"image": torch.cat(img), "probs": torch.cat(probs), "findings": torch.cat(fnd), "impression": torch.cat(imp)}
    return enc, light


@torch.no_grad()
def _prompt_embeddings(
    model: M.VolumeCLIP, tokenizer: PreTrainedTokenizerBase, prompts: dict[str, dict[str, list[str]]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    enc = lambda t: model.encode_text(**tokenize(tokenizer, t, model.cfg.context_length)).float()  # noqa: E731
    return {f: (enc(p["positive"]), enc(p["negative"])) for f, p in prompts.items()}


def score_model(model: M.VolumeCLIP, tokenizer: PreTrainedTokenizerBase, phenotypes: list[str], samples: Sequence[DS.VolumeSample],
                labels: dict[str, dict[str, int]], prompts: dict[str, dict[str, list[str]]], batch_size: int = 4,
                n_boot: int = 1000, seed: int = 0, per_example: bool = False) -> dict[str, Any]:
    """All three tasks for one model on `samples` (and, asked, the per-example rows under "per_example")."""
    model.eval()
    enc, samples = _encode_split(model, samples, tokenizer, batch_size)
    result: dict[str, Any] = {}
    if phenotypes:
        targets = M.phenotype_targets(samples, phenotypes).numpy()
        patients = [str(s.meta.get("group") or s.study_id) for s in samples]  # CT curation groups studies by patient
        result["phenotypes"] = phenotype_auroc(enc["probs"].numpy(), targets, phenotypes, n_boot, seed, patients)
    rows = [i for i, s in enumerate(samples) if s.study_id in labels]
    zs_labels = {f: [labels[samples[i].study_id].get(f, -1) for i in rows] for f in prompts}
    result["zeroshot"] = zero_shot_findings(enc["image"][rows], _prompt_embeddings(model, tokenizer, prompts), zs_labels)
    result["zeroshot"]["n_images"] = len(rows)
    result["retrieval"] = {}
    for kind in ("findings", "impression"):
        r = retrieval_metrics(enc["image"], enc[kind], list(range(len(samples))), RETRIEVAL_KS)
        result["retrieval"].update({f"{kind}_R@{k}": r[f"text_retrieval_recall@{k}"] for k in RETRIEVAL_KS})
    if per_example:
        result["per_example"] = _per_example(samples, enc, phenotypes, rows, zs_labels, result["zeroshot"]["margins"])
    return result


def _per_example(samples: Sequence[DS.VolumeSample], enc: dict[str, torch.Tensor], phenotypes: list[str], rows: list[int],
                 zs_labels: dict[str, list[int]], margins: dict[str, np.ndarray]) -> dict[str, list[tuple]]:
    """Rows of the per-example tables (see the module docstring): phenotypes, findings, retrieval."""
    study = [s.study_id for s in samples]
    group = [str(s.meta.get("group") or s.study_id) for s in samples]
    out: dict[str, list[tuple]] = {"phenotypes": [], "findings": [], "retrieval": []}
    if phenotypes:
        probs = enc["probs"].numpy()
        targets = M.phenotype_targets(samples, phenotypes).numpy()
        out["phenotypes"] = [(study[i], group[i], name, int(targets[i, j]), float(probs[i, j]))
                             for i in range(len(samples)) for j, name in enumerate(phenotypes)]
    for finding, margin in margins.items():
        out["findings"] += [(study[i], group[i], finding, int(zs_labels[finding][r]), float(margin[r]), int(margin[r] > 0))
                            for r, i in enumerate(rows)]
    for kind in ("findings", "impression"):
        ranks = retrieval_ranks(enc["image"], enc[kind], list(range(len(samples))))
        for direction, name in (("image_to_text", f"image_to_{kind}"), ("text_to_image", f"{kind}_to_image")):
            out["retrieval"] += [(name, i, i, int(r)) for i, r in enumerate(ranks[direction].tolist())]
    return out


PER_EXAMPLE_HEADERS = {
    "phenotypes": ["study", "group", "phenotype", "target", "score"],
    "findings": ["study", "group", "finding", "label", "margin", "predicted"],
    "retrieval": ["direction", "query", "image", "rank"],
}


# ----------------------------------------------------------------------------- outputs


def _scalars(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The DVC metrics of one model: nested dicts of finite numbers only."""
    out: dict[str, dict[str, float]] = {}
    ph = result.get("phenotypes", {})
    out["phenotypes"] = {k: ph[k] for k in ("macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high") if k in ph}
    out["phenotypes"].update({f"auroc_{n}": v["auroc"] for n, v in ph.get("per_phenotype", {}).items()})
    zs = result["zeroshot"]
    out["zeroshot"] = {**({"macro_f1": zs["macro_f1"]} if "macro_f1" in zs else {}),
                       **{f"f1_{f}": v for f, v in zs["f1"].items()}}
    out["retrieval"] = dict(result["retrieval"])
    return {t: {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and math.isfinite(v)} for t, d in out.items()}


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"base": ..., "adapted": ..., "delta": adapted - base} for `dvc metrics`."""
    s = {name: _scalars(r) for name, r in results.items()}
    if "base" in s and "adapted" in s:
        # interval bounds are not differenced: the delta of two bounds is no interval of anything
        s["delta"] = {t: {k: v - s["base"][t][k] for k, v in d.items() if k in s["base"].get(t, {}) and "_ci_" not in k}
                      for t, d in s["adapted"].items()}
    return s


def _record(dataset: str, task: str, model_name: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"dataset": dataset, "model": model_name, "pretrained": model_name, "task": task, "metrics": metrics,
            "language": "en", **extra}


def write_auroc_png(path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Grouped bars: per-phenotype AUROC of each model, with the 95% bootstrap interval as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted({n for r in results.values() for n in r.get("phenotypes", {}).get("per_phenotype", {})})
    fig = Figure(figsize=(max(4.0, 0.6 * len(names) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(results), 1)
    for m, (model, r) in enumerate(results.items()):
        per = r.get("phenotypes", {}).get("per_phenotype", {})
        vals = [per.get(n, {}).get("auroc", float("nan")) for n in names]
        err = [[max(v - per.get(n, {}).get("ci_low", v), 0) for n, v in zip(names, vals)],
               [max(per.get(n, {}).get("ci_high", v) - v, 0) for n, v in zip(names, vals)]]
        ax.bar([i + m * width for i in range(len(names))], vals, width, yerr=err, label=model, capsize=2)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(names))], labels=names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC")
    ax.set_title("phenotype AUROC (95% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def base_model_like(trained_dir: Path) -> M.VolumeCLIP:
    """The trainer's starting point: same config, same seed, same tokenizer, nothing trained."""
    cfg, phenotypes, raw = M.read_config(trained_dir)
    cfg.image_weights = cfg.image_weights if cfg.image_weights and Path(cfg.image_weights).is_file() else None
    from pipelines.models.report_text import load_tokenizer

    tokenizer = load_tokenizer(Path(trained_dir) / M.TOKENIZER_DIR)
    torch.manual_seed(int(raw.get("train", {}).get("seed", 0)))
    return M.build_model(cfg, phenotypes, tokenizer).eval()


def evaluate_volume(model_dir: Path, data: Optional[Path], zeroshot: Optional[Path], out: Path, plots: Path,
                    cfg: VolumeEvaluateConfig, prompts: FindingPrompts, dataset: str,
                    per_example_dir: Optional[Path] = None) -> dict[str, Any]:
    """Score base and adapted; write OUT (metrics.json, zeroshot_*, retrieval_*, per_class.csv, phenotypes_*, clip_benchmark/) and PLOTS.

    With `per_example_dir`, each model's per-example tables go there (module docstring).
    """
    torch.set_grad_enabled(False)
    try:
        adapted, tokenizer, phenotypes = M.load_model_dir(model_dir)
        base = base_model_like(model_dir)
    finally:
        torch.set_grad_enabled(True)
    split = cfg.split
    samples = DS.split_index(data, split) if data is not None else []
    if len(samples) == 0:
        raise FileNotFoundError(f"no {split} samples under {data}/shards to evaluate on")
    labels = read_labels(zeroshot, list(prompts))
    kw = dict(batch_size=cfg.batch_size, n_boot=cfg.bootstrap, seed=cfg.seed, per_example=per_example_dir is not None)
    results = {"base": score_model(base, tokenizer, phenotypes, samples, labels, prompts, **kw),
               "adapted": score_model(adapted, tokenizer, phenotypes, samples, labels, prompts, **kw)}
    names = {"base": f"{dataset}-init", "adapted": str(model_dir)}

    out, plots = Path(out), Path(plots)
    rows = []
    for name, r in results.items():
        zs = r["zeroshot"]
        atomic_write_json(out / f"zeroshot_{name}.json", _record(
            dataset, "zeroshot_findings", names[name], {"f1": zs["f1"], "macro_f1": zs.get("macro_f1"), "accuracy": zs["accuracy"],
                                               "support": zs["support"], "n_images": zs["n_images"]},
            classnames=list(prompts), templates=prompts))
        atomic_write_json(out / f"retrieval_{name}.json", _record(
            dataset, "report_retrieval", names[name], r["retrieval"], n_images=len(samples), split=split))
        atomic_write_json(out / f"phenotypes_{name}.json",
                          _record(dataset, "phenotype_classification", names[name], r.get("phenotypes", {})))
        rows += [[name, f, f"{a:.6f}"] for f, a in zs["accuracy"].items()]
        for table, header in PER_EXAMPLE_HEADERS.items():
            if per_example_dir is not None:
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerows([header, *r["per_example"][table]])
                atomic_write_text(Path(per_example_dir) / f"{table}_{name}.csv", buf.getvalue())
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["model", "classname", "accuracy"], *rows])
    atomic_write_text(out / "per_class.csv", buf.getvalue())  # zero-shot accuracy per finding
    s = summary(results)
    atomic_write_json(out / "metrics.json", s)
    plots.mkdir(parents=True, exist_ok=True)
    write_auroc_png(plots / "phenotype_auroc.png", results)
    # OUT/clip_benchmark is a declared output of every domain's evaluate stage.
    write_not_applicable(out / "clip_benchmark", dataset, "CLIP_benchmark scores 2D image-text models; this is a 3D volume model, "
                         "scored on its own test split (zeroshot_*.json, retrieval_*.json, phenotypes_*.json beside this folder).")
    return s
