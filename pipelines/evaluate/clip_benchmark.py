"""The evaluated test sets in CLIP_benchmark's WebDataset ("wds") layout, so anyone can re-score a model on them.

`clip_benchmark eval --dataset wds/<name> --dataset_root <set>` (clip_benchmark 1.6.2,
`datasets/builder.py:build_wds_dataset`) reads:

    <set>/test/nshards.txt                              the number of shards N
    <set>/test/0.tar ... <set>/test/{N-1}.tar           samples: one image member (webp, png, jpg or jpeg) plus
                                                          `cls` (the class index, zero-shot) or
                                                          `txt` (the image's captions, one per line, retrieval)
    <set>/classnames.txt                                zero-shot: one class name per line, in `cls` order
    <set>/zeroshot_classification_templates.txt         zero-shot: one prompt template per line, `{c}` = class name
    <set>/dataset_type.txt                              `retrieval` for a retrieval set

We write exactly the images, labels, captions, class names and templates the evaluation scored, so a
re-score equals our numbers. CLIP_benchmark strips every line of the two text files and fills a
template with `str.format(c=name)`, so literal braces in a template are written doubled and a class
name or template that stripping or a line break would change is refused (an `InputError`) rather
than written so that it re-scores differently.

`python -m pipelines.evaluate.clip_benchmark eval ...` is clip_benchmark's own command line with one
fix: its `accuracy()` calls float() on a one-element array, which numpy >= 2.4 refuses.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Sequence

import torch

from pipelines.errors import InputError
from pipelines.io.atomic import atomic_dir
from pipelines.io.shards import IMAGE_EXTS, add_member

SPLIT = "test"  # the split clip_benchmark eval reads by default (--split)
SAMPLES_PER_SHARD = 1000
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
CLASSNAMES_FILE = "classnames.txt"


def to_benchmark_template(template: object) -> str:
    """Our template ("{c}" replaced with str.replace, other braces literal) in CLIP_benchmark's str.format form."""
    if not isinstance(template, str):
        raise InputError(f"prompt template {template!r} is not text; CLIP_benchmark reads templates from a text file")
    return template.replace("{", "{{").replace("}", "}}").replace("{{c}}", "{c}")


def from_benchmark_template(template: str, source: Path) -> str:
    """A CLIP_benchmark template (str.format with `c`) in our form, where "{c}" is the only placeholder."""
    try:
        return template.format(c="{c}")
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(f"{source}: template {template!r} is not a str.format template with the one field {{c}} ({e})") from e


def _one_line(kind: str, text: str) -> str:
    # clip_benchmark strips each line: a value it would read back differently must not be written.
    if text != text.strip() or len(text.splitlines()) != 1:
        raise InputError(
            f"{kind} {text!r} cannot be written for CLIP_benchmark unchanged: it reads one stripped line per entry; "
            "remove the line breaks and surrounding spaces (params.yaml <domain>.evaluate)"
        )
    return text


def _lines(values: Sequence[str]) -> str:
    return "".join(f"{v}\n" for v in values)


def _write_shards(folder: Path, samples: Sequence[dict[str, bytes]]) -> int:
    """test/0.tar, test/1.tar, ... with SAMPLES_PER_SHARD samples each, and test/nshards.txt; returns the shard count."""
    split_dir = folder / SPLIT
    split_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(samples) // SAMPLES_PER_SHARD))
    for shard in range(n_shards):
        with tarfile.open(split_dir / f"{shard}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(shard * SAMPLES_PER_SHARD, min(len(samples), (shard + 1) * SAMPLES_PER_SHARD)):
                for ext, data in samples[index].items():
                    add_member(tar, f"{index:08d}.{ext}", data)
    (split_dir / "nshards.txt").write_text(f"{n_shards}\n", encoding="utf-8")
    return n_shards


def _image_ext(ext: str) -> str:
    if ext not in IMAGE_EXTS:
        raise ValueError(f"image extension {ext!r} is none of {IMAGE_EXTS}, which clip_benchmark decodes")
    return ext


def write_zeroshot_set(
    folder: Path,
    images: Sequence[bytes],
    image_exts: Sequence[str],
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str],
) -> None:
    """Write a zero-shot classification set into `folder` (which should be new or empty) in the wds layout."""
    if not (len(images) == len(image_exts) == len(labels)):
        raise ValueError(f"{len(images)} images, {len(image_exts)} image extensions and {len(labels)} labels")
    names = [_one_line("class name", c) for c in classnames]
    lines = [_one_line("prompt template", to_benchmark_template(t)) for t in templates]
    samples = [{_image_ext(ext): data, "cls": str(int(label)).encode("ascii")} for data, ext, label in zip(images, image_exts, labels)]
    _write_shards(folder, samples)
    (folder / CLASSNAMES_FILE).write_text(_lines(names), encoding="utf-8")
    (folder / TEMPLATES_FILE).write_text(_lines(lines), encoding="utf-8")


