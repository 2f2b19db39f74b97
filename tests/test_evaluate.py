"""Evaluation: exact metrics on hand-made scores, classifier averaging, and the evaluate stage end to end."""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from pipelines.evaluate.clip import caption_positives, evaluate
from pipelines.evaluate.metrics import retrieval_metrics, zero_shot_metrics
from pipelines.evaluate.zero_shot import build_zero_shot_classifier
from pipelines.io.png import encode_png

# ---------------------------------------------------------------- zero-shot metrics


def test_zero_shot_metrics_imbalanced_balanced_accuracy_differs_from_acc1():
    classnames = ["water", "forest", "road"]
    logits = torch.tensor(
        [
            [3.0, 2.0, 1.0],  # water -> water
            [3.0, 1.0, 2.0],  # water -> water
            [2.0, 3.0, 1.0],  # water -> forest
            [3.0, 2.0, 1.0],  # water -> water
            [3.0, 2.0, 1.0],  # forest -> water
            [1.0, 2.0, 3.0],  # road -> road
        ]
    )
    labels = [0, 0, 0, 0, 1, 2]
    m = zero_shot_metrics(logits, labels, classnames)
    assert m["acc1"] == pytest.approx(4 / 6)
    assert m["acc5"] == pytest.approx(1.0)  # k clipped to 3 classes: every label is in the top 3
    # recalls 3/4, 0, 1 -> mean 7/12, not acc1's 8/12
    assert m["mean_per_class_recall"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    assert m["per_class"] == pytest.approx({"water": 0.75, "forest": 0.0, "road": 1.0})
    assert m["support"] == {"water": 4, "forest": 1, "road": 1}
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_zero_shot_acc5_and_classes_without_samples():
    classnames = [f"c{i}" for i in range(7)]
    ranking = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])  # c0 best ... c6 worst
    logits = ranking.repeat(3, 1)
    labels = [0, 4, 5]  # rank 1 (top-1 hit), rank 5 (top-5 hit), rank 6 (miss)
    m = zero_shot_metrics(logits, labels, classnames)
    assert m["acc1"] == pytest.approx(1 / 3)
    assert m["acc5"] == pytest.approx(2 / 3)
    # only c0, c4, c5 have samples; their recalls are 1, 0, 0
    assert m["mean_per_class_recall"] == pytest.approx(1 / 3)
    assert m["per_class"]["c1"] is None
    assert m["confusion_matrix"][4] == [1, 0, 0, 0, 0, 0, 0]


def test_zero_shot_metrics_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        zero_shot_metrics(torch.zeros(2, 3), [0, 3], ["a", "b", "c"])


# ---------------------------------------------------------------- retrieval metrics


def _unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_retrieval_counts_every_caption_of_an_image_as_positive():
    image_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text_emb = torch.tensor(
        [
            _unit(0.6, 0.8),  # t0, image 0's first caption, but closer to image 1
            [1.0, 0.0],  # t1, image 0's second caption
            [0.0, 1.0],  # t2, image 1's caption
        ]
    )
    owner = [0, 0, 1]
    m = retrieval_metrics(image_emb, text_emb, owner, ks=(1, 5))
    # image -> text: image 0's best text is t1, its second caption: a hit; image 1 -> t2: a hit.
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)
    # Counting only the first caption as positive would miss image 0 (0.5): the case discriminates.
    top_text = (image_emb @ text_emb.T).argmax(dim=1).tolist()
    first_caption = {0: 0, 1: 2}
    assert sum(top_text[i] == first_caption[i] for i in range(2)) / 2 == 0.5
    # text -> image: t0 retrieves image 1 (miss), t1 and t2 hit.
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    # k=5 is clipped to the 2 images / 3 texts: everything is found.
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@5"] == pytest.approx(1.0)
    assert m["mean_recall"] == pytest.approx((2 / 3 + 1 + 1 + 1) / 4)


def test_retrieval_rejects_uncaptioned_images():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(torch.eye(3), torch.eye(3)[:2], [0, 1])


def test_caption_positives_are_unique_and_non_empty():
    meta = {"caption_variants": {"title": "a forest.", "title_multi_objects": "a forest and a road.", "empty": " "}}
    sample = {"txt": b"a forest.", "json": json.dumps(meta).encode()}
    assert caption_positives(sample) == ["a forest.", "a forest and a road."]


# ---------------------------------------------------------------- classifier


