"""Our evaluation re-scored by the clip_benchmark package itself on the sets evaluate writes in its wds layout.

A tiny open_clip export, a zero-shot set and a curated retrieval shard in our formats; `evaluate`
scores them and writes OUT/clip_benchmark/{zeroshot,retrieval}; then clip_benchmark 1.6.2's own
command-line entry point (`clip_benchmark eval ...`, run in-process) scores the same export on those
folders, and both must agree.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import clip_benchmark.cli
import clip_benchmark.metrics.zeroshot_classification as cb_zeroshot
import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from pipelines.errors import InputError
from pipelines.evaluate.clip import evaluate, load_retrieval_set, load_zeroshot_set
from pipelines.evaluate.clip_benchmark import benchmark_accuracy, readme_text, to_benchmark_template, write_not_applicable
from pipelines.evaluate.zero_shot import build_zero_shot_classifier
from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

CLASSNAMES = ["adipose tissue", "lymphocytes", "mucus", "stroma", "adenocarcinoma", "necrosis"]
# The last template has literal braces: written doubled for clip_benchmark's str.format.
TEMPLATES = ["a histopathology image of {c}.", "an H&E stained image of {c}.", "{c} {x40}"]
ZS_LABELS = [c for c in range(len(CLASSNAMES)) for _ in range(5)]
N_RETRIEVAL = 14  # recall@10 in clip_benchmark needs at least 10 images and 10 captions


def _image(seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.normal(0, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "model"
    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    return folder


@pytest.fixture(scope="module")
def scored(tmp_path_factory, export):
    """Our evaluation of the export on a zero-shot set and a retrieval shard in our own formats."""
    root = tmp_path_factory.mktemp("sets")
    zs_dir = root / "zeroshot"
    zs_dir.mkdir()
    (zs_dir / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    with wds.TarWriter(str(zs_dir / "test-000000.tar")) as w:
        for i, label in enumerate(ZS_LABELS):
            w.write({"__key__": f"zs{i:03d}", "png": _image(i), "cls": str(label).encode("ascii")})
    shard = root / "curated" / "test-000000.tar"
    shard.parent.mkdir()
    with wds.TarWriter(str(shard)) as w:
        for i in range(N_RETRIEVAL):
            variants = {"title": f"a patch of tissue number {i}", "two_lines": f"tissue {i}\nunder the microscope"}
            image = {"jpg": _image(100 + i, "JPEG")} if i % 3 == 0 else {"png": _image(100 + i)}  # both kept as they are
            w.write({"__key__": f"pair{i:03d}", **image, "txt": f"an H&E image of sample {i}.",
                     "json": json.dumps({"caption_variants": variants}).encode()})
        w.write({"__key__": "nocaption", "png": _image(999), "txt": "  "})  # left out of the set: nothing retrieves it

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export}")
    out = root / "metrics"
    summary = evaluate({"adapted": (model.eval(), preprocess, tokenizer)}, zs_dir, [str(shard)], None, TEMPLATES,
                       out, root / "plots", "tinypath", batch_size=8)
    return out, summary["adapted"], zs_dir, shard


@pytest.fixture
def fixed_accuracy(monkeypatch):
    # clip_benchmark 1.6.2's accuracy() does float(<1-element ndarray>), which numpy >= 2.4 refuses (TypeError:
    # only 0-dimensional arrays can be converted to Python scalars). Patched here, as
    # `python -m pipelines.evaluate.clip_benchmark` does, rather than pinning numpy below 2.4 for the whole
    # project: the same counts, taken with .item().
    monkeypatch.setattr(cb_zeroshot, "accuracy", benchmark_accuracy)


def clip_benchmark_eval(monkeypatch, tmp_path, *argv: str) -> dict:
    """Run `clip_benchmark eval ARGV` through the package's own entry point; returns its result JSON."""
    output = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "eval", *argv, "--output", str(output), "--quiet"])
    clip_benchmark.cli.main()
    return json.loads(output.read_text())


def test_writes_both_sets_in_clip_benchmark_wds_layout(scored):
    out, _, _, _ = scored
    zs, rt = out / "clip_benchmark" / "zeroshot", out / "clip_benchmark" / "retrieval"
    assert (zs / "test" / "nshards.txt").read_text().strip() == "1" and (zs / "test" / "0.tar").is_file()
    assert (zs / "classnames.txt").read_text().splitlines() == CLASSNAMES
    assert (zs / "zeroshot_classification_templates.txt").read_text().splitlines() == [
        "a histopathology image of {c}.", "an H&E stained image of {c}.", "{c} {{x40}}"]
    assert not (zs / "dataset_type.txt").exists()  # clip_benchmark's default type: classification
    assert (rt / "dataset_type.txt").read_text().strip() == "retrieval"
    assert (rt / "test" / "nshards.txt").read_text().strip() == "1"
    samples = list(wds.WebDataset(str(rt / "test" / "0.tar"), shardshuffle=False))
    assert len(samples) == N_RETRIEVAL  # the caption-less image is not in the set
    assert sum("jpg" in s for s in samples) == 5 and sum("png" in s for s in samples) == 9  # encodings kept
    assert samples[1]["txt"].decode().splitlines() == [
        "an H&E image of sample 1.", "a patch of tissue number 1", "tissue 1 under the microscope"]
    readme = (out / "clip_benchmark" / "README.txt").read_text()
    assert "clip_benchmark eval --dataset wds/tinypath_zeroshot" in readme and "--task zeroshot_retrieval" in readme


