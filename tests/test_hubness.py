"""Hubness measures and corrections, checked against the papers' formulas on hand-made similarities."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from pipelines.evaluate.analyses import sample_bank, write_skipped
from pipelines.evaluate.hubness import (
    CORRECTIONS,
    HubnessConfig,
    corrected_scores,
    db_norm,
    hubness,
    hubness_summary,
    k_occurrence,
    modality_gap,
    qb_norm,
    retrieval_hubness,
)
from pipelines.evaluate.linear_probe import LinearProbeConfig


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_k_occurrence_and_skewness_see_a_hub() -> None:
    rng = np.random.default_rng(0)
    balanced = np.eye(20) + rng.uniform(0, 0.01, (20, 20))  # each query's own item first
    assert (k_occurrence(balanced, k=1) == 1).all()
    assert hubness(balanced, k=1) == {"n1_skewness": 0.0, "never_in_top1": 0.0}
    hubbed = balanced.copy()
    hubbed[:, 7] = 2.0  # item 7 tops every query
    stats = hubness(hubbed, k=1)
    assert stats["n1_skewness"] > 4 and stats["never_in_top1"] == pytest.approx(19 / 20)


def test_inverted_softmax_is_the_papers_formula() -> None:
    rng = np.random.default_rng(1)
    sim, bank = rng.uniform(-1, 1, (3, 5)), rng.uniform(-1, 1, (4, 5))
    beta = 7.0
    direct = np.exp(beta * sim) / np.exp(beta * bank).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(np.exp(qb_norm(sim, bank, beta=beta, dynamic=False)), direct, rtol=1e-10)
    # large beta: log space does not overflow and ranks like the exact formula
    assert np.isfinite(qb_norm(sim, bank, beta=2000.0, dynamic=False)).all()


def test_dynamic_inverted_softmax_normalises_only_queries_whose_top_item_is_active() -> None:
    sim = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.8]])
    bank = np.array([[0.95, 0.0, 0.1], [0.9, 0.2, 0.0]])  # the bank's top-1 items: only item 0
    out = qb_norm(sim, bank, beta=5.0, k=1, dynamic=True)
    np.testing.assert_allclose(out[1], sim[1])  # top-1 is item 2, not active: raw scores
    np.testing.assert_allclose(out[0], qb_norm(sim, bank, beta=5.0, dynamic=False)[0])


def test_dual_inverted_softmax_multiplies_both_banks_terms() -> None:
    rng = np.random.default_rng(2)
    sim, qbank, gbank = rng.uniform(-1, 1, (3, 6)), rng.uniform(-1, 1, (5, 6)), rng.uniform(-1, 1, (4, 6))
    b1, b2 = 0.5, 3.0
    direct = (np.exp(b1 * sim) / np.exp(b1 * qbank).sum(0)) * (np.exp(b2 * sim) / np.exp(b2 * gbank).sum(0))
    np.testing.assert_allclose(np.exp(db_norm(sim, qbank, gbank, b1, b2, dynamic=False)), direct, rtol=1e-10)
    # the reference code's bug (normalising the gallery bank's own similarities) would not depend on `sim`
    assert not np.allclose(db_norm(sim, qbank, gbank, b1, b2, dynamic=False), db_norm(sim * 0.5, qbank, gbank, b1, b2, dynamic=False))


def test_corrections_raise_recall_when_a_shared_direction_makes_hubs() -> None:
    rng = np.random.default_rng(3)
    d, n = 32, 200
    common = unit(rng.standard_normal(d))
    gallery = unit(rng.standard_normal((n, d)))
    gallery[:5] = unit(gallery[:5] + 3 * common)  # five items lie along the direction every query shares
    queries = unit(gallery + 0.9 * rng.standard_normal((n, d)) / np.sqrt(d) + 0.8 * common)
    bank = unit(unit(rng.standard_normal((n, d))) + 0.9 * rng.standard_normal((n, d)) / np.sqrt(d) + 0.8 * common)
    gallery_bank = unit(rng.standard_normal((n, d)))
    gallery_bank[:5] = unit(gallery_bank[:5] + 3 * common)

    def r1(scores: np.ndarray) -> float:
        return float((scores.argmax(1) == np.arange(n)).mean())

    raw = corrected_scores("none", queries, gallery, None, None, 20, 3)
    qb = corrected_scores("qb_norm", queries, gallery, bank, None, 20, 3)
    db = corrected_scores("db_norm", queries, gallery, bank, gallery_bank, 20, 3)
    assert hubness(qb)["n10_skewness"] < hubness(raw)["n10_skewness"]
    assert r1(qb) > r1(raw) and r1(db) > r1(raw)
    with pytest.raises(ValueError, match="needs a query bank"):
        corrected_scores("qb_norm", queries, gallery, None, None, 20, 3)


def test_modality_gap_alignment_and_uniformity() -> None:
    rng = np.random.default_rng(4)
    img = unit(rng.standard_normal((50, 8)))
    shift = np.zeros(8)
    shift[0] = 0.5
    gap = modality_gap(img, img + shift)
    assert gap["gap"] == pytest.approx(0.5) and gap["alignment"] == pytest.approx(0.25)
    same = modality_gap(np.tile(img[:1], (5, 1)), np.tile(img[:1], (5, 1)))
    assert same["uniformity_image"] == pytest.approx(0.0) and same["alignment"] == 0.0
    assert modality_gap(img, img)["uniformity_image"] < -1  # spread points are more uniform than one point


# ---------------------------------------------------------------- on a retrieval set, and in the evaluate stage


def planted_hub(seed: int = 5, n: int = 150, d: int = 32) -> dict[str, np.ndarray]:
    """Captions share a direction; one image in `n` lies along it (test image 0: a hub); the banks are drawn like the test set."""
    rng = np.random.default_rng(seed)
    common = unit(rng.standard_normal(d))

    def pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
        images = unit(rng.standard_normal((m, d)))
        texts = unit(images + 1.2 * rng.standard_normal((m, d)) / np.sqrt(d) + 0.8 * common)
        images[::n] = unit(images[::n] + 3 * common)
        return images, texts

    images, texts = pairs(n)
    bank_images, bank_texts = pairs(4 * n)
    return {"images": images, "texts": texts, "owner": np.arange(n), "bank_images": bank_images, "bank_texts": bank_texts}


def test_corrections_lower_a_planted_hubs_k_occurrence_and_the_skewness() -> None:
    s = planted_hub()
    cfg = HubnessConfig(beta=20.0)
    report = retrieval_hubness(s["images"], s["texts"], s["owner"], s["bank_images"], s["bank_texts"], cfg)
    t2i = report["text_to_image"]
    hub_count = {}
    for name, correction in CORRECTIONS.items():
        scores = corrected_scores(correction, s["texts"], s["images"], s["bank_texts"], s["bank_images"], 20.0, 20.0)
        hub_count[name] = k_occurrence(scores, 10)[0]
    assert hub_count["plain"] > 0.5 * len(s["texts"])  # the plant worked: the hub is in most top 10s
    assert hub_count["qb_norm"] < 0.5 * hub_count["plain"] and hub_count["db_norm"] < 0.5 * hub_count["plain"]
    for name in ("qb_norm", "db_norm"):
        assert t2i[name]["n10_skewness"] < t2i["plain"]["n10_skewness"] - 1
        assert t2i[name]["never_in_top10"] <= t2i["plain"]["never_in_top10"]
        assert t2i[name]["recall@1"] > t2i["plain"]["recall@1"] + 0.1  # measured: 0.75 plain, 0.93 qb_norm, 0.92 db_norm
    assert report["bank"] == {"images": 600, "texts": 600}
    summary = hubness_summary(report, 10)
    assert summary["n10_skewness"] == t2i["plain"]["n10_skewness"] and summary["r1_qb_norm"] == t2i["qb_norm"]["recall@1"]
    assert summary["modality_gap"] == pytest.approx(np.linalg.norm(s["images"].mean(0) - s["texts"].mean(0)), rel=1e-5)


def test_without_banks_the_corrected_metrics_are_the_plain_ones() -> None:
    s = planted_hub(n=40)
    empty = np.zeros((0, s["images"].shape[1]))
    report = retrieval_hubness(s["images"], s["texts"], s["owner"], empty, empty, HubnessConfig(bank_size=0))
    for direction in ("text_to_image", "image_to_text"):
        assert report[direction]["qb_norm"] == report[direction]["plain"] == report[direction]["db_norm"]
    assert report["bank"] == {"images": 0, "texts": 0}


def test_plain_recall_equals_the_retrieval_metrics() -> None:
    from pipelines.evaluate.metrics import retrieval_metrics

    rng = np.random.default_rng(7)
    images, texts = unit(rng.standard_normal((30, 8))), unit(rng.standard_normal((70, 8)))
    owner = np.concatenate([np.arange(30), rng.integers(0, 30, 40)])  # several captions for some images
    report = retrieval_hubness(images, texts, owner, np.zeros((0, 8)), np.zeros((0, 8)), HubnessConfig())
    reference = retrieval_metrics(torch.as_tensor(images), torch.as_tensor(texts), owner.tolist())
    for k in (1, 5, 10):
        assert report["text_to_image"]["plain"][f"recall@{k}"] == pytest.approx(reference[f"image_retrieval_recall@{k}"])
        assert report["image_to_text"]["plain"][f"recall@{k}"] == pytest.approx(reference[f"text_retrieval_recall@{k}"])


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_pairs(path: Path, n: int, first: int, uncaptioned: int = 0) -> None:
    with wds.TarWriter(str(path)) as w:
        for i in range(first, first + n):
            variants = {"title": f"picture {i}.", "title_multi_objects": f"picture {i} with things."}
            w.write({"__key__": f"p{i:03d}", "png": _png(i), "txt": f"picture {i}.",
                     "json": json.dumps({"caption_variants": variants}).encode()})
        for i in range(uncaptioned):
            w.write({"__key__": f"u{i:03d}", "png": _png(900 + i)})


def test_bank_is_a_seeded_uniform_sample_of_captioned_train_pairs(tmp_path) -> None:
    shards = [tmp_path / "train-000000.tar", tmp_path / "train-000001.tar"]
    _write_pairs(shards[0], 6, 0, uncaptioned=2)
    _write_pairs(shards[1], 4, 6)
    bank = sample_bank([str(p) for p in shards], 4, seed=0)
    assert bank.n_available == 10 and len(bank.images) == len(bank.texts) == 4
    assert bank == sample_bank([str(p) for p in shards], 4, seed=0)
    index = {_png(i): i for i in range(10)}
    picked = [index[img] for img in bank.images]
    assert picked == sorted(set(picked))  # distinct, in shard order
    assert all(text in (f"picture {i}.", f"picture {i} with things.") for i, text in zip(picked, bank.texts))
    everything = sample_bank([str(p) for p in shards], 50, seed=0)
    assert [index[img] for img in everything.images] == list(range(10))
    # reservoir sampling: every pair is kept with probability 4/10, wherever it sits in the shards
    counts = np.zeros(10)
    for seed in range(300):
        counts[[index[img] for img in sample_bank([str(p) for p in shards], 4, seed=seed).images]] += 1
    assert np.all(np.abs(counts / 300 - 0.4) < 0.1)


@pytest.fixture(scope="module")
def tiny_pair():
    from pipelines.models.clip import ModelSpec, load_model

    torch.manual_seed(0)
    loaded = load_model(ModelSpec("domainfm-tiny"))
    triple = (loaded.model, loaded.preprocess_val, loaded.tokenizer)
    return {"base": triple, "adapted": (copy.deepcopy(loaded.model), loaded.preprocess_val, loaded.tokenizer)}


def test_evaluate_writes_hubness_and_linear_probe_records(tmp_path, tiny_pair) -> None:
    from pipelines.evaluate.clip import evaluate
    from pipelines.export.clip import render_card
    from pipelines.models.adapt import AdaptConfig
    from pipelines.models.clip import ModelSpec

    zs = tmp_path / "zeroshot"
    zs.mkdir()
    (zs / "classnames.txt").write_text("water\nforest\nroad\n")
    with wds.TarWriter(str(zs / "test-000000.tar")) as w:
        for i in range(18):
            w.write({"__key__": f"z{i:03d}", "png": _png(500 + i), "cls": str(i % 3).encode()})
    (tmp_path / "shards").mkdir()
    test_shard, train_shard = tmp_path / "shards" / "test-000000.tar", tmp_path / "shards" / "train-000000.tar"
    _write_pairs(test_shard, 4, 0)
    _write_pairs(train_shard, 6, 100)
    out = tmp_path / "eval"
    args = (tiny_pair, zs, [str(test_shard)], None, ["a photo of {c}."], out, tmp_path / "plots", "demo")

    metrics = evaluate(*args, batch_size=8, hubness=HubnessConfig(bank_size=4), linear_probe=LinearProbeConfig(shots=[1, 2, 4], seeds=2),
                       bank_shards=[str(train_shard)])

    hub = json.loads((out / "hubness.json").read_text())
    probe = json.loads((out / "linear_probe.json").read_text())
    assert set(hub) == set(probe) == {"base", "adapted"}
    record = hub["base"]
    assert set(record) == {"settings", "text_to_image", "image_to_text", "modality_gap", "bank", "n_images", "n_texts"}
    assert record["bank"] == {"images": 4, "texts": 4, "drawn_from": 6} and record["settings"]["bank_size"] == 4
    for direction in ("text_to_image", "image_to_text"):
        assert set(record[direction]) == {"plain", "qb_norm", "db_norm"}
        assert set(record[direction]["qb_norm"]) == {"n10_skewness", "never_in_top10", "recall@1", "recall@5", "recall@10"}
    assert set(record["modality_gap"]) == {"gap", "alignment", "uniformity_image", "uniformity_text"}
    assert hub["adapted"] == hub["base"]  # the same weights: the same analyses

    # 6 images per class: 3 probe-test, 1 probe-val, 2 to draw shots from
    assert set(probe["base"]["shots"]) == {"1", "2", "4"} and "skipped" in probe["base"]["shots"]["4"]
    assert probe["base"]["split"]["test"] == 9 and probe["base"]["full"]["n_train"] == 9

    assert set(metrics["base"]["hubness"]) == {"n10_skewness", "never_retrieved", "r1_plain", "r1_qb_norm", "r1_db_norm", "modality_gap"}
    assert metrics["base"]["hubness"]["r1_plain"] == metrics["base"]["retrieval"]["image_retrieval_recall@1"]
    assert set(metrics["adapted"]["linear_probe"]) == {"k1", "k2", "full"}
    assert all(v == 0.0 for task in ("hubness", "linear_probe") for v in metrics["delta"][task].values())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    card = render_card({"metrics": metrics}, ModelSpec("domainfm-tiny"), AdaptConfig(mode="frozen"), "demo")
    assert "### Hubness" in card and "| modality_gap |" in card and "### Linear Probe" in card

    # switched off: the declared files hold the reason, metrics.json has no such group
    off = evaluate(*args, batch_size=8, hubness=HubnessConfig(enabled=False), linear_probe=LinearProbeConfig(enabled=False))
    assert json.loads((out / "hubness.json").read_text())["base"] == {"skipped": "evaluate.hubness.enabled is false"}
    assert json.loads((out / "linear_probe.json").read_text())["adapted"] == {"skipped": "evaluate.linear_probe.enabled is false"}
    assert "hubness" not in off["base"] and "linear_probe" not in off["base"]

    # not asked (library callers): no files at all; a model family without them: files that say so
    evaluate(*args[:5], tmp_path / "bare", tmp_path / "plots", "demo", batch_size=8)
    assert not (tmp_path / "bare" / "hubness.json").exists() and not (tmp_path / "bare" / "linear_probe.json").exists()
    write_skipped(tmp_path / "ct", ["base", "adapted"], "open_clip only")
    assert json.loads((tmp_path / "ct" / "linear_probe.json").read_text()) == {"base": {"skipped": "open_clip only"},
                                                                               "adapted": {"skipped": "open_clip only"}}