class _LookupTextModel(torch.nn.Module):
    """encode_text returns a fixed (unnormalized) vector per prompt; the tokenizer gives its index."""

    def __init__(self, vectors: dict[str, list[float]]):
        super().__init__()
        self.prompts = list(vectors)
        self.table = torch.tensor([vectors[p] for p in self.prompts])

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.prompts.index(t) for t in texts])

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.table[tokens]  # ignores `normalize` on purpose: the classifier must normalize


def test_classifier_is_normalized_mean_of_normalized_template_embeddings():
    model = _LookupTextModel(
        {
            "a photo of cat.": [2.0, 0.0, 0.0],  # norm 2: averaging raw vectors would tilt towards it
            "cat seen from above.": [0.0, 1.0, 0.0],
            "a photo of dog.": [0.0, 0.0, 3.0],
            "dog seen from above.": [0.0, 0.0, 1.0],
        }
    )
    weights = build_zero_shot_classifier(
        model, model.tokenizer, ["cat", "dog"], ["a photo of {c}.", "{c} seen from above."], batch_size=3
    )
    assert weights.shape == (3, 2)  # [embed_dim, n_classes]
    r = 1 / math.sqrt(2)
    assert weights[:, 0].tolist() == pytest.approx([r, r, 0.0])
    assert weights[:, 1].tolist() == pytest.approx([0.0, 0.0, 1.0])


# ---------------------------------------------------------------- evaluate, end to end


CLASSNAMES = ["water", "forest", "road"]
TEMPLATES = ["a satellite image of {c}.", "{c} seen from above."]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_zeroshot_set(folder: Path, labels: list[int], classnames: list[str] = CLASSNAMES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("\n".join(classnames) + "\n")
    with wds.TarWriter(str(folder / "test-000000.tar")) as w:
        for i, label in enumerate(labels):
            w.write({"__key__": f"s{i:03d}", "png": _png(i), "cls": str(label).encode("ascii")})


def _write_curated_shard(path: Path) -> int:
    """Three curated pairs; returns the number of unique non-empty captions."""
    samples = [
        ("a", "water.", {"title": "water.", "title_multi_objects": "water and a road."}),  # 2 unique
        ("b", "a forest.", {"title": "a forest.", "title_multi_objects": ""}),  # 1 unique
        ("c", "a road.", {"title": "a road near a forest.", "title_multi_objects": "two roads."}),  # 3 unique
    ]
    with wds.TarWriter(str(path)) as w:
        for i, (key, txt, variants) in enumerate(samples):
            meta = {"id": key, "caption_variants": variants}
            w.write({"__key__": key, "png": _png(100 + i), "txt": txt, "json": json.dumps(meta).encode()})
    return 6


@pytest.fixture(scope="module")
def tiny_models():
    from pipelines.models.clip import ModelSpec, load_model

    torch.manual_seed(0)
    loaded = load_model(ModelSpec("domainfm-tiny"))
    base = (loaded.model, loaded.preprocess_val, loaded.tokenizer)
    # An identical copy as "adapted": every delta must come out exactly 0.
    adapted = (copy.deepcopy(loaded.model), loaded.preprocess_val, loaded.tokenizer)
    return {"base": base, "adapted": adapted}


def _encoded_one_by_one(model, preprocess, images: list[bytes]) -> torch.Tensor:
    """The plain way: each image decoded and preprocessed as it is, one batch of them, L2-normalised."""
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
        return torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1)


def _odd_images() -> list[bytes]:
    """RGB PNGs and JPEGs of several sizes, greyscale, palette and RGBA PNGs (preprocessing resizes those before converting)."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(21):
        pixels = rng.integers(0, 256, (30 + i, 50 - i, 3), dtype=np.uint8)
        picture = Image.fromarray(pixels)
        if i == 3:
            picture = picture.convert("L")
        elif i == 7:
            picture = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        if i in (11, 13):  # as the curation writes them, RGB and RGBA (read on the PNG fast path, pipelines/io/png.py)
            out.append(encode_png(np.dstack([pixels, rng.integers(0, 256, pixels.shape[:2], dtype=np.uint8)]) if i == 13 else pixels))
            continue
        buf = io.BytesIO()
        picture.save(buf, format="JPEG" if i % 5 == 4 else "PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture
def base_in_eval(tiny_models):
    """The base model and its preprocessing, in eval mode (as evaluate puts it) for the test, then back in train mode."""
    model, preprocess, _ = tiny_models["base"]
    model.eval()
    yield model, preprocess
    model.train()


@pytest.mark.parametrize("batch_size,workers", [(8, 2), (64, 2), (8, 0)])
def test_image_embeddings_are_those_of_each_image_decoded_and_preprocessed_as_it_is(base_in_eval, batch_size, workers):
    """In order, image by image the plain way's, whatever the batches and decoding threads (a palette or grey image too)."""
    from pipelines.evaluate.clip import encode_images

    model, preprocess = base_in_eval
    images = _odd_images()
    got = encode_images(model, preprocess, images, "cpu", batch_size, workers)
    want = _encoded_one_by_one(model, preprocess, images)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    assert (got @ want.T).argmax(dim=1).tolist() == list(range(len(images)))  # each row is its own image's
    with pytest.raises(ValueError, match="no images"):
        encode_images(model, preprocess, [], "cpu", batch_size, workers)


