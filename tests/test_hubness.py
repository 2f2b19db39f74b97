"""Hubness measures and corrections, checked against the papers' formulas on hand-made similarities."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluate.hubness import corrected_scores, db_norm, hubness, k_occurrence, modality_gap, qb_norm


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
