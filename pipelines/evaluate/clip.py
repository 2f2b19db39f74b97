"""Score several models (typically "base" and "adapted") on the same held-out data in one run.

Tasks, each skipped with a message when its data is absent:
- zero-shot classification on WebDataset shards with `png`/`jpg` + integer `cls`, plus
  `classnames.txt` (and optionally prompt templates) beside them: our layout (`test-*.tar` or `*.tar`
  in the folder, `templates.txt`) or CLIP_benchmark's (`test/0.tar..`, `test/nshards.txt`,
  `zeroshot_classification_templates.txt`);
- image-text retrieval on curated shards, where an image's positives are the unique non-empty
  strings among its `txt` caption and its json["caption_variants"] values (line breaks in a caption
  read as spaces, so every caption is one line).

Outputs (all written atomically):
- OUT/zeroshot_<model>.json, OUT/retrieval_<model>.json: CLIP_benchmark's result format;
- OUT/metrics.json: scalars per model and task, plus "delta" (adapted minus base), for `dvc metrics`;
- OUT/per_class.csv: model,classname,accuracy, for `dvc plots`;
- OUT/hubness.json, OUT/linear_probe.json when asked (analyses.py): hubness and modality gap on the
  retrieval set, linear probes on the zero-shot set; their scalars also go into metrics.json;
- PLOTS/confusion_<model>.png and PLOTS/confusion_<model>.csv (actual,predicted, one row per sample,
  for DVC's confusion template);
- PER_EXAMPLE/zeroshot_<model>.csv (example,label,classname,predicted,correct) and
  PER_EXAMPLE/retrieval_<model>.csv (direction,query,image,rank,hit@1,hit@5,hit@10: the 1-based rank
  of the first correct item and whether recall@k counts the query, one row per image and one per
  caption) when a per-example folder is given (the scaling sweep bootstraps its intervals over these);
- OUT/clip_benchmark/{zeroshot,retrieval}/: the sets as scored (images, labels, captions, class names,
  templates) in CLIP_benchmark's WebDataset layout, plus a README.txt with the `clip_benchmark eval`
  commands that re-score them (pipelines/evaluate/clip_benchmark.py); replaced as a whole.
"""
from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from pipelines.errors import InputError
from pipelines.evaluate import clip_benchmark as cb
from pipelines.evaluate.hubness import HubnessConfig
from pipelines.evaluate.linear_probe import LinearProbeConfig
from pipelines.evaluate.metrics import RETRIEVAL_KS, retrieval_hits, retrieval_metrics, retrieval_ranks, zero_shot_metrics
from pipelines.evaluate.zero_shot import build_zero_shot_classifier
from pipelines.infer.device import DeviceChoice
from pipelines.infer.text import encode_texts
from pipelines.io.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.io.png import open_image
from pipelines.io.shards import IMAGE_EXTS, image_bytes, iter_tar_samples
from pipelines.models.wise import WiseConfig

ZEROSHOT_SCALARS = ("acc1", "acc5", "mean_per_class_recall")
Split = Literal["train", "val", "test"]
REFERENCE_MODEL = "base"  # deltas are taken against this model

# (model, preprocess_val, tokenizer)
ModelTriple = tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor], Callable[[list[str]], torch.Tensor]]


@dataclass
class ClipEvaluateConfig:
    """params.yaml `<domain>.evaluate` of an image domain."""

    batch_size: int = 64
    retrieval_split: Split = "test"
    classnames: Optional[list[str]] = None  # default: the zero-shot set's classnames.txt, else the domain's
    templates: Optional[list[str]] = None   # default: the domain's prompts.TEMPLATES
    hubness: HubnessConfig = field(default_factory=HubnessConfig)  # hubness and modality gap on the retrieval set
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)  # linear probes on the zero-shot set
    device: DeviceChoice = "auto"  # auto: the GPU when there is one (bf16 autocast), else the CPU
    # A generic, out-of-domain zero-shot set in CLIP_benchmark's wds layout (null: off). Base and adapted
    # are scored on it as `general`: delta.general is what adaptation cost in general ability.
    general: Optional[str] = None
    wise: WiseConfig = field(default_factory=WiseConfig)  # WiSE-FT sweep (wise.json) and the exported alpha