def test_our_loader_reads_the_written_sets_back(scored):
    out, _, zs_dir, shard = scored
    ours = load_zeroshot_set(zs_dir, None, TEMPLATES)
    written = load_zeroshot_set(out / "clip_benchmark" / "zeroshot")  # classnames, templates and shards from the folder
    assert (written.images, written.labels, written.classnames, written.templates) == (
        ours.images, ours.labels, ours.classnames, ours.templates)
    retrieval = load_retrieval_set([str(shard)])
    assert "tissue 3 under the microscope" in retrieval.texts  # line breaks in a caption read as a space


def test_clip_benchmark_rescores_our_zeroshot_numbers(scored, export, fixed_accuracy, monkeypatch, tmp_path):
    out, ours, _, _ = scored
    result = clip_benchmark_eval(
        monkeypatch, tmp_path, "--dataset", "wds/tinypath_zeroshot", "--dataset_root", str(out / "clip_benchmark" / "zeroshot"),
        "--task", "zeroshot_classification", "--model", f"local-dir:{export}", "--pretrained", "domainfm",
        "--no_amp", "--num_workers", "0", "--batch_size", "7", "--save_clf", str(tmp_path / "clf.pt"))
    theirs = result["metrics"]
    assert result["task"] == "zeroshot_classification"
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        assert theirs[metric] == pytest.approx(ours["zeroshot"][metric], abs=0.005), metric
    # Stronger than the scores of a tiny random model: its class weights, built from the shipped class names and
    # templates, are ours (the prompts a template or class name off by one character would change).
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{export}")
    weights = build_zero_shot_classifier(model.eval(), open_clip.get_tokenizer(f"local-dir:{export}"), CLASSNAMES, TEMPLATES)
    # map_location: clip_benchmark builds it on CUDA when there is one; our weights are on the CPU.
    torch.testing.assert_close(torch.load(tmp_path / "clf.pt", map_location="cpu", weights_only=True), weights, atol=1e-4, rtol=0)


def test_clip_benchmark_rescores_our_retrieval_numbers(scored, export, monkeypatch, tmp_path):
    out, ours, _, _ = scored
    result = clip_benchmark_eval(
        monkeypatch, tmp_path, "--dataset", "wds/tinypath_retrieval", "--dataset_root", str(out / "clip_benchmark" / "retrieval"),
        "--task", "zeroshot_retrieval", "--recall_k", "1", "5", "10", "--model", f"local-dir:{export}", "--pretrained", "domainfm",
        "--no_amp", "--num_workers", "0", "--batch_size", "5")
    theirs = result["metrics"]
    assert set(theirs) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    for metric, value in theirs.items():
        assert value == pytest.approx(ours["retrieval"][metric], abs=0.005), metric


def test_templates_and_names_clip_benchmark_cannot_read_back_are_refused(tmp_path, export):
    assert to_benchmark_template("{c} in {{braces}}") == "{c} in {{{{braces}}}}"
    assert to_benchmark_template("{c} in {{braces}}").format(c="x") == "x in {{braces}}"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    zs_dir = tmp_path / "zeroshot"
    zs_dir.mkdir()
    with wds.TarWriter(str(zs_dir / "test-000000.tar")) as w:
        w.write({"__key__": "a", "png": _image(0), "cls": b"0"})
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export}")
    with pytest.raises(InputError, match="class name 'stroma ' cannot be written"):
        evaluate({"base": (model, preprocess, tokenizer)}, zs_dir, [], ["stroma "], TEMPLATES, tmp_path / "out", tmp_path / "plots", "x")


def test_readme_names_skipped_sets():
    text = readme_text("ct", Path("metrics/ct/clip_benchmark"), "no zero-shot folder given", "")
    assert "zeroshot/: not written: no zero-shot folder given" in text
    assert "wds/ct_zeroshot" not in text and "wds/ct_retrieval" in text


def test_a_volume_domain_gets_the_folder_with_a_readme_alone(tmp_path):
    folder = tmp_path / "clip_benchmark"
    (folder / "zeroshot").mkdir(parents=True)  # a previous run's set must not survive
    write_not_applicable(folder, "ct", "a 3D model")
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
    assert (folder / "README.txt").read_text() == "No CLIP_benchmark sets for ct: a 3D model\n"


def test_retrieval_recall_equals_clip_benchmarks_when_captions_repeat_word_for_word() -> None:
    """Captions repeat across images ("a parking lot"): tied scores must fall as CLIP_benchmark's topk lets them fall."""
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    from pipelines.evaluate.metrics import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=-1)
    vocabulary = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)  # six distinct captions
    owner = [i // 2 for i in range(80)]  # two captions per image
    texts = vocabulary[torch.randint(0, 6, (80,), generator=g)]  # ... drawn from six: exact ties everywhere
    ours = retrieval_metrics(images, texts, owner, (1, 5, 10))
    scores = texts @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(80), owner] = True
    for k in (1, 5, 10):
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx((recall_at_k(scores, positive, k) > 0).float().mean().item())
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx((recall_at_k(scores.T, positive.T, k) > 0).float().mean().item())