def write_retrieval_set(
    folder: Path, images: Sequence[bytes], image_exts: Sequence[str], texts: Sequence[str], text_to_image: Sequence[int]
) -> None:
    """Write an image-text retrieval set into `folder` in the wds layout: each image with all its captions in `txt`."""
    if len(images) != len(image_exts) or len(texts) != len(text_to_image):
        raise ValueError(f"{len(images)} images for {len(image_exts)} extensions, {len(texts)} texts for {len(text_to_image)} owners")
    captions: list[list[str]] = [[] for _ in images]
    for text, owner in zip(texts, text_to_image):
        if len(text.splitlines()) != 1:
            raise ValueError(f"caption {text!r} is not one line; clip_benchmark splits `txt` into captions at line breaks")
        captions[owner].append(text)
    samples = [{_image_ext(ext): data, "txt": _lines(own).encode("utf-8")} for data, ext, own in zip(images, image_exts, captions)]
    _write_shards(folder, samples)
    (folder / "dataset_type.txt").write_text("retrieval\n", encoding="utf-8")


def rescore_commands(dataset: str, folder: Path, zeroshot: bool, retrieval: bool) -> str:
    """The `clip_benchmark eval` command lines that re-score the sets under `folder` (MODEL_DIR: an open_clip folder)."""
    common = "--model local-dir:MODEL_DIR --pretrained domainfm --no_amp --num_workers 0"
    lines = []
    if zeroshot:
        lines.append(f"clip_benchmark eval --dataset wds/{dataset}_zeroshot --dataset_root {folder / 'zeroshot'} "
                     f"--task zeroshot_classification {common} --output {dataset}_zeroshot.json")
    if retrieval:
        lines.append(f"clip_benchmark eval --dataset wds/{dataset}_retrieval --dataset_root {folder / 'retrieval'} "
                     f"--task zeroshot_retrieval --recall_k 1 5 10 {common} --output {dataset}_retrieval.json")
    return "\n".join(lines)


def readme_text(dataset: str, folder: Path, zeroshot_skipped: str, retrieval_skipped: str) -> str:
    """README.txt of the folder: what it holds, why a set is absent, and the commands that re-score it."""
    out = io.StringIO()
    out.write(f"The test sets `domainfm evaluate {dataset}` scored, in CLIP_benchmark's WebDataset layout\n"
              "(class names and prompt templates exactly as used), so a re-score reproduces our numbers.\n\n")
    out.write(f"zeroshot/: {'not written: ' + zeroshot_skipped if zeroshot_skipped else 'zero-shot classification set'}\n")
    out.write(f"retrieval/: {'not written: ' + retrieval_skipped if retrieval_skipped else 'image-text retrieval set'}\n")
    commands = rescore_commands(dataset, folder, not zeroshot_skipped, not retrieval_skipped)
    if commands:
        out.write(f"\nRe-score with clip_benchmark==1.6.2 (MODEL_DIR: an open_clip local-dir folder, e.g. exports/{dataset};\n"
                  "--no_amp: our evaluation runs in float32; R@k needs at least k images and k captions):\n\n")
        out.write(commands + "\n")
        out.write("\nclip_benchmark 1.6.2's zero-shot accuracy() fails under numpy >= 2.4; there, run\n"
                  "`python -m pipelines.evaluate.clip_benchmark eval ...` (its CLI with that one function fixed), same arguments.\n")
    return out.getvalue()


def write_not_applicable(folder: Path, dataset: str, reason: str) -> None:
    """Replace `folder` with a README.txt alone, saying why `dataset` has no CLIP_benchmark sets (the folder is a DVC output)."""
    with atomic_dir(folder) as tmp:
        (tmp / "README.txt").write_text(f"No CLIP_benchmark sets for {dataset}: {reason}\n", encoding="utf-8")


def benchmark_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """clip_benchmark 1.6.2's `metrics.zeroshot_classification.accuracy` (top-k hit rates), taking the counts with .item().

    The original does float() of a one-element numpy array, a TypeError since numpy 2.4.
    """
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def main() -> None:
    """`clip_benchmark` (its command line, arguments from sys.argv) with `benchmark_accuracy` in place of its accuracy()."""
    import clip_benchmark.cli
    import clip_benchmark.metrics.zeroshot_classification

    clip_benchmark.metrics.zeroshot_classification.accuracy = benchmark_accuracy
    clip_benchmark.cli.main()


if __name__ == "__main__":
    main()