# ---------------------------------------------------------------- reading the sets


@dataclass
class ZeroShotSet:
    """A zero-shot classification set: encoded images, their class indices, class names and prompt templates."""

    images: list[bytes]  # encoded; decoded per model, since each model has its own preprocess
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    image_exts: list[str] = field(default_factory=list)  # each image's member extension (png, jpg, ...)


@dataclass
class RetrievalSet:
    """Encoded images and their captions; `text_to_image[t]` is the index of the image caption `t` belongs to."""

    images: list[bytes]
    texts: list[str]
    text_to_image: list[int]
    image_exts: list[str] = field(default_factory=list)  # each image's member extension (png, jpg, ...)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _image_member(sample: dict[str, Any]) -> tuple[str, bytes]:
    data = image_bytes(sample)  # raises, naming the sample, when it has no image
    return next(ext for ext in IMAGE_EXTS if ext in sample), data  # the member image_bytes returned


def zeroshot_shards(zeroshot_dir: Path) -> list[str]:
    """The set's shards: CLIP_benchmark's layout, else `test-*.tar`, else every `*.tar` in the folder.

    CLIP_benchmark's layout is `test/0.tar..` counted by `test/nshards.txt`; `*.tar` because a set
    may be packed under another split name.
    """
    nshards = zeroshot_dir / cb.SPLIT / "nshards.txt"
    if nshards.is_file():
        return [str(zeroshot_dir / cb.SPLIT / f"{i}.tar") for i in range(int(nshards.read_text().strip()))]
    shards = sorted(zeroshot_dir.glob("test-*.tar")) or sorted(zeroshot_dir.glob("*.tar"))
    return [str(p) for p in shards]


def load_zeroshot_set(
    zeroshot_dir: Path, classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None
) -> ZeroShotSet:
    """Read a zero-shot set. Explicit classnames/templates win over the folder's text files.

    Explicit classnames only rename classes for the prompts: their count must match
    classnames.txt when that file exists, since `cls` indexes its lines. Templates without explicit
    ones: CLIP_benchmark's zeroshot_classification_templates.txt (str.format form), else templates.txt.
    """
    names_file, templates_file = zeroshot_dir / "classnames.txt", zeroshot_dir / "templates.txt"
    benchmark_templates = zeroshot_dir / cb.TEMPLATES_FILE
    file_names = _read_lines(names_file) if names_file.is_file() else None
    if classnames is None:
        if file_names is None:
            raise FileNotFoundError(f"no class names: pass them or write {names_file}")
        classnames = file_names
    elif file_names is not None and len(file_names) != len(classnames):
        raise ValueError(f"{len(classnames)} class names given but {names_file} lists {len(file_names)}")
    if templates is None and benchmark_templates.is_file():
        templates = [cb.from_benchmark_template(t, benchmark_templates) for t in _read_lines(benchmark_templates)]
    if templates is None:
        templates = _read_lines(templates_file) if templates_file.is_file() else None
        if not templates:
            raise FileNotFoundError(f"no prompt templates: pass them or write {templates_file}")

    images, labels, exts = [], [], []
    for shard in zeroshot_shards(zeroshot_dir):
        for sample in iter_tar_samples(shard):
            if "cls" not in sample:
                raise ValueError(f"{shard}: sample {sample['__key__']!r} has no `cls` label")
            label = int(sample["cls"].decode("ascii").strip())
            if not 0 <= label < len(classnames):
                raise ValueError(
                    f"{shard}: sample {sample['__key__']!r} has cls={label}, outside the "
                    f"{len(classnames)} class names (0..{len(classnames) - 1})"
                )
            ext, data = _image_member(sample)
            images.append(data)
            exts.append(ext)
            labels.append(label)
    return ZeroShotSet(images, labels, list(classnames), list(templates), exts)