def test_images_are_decoded_by_threads_beside_the_model_unless_workers_is_0(base_in_eval, monkeypatch):
    """With workers, decoding runs off the calling thread (on a CPU, in the threads that embed two batches at once)."""
    import threading

    import pipelines.evaluate.clip as evaluate_clip

    model, preprocess = base_in_eval
    threads = []
    real_open = evaluate_clip.open_image
    monkeypatch.setattr(evaluate_clip, "open_image", lambda data: threads.append(threading.current_thread()) or real_open(data))
    images = _odd_images()
    evaluate_clip.encode_images(model, preprocess, images, "cpu", 4, 2)
    assert len(threads) == len(images) and threading.main_thread() not in threads and len(set(threads)) == 2
    threads.clear()
    evaluate_clip.encode_images(model, preprocess, images, "cpu", 4, 0)
    assert set(threads) == {threading.main_thread()}


def test_evaluate_end_to_end_writes_every_output(tmp_path, tiny_models, capsys):
    zs_dir = tmp_path / "zeroshot"
    labels = [0, 0, 0, 1, 2, 2, 1]
    _write_zeroshot_set(zs_dir, labels)
    shard = tmp_path / "curated" / "test-000000.tar"
    shard.parent.mkdir()
    n_texts = _write_curated_shard(shard)
    out, plots = tmp_path / "eval", tmp_path / "plots"

    summary = evaluate(
        tiny_models, zs_dir, [str(shard)], CLASSNAMES, TEMPLATES, out, plots, "rs-demo",
        model_names={"base": "domainfm-tiny", "adapted": "domainfm-tiny+lora"}, batch_size=4,
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == summary
    assert set(metrics) == {"base", "adapted", "delta"}
    retrieval_keys = {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} | {"mean_recall"}
    for role in ("base", "adapted", "delta"):
        assert set(metrics[role]["zeroshot"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert set(metrics[role]["retrieval"]) == retrieval_keys
    for task in ("zeroshot", "retrieval"):
        for value in metrics["delta"][task].values():
            assert value == 0.0
        assert metrics["base"][task] == metrics["adapted"][task]
    # 3 classes: acc5 is clipped to top-3, so every sample is a hit.
    assert metrics["base"]["zeroshot"]["acc5"] == 1.0

    zs = json.loads((out / "zeroshot_adapted.json").read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics", "language", "classnames", "templates"} <= set(zs)
    assert (zs["dataset"], zs["model"], zs["pretrained"], zs["task"], zs["language"]) == (
        "rs-demo", "domainfm-tiny+lora", "adapted", "zeroshot_classification", "en")
    assert zs["classnames"] == CLASSNAMES and zs["templates"] == TEMPLATES
    assert zs["metrics"] == metrics["adapted"]["zeroshot"]
    assert sum(map(sum, zs["confusion_matrix"])) == len(labels)

    rt = json.loads((out / "retrieval_base.json").read_text())
    assert (rt["task"], rt["model"], rt["n_images"], rt["n_texts"]) == ("zeroshot_retrieval", "domainfm-tiny", 3, n_texts)
    assert rt["metrics"] == metrics["base"]["retrieval"]
    # With 3 images and 6 texts every k >= 5 retrieves everything.
    assert rt["metrics"]["image_retrieval_recall@5"] == 1.0 and rt["metrics"]["text_retrieval_recall@10"] == 1.0

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["model"] for r in rows] == ["base"] * 3 + ["adapted"] * 3
    assert [r["classname"] for r in rows[:3]] == CLASSNAMES
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)

    for role in ("base", "adapted"):
        assert (plots / f"confusion_{role}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        confusion = list(csv.DictReader((plots / f"confusion_{role}.csv").open()))
        assert [r["actual"] for r in confusion] == [CLASSNAMES[i] for i in labels]
        assert {r["predicted"] for r in confusion} <= set(CLASSNAMES)
    assert not list(out.glob(".*tmp*")) and not list(plots.glob(".*tmp*"))  # no temp files left

    table = capsys.readouterr().out
    assert "delta" in table and "zeroshot/acc1" in table and "retrieval/mean_recall" in table


def test_evaluate_per_example_outcomes_give_back_the_metrics(tmp_path, tiny_models):
    from pipelines.scaling import examples as X

    zs_dir = tmp_path / "zeroshot"
    _write_zeroshot_set(zs_dir, [0, 0, 0, 1, 2, 2, 1])
    shard = tmp_path / "curated" / "test-000000.tar"
    shard.parent.mkdir()
    _write_curated_shard(shard)
    out, per_example = tmp_path / "eval", tmp_path / "per_example"
    summary = evaluate({"adapted": tiny_models["adapted"]}, zs_dir, [str(shard)], CLASSNAMES, TEMPLATES, out, tmp_path / "plots",
                       "rs", batch_size=4, per_example_dir=per_example)
    run = tmp_path / "run"
    run.mkdir()
    for table in ("zeroshot", "retrieval"):
        (run / f"per_example_{table}.csv").write_bytes((per_example / f"{table}_adapted.csv").read_bytes())
    for reader, task, key in ((X.zeroshot_examples(False), "zeroshot", "acc1"),
                              (X.zeroshot_examples(True), "zeroshot", "mean_per_class_recall"),
                              (X.retrieval_examples, "retrieval", "mean_recall")):
        examples = reader([run])
        got = examples.statistic(examples.values, np.arange(examples.n_examples))[0]
        assert got == pytest.approx(summary["adapted"][task][key], abs=1e-12), key
    rows = list(csv.DictReader((per_example / "retrieval_adapted.csv").open()))
    assert {r["direction"] for r in rows} == {"image_to_text", "text_to_image"}
    assert all(int(r["rank"]) >= 1 for r in rows)
    assert not (out / "per_example").exists()  # only where asked


def test_evaluate_skips_missing_tasks_with_a_message(tmp_path, tiny_models, capsys):
    empty = tmp_path / "zeroshot"
    empty.mkdir()
    out = tmp_path / "eval"
    summary = evaluate(
        {"base": tiny_models["base"]}, empty, [], CLASSNAMES, TEMPLATES, out, tmp_path / "plots", "rs-demo"
    )
    assert summary == {"base": {}}
    printed = capsys.readouterr().out
    assert "skipping zero-shot" in printed and "skipping retrieval" in printed
    assert json.loads((out / "metrics.json").read_text()) == {"base": {}}
    assert (out / "per_class.csv").read_text() == "model,classname,accuracy\n"
    # the declared result files exist (DVC needs them) and hold the reason, no metrics
    skipped = json.loads((out / "zeroshot_base.json").read_text())
    assert skipped["metrics"] == {} and "no .tar shards" in skipped["skipped"]
    assert json.loads((out / "retrieval_base.json").read_text())["metrics"] == {}


def test_evaluate_rejects_label_outside_classnames(tmp_path, tiny_models):
    zs_dir = tmp_path / "zeroshot"
    _write_zeroshot_set(zs_dir, [0, 5])
    with pytest.raises(ValueError, match=r"cls=5, outside the 3 class names"):
        evaluate({"base": tiny_models["base"]}, zs_dir, [], None, TEMPLATES, tmp_path / "eval", tmp_path / "plots", "rs")


def test_evaluate_device_comes_from_params_and_is_checked(tmp_path):
    from pipelines.evaluate.clip import ClipEvaluateConfig
    from pipelines.params import ParamsError, read

    path = tmp_path / "params.yaml"
    path.write_text("remote_sensing:\n  evaluate: {device: cpu}\n")
    assert read(path, ClipEvaluateConfig, "remote_sensing", "evaluate").device == "cpu"
    assert ClipEvaluateConfig().device == "auto"  # the GPU when there is one
    path.write_text("remote_sensing:\n  evaluate: {device: tpu}\n")
    with pytest.raises(ParamsError, match="remote_sensing.evaluate.device"):
        read(path, ClipEvaluateConfig, "remote_sensing", "evaluate")
