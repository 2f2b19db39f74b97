"""Linear probes on frozen embeddings: the split, the shots, accuracy on separable data, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluate.linear_probe import LinearProbeConfig, linear_probe, probe_split, probe_summary, shot_order
from pipelines.params import ParamsError, build


def clusters(n_classes: int, per_class: int, noise: float, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm features around one random centre per class; labels class-major."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_split_is_stratified_disjoint_and_depends_on_labels_and_seed_only() -> None:
    labels = np.repeat(np.arange(4), [40, 40, 10, 3])
    split = probe_split(labels, test_fraction=0.5, val_fraction=0.2, seed=0)
    parts = [set(split.pool), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == len(labels) and set().union(*parts) == set(range(len(labels)))
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    per_class = {c: (int((labels[split.test] == c).sum()), int((labels[split.val] == c).sum()), int((labels[split.pool] == c).sum()))
                 for c in range(4)}
    # 40 -> 20 test, 4 val, 16 pool; 10 -> 5, 1, 4; 3 -> round(1.5) = 2 test, then one image left: no val, pool 1
    assert per_class == {0: (20, 4, 16), 1: (20, 4, 16), 2: (5, 1, 4), 3: (2, 0, 1)}
    again = probe_split(labels, 0.5, 0.2, seed=0)
    assert all((a == b).all() for a, b in zip((split.pool, split.val, split.test), (again.pool, again.val, again.test)))
    assert not np.array_equal(probe_split(labels, 0.5, 0.2, seed=1).test, split.test)


def test_shots_of_a_seed_are_nested_and_seeds_differ() -> None:
    labels = np.repeat(np.arange(3), 20)
    pool = np.arange(60)
    first, second = shot_order(labels, pool, (0, 0)), shot_order(labels, pool, (0, 1))
    for c, order in first.items():
        assert sorted(order.tolist()) == list(range(20 * c, 20 * c + 20))  # a permutation of the class's pool
    assert any(not np.array_equal(first[c][:4], second[c][:4]) for c in first)


def test_separable_embeddings_reach_full_accuracy() -> None:
    x, y = clusters(4, 40, noise=0.05)
    record = linear_probe(x, y, LinearProbeConfig(shots=[1, 16], seeds=2))
    assert record["full"]["acc1"] == 1.0 and record["full"]["mean_per_class_recall"] == 1.0
    assert record["shots"]["16"]["acc1_mean"] == 1.0
    # 40 per class: 20 test, 4 val, a pool of 16: every seed's 16 shots are the whole pool, and the record says so
    assert "same shots" in record["shots"]["16"]["note"] and "note" not in record["shots"]["1"]
    assert record["full"]["n_train"] == record["split"]["pool"] + record["split"]["val"]


def test_accuracy_improves_with_shots_on_overlapping_classes() -> None:
    x, y = clusters(5, 60, noise=1.8, dim=32, seed=3)
    summary = probe_summary(linear_probe(x, y, LinearProbeConfig(shots=[1, 4, 16], seeds=3)))
    assert set(summary) == {"k1", "k4", "k16", "full"}
    # measured: k1 0.63, k4 0.77, k16 0.86, full 0.87
    assert summary["k1"] + 0.1 < summary["k4"] and summary["k4"] + 0.05 < summary["k16"]
    assert summary["k16"] <= summary["full"] + 0.05


def test_deterministic_for_a_seed_and_skips_k_beyond_the_pool() -> None:
    x, y = clusters(3, 12, noise=0.8, seed=5)
    cfg = LinearProbeConfig(shots=[1, 2, 8], seeds=3)
    first, second = linear_probe(x, y, cfg), linear_probe(x, y, cfg)
    assert first == second
    # 12 per class: 6 test, 1 val, 5 in the pool: 8 shots cannot be drawn
    assert "holds fewer" in first["shots"]["8"]["skipped"]
    assert set(probe_summary(first)) == {"k1", "k2", "full"}
    runs = first["shots"]["2"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and all(r["C"] in cfg.c_values for r in runs)
    assert first["shots"]["2"]["acc1_std"] == pytest.approx(np.std([r["acc1"] for r in runs], ddof=1))


def test_one_class_is_skipped_and_bad_settings_are_refused() -> None:
    x, y = clusters(1, 10, noise=0.1)
    record = linear_probe(x, y, LinearProbeConfig())
    assert "two classes" in record["skipped"] and probe_summary(record) == {}
    with pytest.raises(ParamsError, match="shots must be >= 1"):
        build(LinearProbeConfig, {"shots": [0, 2]}, "pairs.evaluate.linear_probe")
    with pytest.raises(ParamsError, match="test_fraction"):
        build(LinearProbeConfig, {"test_fraction": 1.0}, "pairs.evaluate.linear_probe")