def load_benchmark_zeroshot_set(folder: Path) -> ZeroShotSet:
    """A zero-shot set in CLIP_benchmark's wds layout and nothing else (the `general` set, any user's folder).

    Unlike load_zeroshot_set, which also reads our own layouts, every file of the layout must be there
    (test/nshards.txt and the shards it counts, classnames.txt, zeroshot_classification_templates.txt) and
    the set must hold images: an InputError names the folder and what is wrong, since a wrong path would
    otherwise score nothing or another layout's files.
    """
    folder = Path(folder)
    hint = ("expected CLIP_benchmark's zero-shot wds layout: test/nshards.txt, test/0.tar.., "
            f"{cb.CLASSNAMES_FILE}, {cb.TEMPLATES_FILE}")
    if not folder.is_dir():
        raise InputError(f"general set {folder}: not a folder; {hint}")
    missing = [name for name in (f"{cb.SPLIT}/nshards.txt", cb.CLASSNAMES_FILE, cb.TEMPLATES_FILE)
               if not (folder / name).is_file()]
    if missing:
        raise InputError(f"general set {folder}: no {', '.join(missing)}; {hint}")
    count = (folder / cb.SPLIT / "nshards.txt").read_text().strip()
    if not count.isdigit() or int(count) < 1:
        raise InputError(f"general set {folder}: {cb.SPLIT}/nshards.txt holds {count!r}, not a shard count >= 1")
    absent = [s for s in zeroshot_shards(folder) if not Path(s).is_file()]
    if absent:
        raise InputError(f"general set {folder}: {cb.SPLIT}/nshards.txt counts {count} shards but {', '.join(absent)} "
                         "is missing")
    try:
        found = load_zeroshot_set(folder)
    except ValueError as exc:  # a label outside the class names, a sample without `cls`
        raise InputError(f"general set {folder}: {exc}") from exc
    if not found.images:
        raise InputError(f"general set {folder}: its shards hold no samples")
    return found


def caption_positives(sample: dict[str, Any]) -> list[str]:
    """Unique non-empty one-line captions of a curated sample: `txt` first, then the caption variants."""
    candidates = [sample["txt"].decode("utf-8")] if "txt" in sample else []
    if "json" in sample:
        variants = json.loads(sample["json"].decode("utf-8")).get("caption_variants") or {}
        candidates += [v for v in variants.values() if isinstance(v, str)]
    out: list[str] = []
    for text in candidates:
        # One line each, so the retrieval set CLIP_benchmark reads (captions one per line) holds these very strings.
        text = " ".join(text.splitlines()).strip()
        if text and text not in out:
            out.append(text)
    return out


def load_retrieval_set(shards: Sequence[str]) -> RetrievalSet:
    """Read curated shards into a retrieval set; images without any caption are left out."""
    images: list[bytes] = []
    exts: list[str] = []
    texts: list[str] = []
    owner: list[int] = []
    for shard in shards:
        for sample in iter_tar_samples(shard):
            captions = caption_positives(sample)
            if not captions:  # an image nothing can retrieve would only lower recall
                continue
            texts += captions
            owner += [len(images)] * len(captions)
            ext, data = _image_member(sample)
            images.append(data)
            exts.append(ext)
    return RetrievalSet(images, texts, owner, exts)


# ---------------------------------------------------------------- embedding


def encode_images(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[bytes],
    device: str | torch.device,
    batch_size: int,
    workers: int = 2,
) -> torch.Tensor:
    """L2-normalised float32 image embeddings (N, D) on the CPU, each image decoded and preprocessed as the model's `preprocess` does.

    Through the analyst commands' streaming embedder (`pipelines.infer.stream.embed_windows`), with
    `workers` threads decoding: on a CPU the model threads each decode the batches they embed, two
    batches at once (on two cores the demo's model embeds 1024 images 1.3x as fast as batch after
    batch in one thread, ViT-B/32 128 images 1.07x, the same embeddings; benchmarks/evaluate_throughput.py
    times the whole scoring against clip_benchmark's); on a GPU the threads decode the next batches while
    the model runs one, under bf16 autocast (pipelines.infer.device).
    """
    from pipelines.infer.clip import embed_image_batch  # here: it imports open_clip, which this module does not
    from pipelines.infer.stream import embed_windows

    if not images:
        raise ValueError("no images to encode")
    device = torch.device(device)

    def decode(index: int) -> Image.Image:
        return open_image(images[index])

    embed = functools.partial(embed_image_batch, model, device=device)
    batches = embed_windows(range(len(images)), decode, preprocess, embed, batch_size, workers, "images", device=device)
    return torch.from_numpy(np.concatenate([batch.embeddings for batch in batches]))


def score_zeroshot(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    zeroshot: ZeroShotSet,
    device: str | torch.device,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(image features, logits, zero_shot_metrics) of `model` on a zero-shot set."""
    weights = build_zero_shot_classifier(model, tokenizer, zeroshot.classnames, zeroshot.templates, device, batch_size)
    features = encode_images(model, preprocess, zeroshot.images, device, batch_size)
    logits = features @ weights.cpu()
    return features, logits, zero_shot_metrics(logits, zeroshot.labels, zeroshot.classnames)


# ---------------------------------------------------------------- outputs


def _benchmark_record(dataset: str, model: str, pretrained: str, task: str, metrics: dict, **extra: Any) -> dict:
    """CLIP_benchmark's result layout; extras (class names, per-class numbers) sit beside it."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics, "language": "en", **extra}


def _summary(results: dict[str, dict[str, dict[str, float]]]) -> dict:
    """metrics.json: {model: {task: {metric: value}}, "delta": {task: {metric: model - base}}}.

    With more than one non-base model, deltas other than "adapted"'s go under "delta_<model>".
    """
    summary: dict[str, Any] = {name: tasks for name, tasks in results.items()}
    base = results.get(REFERENCE_MODEL)
    if base is None:
        return summary
    for name, tasks in results.items():
        if name == REFERENCE_MODEL:
            continue
        delta = {
            task: {m: values[m] - base[task][m] for m in values if m in base.get(task, {})}
            for task, values in tasks.items()
            if task in base
        }
        summary["delta" if name == "adapted" else f"delta_{name}"] = delta
    return summary


def format_table(summary: dict) -> str:
    """Metrics side by side, one row per task/metric, with adapted minus base when both exist."""
    models = [m for m in summary if not m.startswith("delta")]
    rows: list[tuple[str, str]] = []
    for name in models:
        for task, values in summary[name].items():
            for metric in values:
                if (task, metric) not in rows:
                    rows.append((task, metric))
    has_delta = "delta" in summary
    header = ["metric", *models] + (["delta"] if has_delta else [])
    lines = [header]
    for task, metric in rows:
        line = [f"{task}/{metric}"]
        line += [f"{summary[m][task][metric]:.4f}" if metric in summary[m].get(task, {}) else "-" for m in models]
        if has_delta:
            d = summary["delta"].get(task, {}).get(metric)
            line.append("-" if d is None else f"{d:+.4f}")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in lines
    )


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_confusion_png(path: Path, confusion: list[list[int]], classnames: Sequence[str], title: str) -> None:
    """Plot a confusion matrix (rows actual, columns predicted), coloured by share of the actual class."""
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no state across calls.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classnames)
    size = max(4.0, 0.5 * n + 2.5)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    counts = torch.tensor(confusion, dtype=torch.float)
    # Colour by row share so rare classes are as readable as frequent ones; cells show counts.
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    ax.set_xticks(range(n), labels=list(classnames), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classnames))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("actual class")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if confusion[i][j]:
                    ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _remove_stale(paths: Sequence[Path]) -> None:
    # A skipped task must not leave a previous run's file looking like this run's result.
    for path in paths:
        if path.exists():
            path.unlink()


def _write_skipped(path: Path, dataset: str, model: str, pretrained: str, task: str, reason: str) -> None:
    # The result file is a declared DVC output, so a skipped task still writes it: no metrics, the reason.
    atomic_write_json(path, _benchmark_record(dataset, model, pretrained, task, {}, skipped=reason))


def write_benchmark_sets(folder: Path, dataset: str, zeroshot: ZeroShotSet | None, zeroshot_skipped: str,
                         retrieval: RetrievalSet | None, retrieval_skipped: str) -> None:
    """Replace `folder` with the sets as scored in CLIP_benchmark's wds layout (zeroshot/, retrieval/) and a README.txt."""
    with atomic_dir(folder) as tmp:
        if zeroshot is not None:
            cb.write_zeroshot_set(tmp / "zeroshot", zeroshot.images, zeroshot.image_exts, zeroshot.labels,
                                  zeroshot.classnames, zeroshot.templates)
        if retrieval is not None:
            cb.write_retrieval_set(tmp / "retrieval", retrieval.images, retrieval.image_exts, retrieval.texts, retrieval.text_to_image)
        (tmp / "README.txt").write_text(cb.readme_text(dataset, folder, zeroshot_skipped, retrieval_skipped), encoding="utf-8")


# ---------------------------------------------------------------- the stage


def evaluate(
    models: dict[str, ModelTriple],
    zeroshot_dir: Path | None,
    retrieval_shards: Sequence[str],
    classnames: Sequence[str] | None,
    templates: Sequence[str] | None,
    out_dir: Path,
    plots_dir: Path,
    dataset_name: str,
    model_names: dict[str, str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    hubness: HubnessConfig | None = None,
    linear_probe: LinearProbeConfig | None = None,
    bank_shards: Sequence[str] = (),
    per_example_dir: Path | None = None,
    general_dir: Path | None = None,
) -> dict:
    """Score every model on the same zero-shot set and retrieval shards; returns metrics.json's content.

    `models` maps a role ("base", "adapted", ...) to (model, preprocess_val, tokenizer).
    `model_names` maps a role to the name written as "model" in the CLIP_benchmark JSONs (the
    role itself goes in "pretrained"); roles without an entry use the role as the name.
    `hubness` and `linear_probe` (None: not run, no file) ask for analyses.py's analyses; the
    hubness banks are drawn from `bank_shards` (the curated train split). With `per_example_dir`,
    every model's per-example outcomes are written there too. `general_dir`, a zero-shot set in
    CLIP_benchmark's layout (load_benchmark_zeroshot_set), is scored as each model's `general` task.
    """
    if not models:
        raise ValueError("evaluate needs at least one model")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir, plots_dir = Path(out_dir), Path(plots_dir)
    model_names = model_names or {}

    zeroshot: ZeroShotSet | None = None
    zeroshot_skipped = ""
    if zeroshot_dir is None:
        zeroshot_skipped = "no zero-shot folder given"
    elif not Path(zeroshot_dir).is_dir() or not zeroshot_shards(Path(zeroshot_dir)):
        zeroshot_skipped = f"no .tar shards in {zeroshot_dir}"
    else:
        zeroshot = load_zeroshot_set(Path(zeroshot_dir), classnames, templates)
        if not zeroshot.images:
            zeroshot_skipped = f"the shards in {zeroshot_dir} hold no samples"
            zeroshot = None
    if zeroshot_skipped:
        print(f"evaluate: skipping zero-shot classification: {zeroshot_skipped}")

    retrieval: RetrievalSet | None = None
    retrieval_skipped = ""
    if not retrieval_shards:
        retrieval_skipped = "no retrieval shards (the split holds no pairs)"
    else:
        retrieval = load_retrieval_set(retrieval_shards)
        if not retrieval.images:
            retrieval_skipped = f"no captioned images in {len(retrieval_shards)} shard(s)"
            retrieval = None
    if retrieval_skipped:
        print(f"evaluate: skipping retrieval: {retrieval_skipped}")
    general = load_benchmark_zeroshot_set(Path(general_dir)) if general_dir is not None else None
    # Before scoring: a class name or template CLIP_benchmark cannot read back stops the run early.
    write_benchmark_sets(out_dir / "clip_benchmark", dataset_name, zeroshot, zeroshot_skipped, retrieval, retrieval_skipped)

    from pipelines.evaluate.analyses import Analyses  # here: analyses.py imports this module

    analyses = Analyses(hubness, linear_probe, bank_shards, device, batch_size)
    results: dict[str, dict[str, dict[str, float]]] = {}
    per_class_rows: list[tuple[str, str, float]] = []
    for role, (model, preprocess, tokenizer) in models.items():
        name = model_names.get(role, role)
        was_training = model.training
        model.to(device).eval()
        results[role] = {}
        zs_json, rt_json = out_dir / f"zeroshot_{role}.json", out_dir / f"retrieval_{role}.json"
        confusion_png, confusion_csv = plots_dir / f"confusion_{role}.png", plots_dir / f"confusion_{role}.csv"

        if zeroshot is not None:
            features, logits, zs = score_zeroshot(model, preprocess, tokenizer, zeroshot, device, batch_size)
            scalars = {k: zs[k] for k in ZEROSHOT_SCALARS}
            results[role]["zeroshot"] = scalars
            results[role].update(analyses.on_zeroshot(role, features, zeroshot.labels))
            atomic_write_json(
                zs_json,
                _benchmark_record(
                    dataset_name, name, role, "zeroshot_classification", scalars,
                    classnames=zeroshot.classnames, templates=zeroshot.templates,
                    per_class=zs["per_class"], support=zs["support"],
                    confusion_matrix=zs["confusion_matrix"], n_samples=len(zeroshot.labels),
                ),
            )
            per_class_rows += [(role, c, acc) for c, acc in zs["per_class"].items() if acc is not None]
            predicted = logits.argmax(dim=1).tolist()
            pairs = [(zeroshot.classnames[a], zeroshot.classnames[p]) for a, p in zip(zeroshot.labels, predicted)]
            atomic_write_text(confusion_csv, _csv_text(["actual", "predicted"], pairs))
            title = f"{dataset_name}: {role}" + (f" ({name})" if name != role else "")
            write_confusion_png(confusion_png, zs["confusion_matrix"], zeroshot.classnames, title)
            if per_example_dir is not None:
                rows = [(i, a, zeroshot.classnames[a], p, int(a == p)) for i, (a, p) in enumerate(zip(zeroshot.labels, predicted))]
                atomic_write_text(Path(per_example_dir) / f"zeroshot_{role}.csv",
                                  _csv_text(["example", "label", "classname", "predicted", "correct"], rows))
        else:
            _remove_stale([confusion_png, confusion_csv])
            _write_skipped(zs_json, dataset_name, name, role, "zeroshot_classification", zeroshot_skipped)

        if general is not None:
            results[role]["general"] = {k: v for k, v in score_zeroshot(model, preprocess, tokenizer, general, device,
                                                                       batch_size)[2].items() if k in ZEROSHOT_SCALARS}

        if retrieval is not None:
            image_emb = encode_images(model, preprocess, retrieval.images, device, batch_size)
            text_emb = encode_texts(model, tokenizer, retrieval.texts, device, batch_size)
            rt = retrieval_metrics(image_emb, text_emb, retrieval.text_to_image)
            if per_example_dir is not None:
                ranks = retrieval_ranks(image_emb, text_emb, retrieval.text_to_image)
                hits = {d: h.int().tolist() for d, h in retrieval_hits(image_emb, text_emb, retrieval.text_to_image).items()}
                rows = [("image_to_text", i, i, int(r), *hits["image_to_text"][i]) for i, r in enumerate(ranks["image_to_text"].tolist())]
                rows += [("text_to_image", t, owner, int(r), *hits["text_to_image"][t])
                         for t, (owner, r) in enumerate(zip(retrieval.text_to_image, ranks["text_to_image"].tolist()))]
                atomic_write_text(Path(per_example_dir) / f"retrieval_{role}.csv",
                                  _csv_text(["direction", "query", "image", "rank", *(f"hit@{k}" for k in RETRIEVAL_KS)], rows))
            results[role]["retrieval"] = rt
            results[role].update(analyses.on_retrieval(role, model, preprocess, tokenizer, image_emb, text_emb, retrieval.text_to_image))
            atomic_write_json(
                rt_json,
                _benchmark_record(
                    dataset_name, name, role, "zeroshot_retrieval", rt,
                    n_images=len(retrieval.images), n_texts=len(retrieval.texts),
                ),
            )
        else:
            _write_skipped(rt_json, dataset_name, name, role, "zeroshot_retrieval", retrieval_skipped)
        model.train(was_training)

    analyses.write(out_dir, list(models), retrieval_skipped, zeroshot_skipped)
    summary = _summary(results)
    atomic_write_json(out_dir / "metrics.json", summary)
    # Written even when zero-shot was skipped, so a declared DVC plots file always exists.
    atomic_write_text(out_dir / "per_class.csv", _csv_text(["model", "classname", "accuracy"], per_class_rows))
    print(format_table(summary))
    return summary
