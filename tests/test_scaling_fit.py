"""Scaling-law fits: parameter recovery, family selection, data-needs inversion, refusals, concepts."""
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.scaling.concepts import count_mentions, fit_concept_frequency, long_tail, stem
from pipelines.scaling.fit import (
    FitRefused,
    Observations,
    PerExample,
    accuracy,
    balanced_accuracy,
    example_interval,
    fit_log_linear,
    fit_power_law,
    fit_scaling,
    macro_auroc,
    macro_f1,
    mean_hit_recall,
    mean_recall,
    pairs_needed,
    predict,
)

SIZES = np.array([100, 200, 400, 800, 1600, 3200, 6400, 12800])


def power_law_obs(rng, a=3.0, b=0.5, c=0.1, noise=0.004, seeds=5):
    n = np.repeat(SIZES, seeds)
    seed = np.tile(np.arange(seeds), len(SIZES))
    metric = 1 - (c + a * n ** -b) + rng.normal(0, noise, len(n))
    return Observations(n, seed, metric)


def test_power_law_recovers_parameters_with_noise():
    fit = fit_scaling(power_law_obs(np.random.default_rng(0)), "acc1", n_boot=200)
    pl = fit.fits["power_law"]
    assert abs(pl.params["b"] - 0.5) / 0.5 < 0.10
    lo, hi = pl.intervals["c"]
    assert lo <= 0.1 <= hi
    assert pl.r2 > 0.99
    assert fit.selected == "power_law"


def test_log_linear_data_selects_log_linear():
    rng = np.random.default_rng(1)
    n = np.repeat(SIZES, 4)
    metric = 0.05 + 0.06 * np.log(n) + rng.normal(0, 0.003, len(n))
    fit = fit_scaling(Observations(n, np.tile(np.arange(4), len(SIZES)), metric), "acc1", n_boot=100)
    assert fit.selected == "log_linear"
    assert abs(fit.fits["log_linear"].params["beta"] - 0.06) < 0.006
    ext = fit.fits["log_linear"].extrapolation
    assert ext is not None and ext.held_out_n == SIZES.max() and ext.abs_error < 0.01


def test_data_needs_inversion_exact_on_noiseless_curves():
    pl = fit_power_law(SIZES, 1 - (0.1 + 3.0 * SIZES ** -0.5))
    target = float(predict("power_law", pl, 5000.0))
    assert pairs_needed("power_law", pl, target) == pytest.approx(5000.0, rel=1e-4)
    ll = fit_log_linear(SIZES, 0.05 + 0.06 * np.log(SIZES))
    assert pairs_needed("log_linear", ll, 0.05 + 0.06 * math.log(777.0)) == pytest.approx(777.0, rel=1e-6)


def test_nearly_flat_power_law_needs_infinitely_many_pairs_without_overflow():
    assert pairs_needed("power_law", {"a": 0.5, "b": 1e-6, "c": 0.0}, 0.9) == math.inf
    assert pairs_needed("power_law", {"a": 0.5, "b": 0.5, "c": 0.0}, 0.9) == pytest.approx(25.0)


def test_error_that_does_not_fall_has_no_power_law_exponent():
    n = SIZES.astype(float)
    with pytest.raises(FitRefused, match="flat"):
        fit_power_law(n, 0.6 - 0.02 * np.log(n))  # the metric falls as N grows
    fit = fit_scaling(Observations(n, np.zeros(len(n)), 0.6 - 0.02 * np.log(n)), "m", n_boot=20)
    assert not fit.fits["power_law"].ok and fit.selected == "log_linear"


def test_target_above_asymptote_is_not_reachable():
    obs = power_law_obs(np.random.default_rng(2), noise=0.0, seeds=2)
    fit = fit_scaling(obs, "acc1", targets=[0.8, 0.95], n_boot=50)
    reachable, unreachable = fit.needs
    assert reachable.reachable and math.isfinite(reachable.n_pairs)
    assert not unreachable.reachable and math.isinf(unreachable.n_pairs)  # 1 - c = 0.9 < 0.95


@pytest.mark.parametrize(
    "n, metric, message",
    [
        ([100, 100, 200, 200], [0.2, 0.21, 0.3, 0.31], "distinct data size"),
        ([100, 200, 400], [0.3, 0.3, 0.3], "constant"),
        ([100, 200, 400], [0.3, float("nan"), 0.5], "non-finite"),
    ],
)
def test_degenerate_inputs_are_refused(n, metric, message):
    with pytest.raises(FitRefused, match=message):
        fit_power_law(n, metric)
    with pytest.raises(FitRefused, match=message):
        fit_log_linear(n, metric)
    fit = fit_scaling(Observations(n, np.zeros(len(n)), metric), "acc1", targets=[0.5], n_boot=10)
    assert fit.selected is None and message in fit.refused and fit.needs == []


def test_three_sizes_fit_but_no_extrapolation_check():
    n = np.array([100, 400, 1600])
    fit = fit_scaling(Observations(n, np.zeros(3), 0.1 + 0.05 * np.log(n)), "acc1", n_boot=10)
    assert fit.fits["log_linear"].ok and fit.fits["log_linear"].extrapolation is None
    assert "at least 4 sizes" in fit.fits["log_linear"].extrapolation_refused


def test_example_bootstrap_widens_intervals():
    # Same per-run metrics; resampling 200 examples adds their sampling noise to the intervals.
    rng = np.random.default_rng(3)
    n = np.repeat(SIZES, 2)
    p = 1 - (0.1 + 3.0 * n ** -0.5)
    correct = (rng.random((len(n), 200)) < p[:, None]).astype(float)
    value = correct.mean(axis=1)
    seeds = np.tile([0, 1], len(SIZES))
    with_examples = fit_scaling(Observations(n, seeds, value, PerExample(correct, accuracy())), "acc1", n_boot=200)
    seeds_only = fit_scaling(Observations(n, seeds, value), "acc1", n_boot=200)
    width = lambda f: np.subtract(*f.fits["log_linear"].intervals["beta"][::-1])  # noqa: E731
    assert width(with_examples) > width(seeds_only)


def test_example_bootstrap_of_constant_outcomes_has_zero_width():
    # Every example of a run has the same outcome (the run's metric): any resample of examples gives
    # back the same metrics, so with one seed every replicate is the point fit.
    n = SIZES.astype(float)
    metric = 1 - (0.1 + 3.0 * n ** -0.5)
    values = np.repeat(metric[:, None], 150, axis=1)
    examples = PerExample(values, lambda v, idx: v.mean(axis=1))
    fit = fit_scaling(Observations(n, np.zeros(len(n)), metric, examples), "m", n_boot=50)
    for family in ("power_law", "log_linear"):
        f = fit.fits[family]
        assert len(f.boot_params) == 50
        for name, (lo, hi) in f.intervals.items():
            assert hi - lo == pytest.approx(0.0, abs=1e-9), (family, name)
            assert lo == pytest.approx(f.params[name], rel=1e-6, abs=1e-9)
    per_run = example_interval(PerExample((values > 0.5).astype(float), accuracy()), n_boot=30)
    assert np.all(per_run[:, 1] == per_run[:, 2]) and np.all(per_run[:, 0] == per_run[:, 1])


def test_planted_power_law_is_recovered_from_per_example_outcomes():
    # One seed, 3000 Bernoulli outcomes per run whose success rate follows a known power law.
    rng = np.random.default_rng(7)
    n = SIZES.astype(float)
    p = 1 - (0.15 + 2.0 * n ** -0.4)
    correct = (rng.random((len(n), 3000)) < p[:, None]).astype(float)
    obs = Observations(n, np.zeros(len(n)), correct.mean(axis=1), PerExample(correct, accuracy()))
    fit = fit_scaling(obs, "acc1", n_boot=200)
    pl = fit.fits["power_law"]
    lo, hi = pl.intervals["b"]
    assert lo <= 0.4 <= hi and hi - lo < 0.4
    assert abs(pl.params["b"] - 0.4) < 0.1
    # and with 10x fewer examples the interval is wider: it measures the evaluation set's noise
    few = Observations(n, np.zeros(len(n)), correct[:, :300].mean(axis=1), PerExample(correct[:, :300], accuracy()))
    lo_few, hi_few = fit_scaling(few, "acc1", n_boot=200).fits["power_law"].intervals["b"]
    assert hi_few - lo_few > hi - lo


def test_clustered_examples_are_resampled_together():
    # Two clusters of opposite outcomes: a draw takes whole clusters, so a run's metric is 0, 0.5 or 1 only.
    values = np.array([[1, 1, 1, 0, 0, 0]], dtype=float)
    draws = example_interval(PerExample(values, accuracy(), np.array(["a", "a", "a", "b", "b", "b"])), n_boot=200, level=0.99)
    assert set(np.round(draws[0, 1:], 6)) <= {0.0, 0.5, 1.0}
    assert PerExample(values, accuracy(), np.array(["a", "a", "a", "b", "b", "b"])).units()[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="cluster ids"):
        PerExample(values, accuracy(), np.array(["a", "b"]))


def test_per_example_statistics_match_the_evaluation_metrics():
    import torch

    from pipelines.evaluate.metrics import RETRIEVAL_KS, retrieval_metrics, retrieval_ranks
    from pipelines.evaluate.volume import f1_binary, phenotype_auroc

    rng = np.random.default_rng(0)
    # retrieval: 30 images, 1-3 captions each
    owner = [i for i in range(30) for _ in range(1 + i % 3)]
    img = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(30, 8)), dtype=torch.float32), dim=1)
    txt = torch.nn.functional.normalize(img[owner] + 0.8 * torch.tensor(rng.normal(size=(len(owner), 8)), dtype=torch.float32), dim=1)
    ranks = retrieval_ranks(img, txt, owner)
    direction = np.array(["i2t"] * 30 + ["t2i"] * len(owner))
    values = np.concatenate([ranks["image_to_text"].numpy(), ranks["text_to_image"].numpy()])[None].astype(float)
    got = mean_recall(direction, RETRIEVAL_KS)(values, np.arange(values.shape[1]))[0]
    assert got == pytest.approx(retrieval_metrics(img, txt, owner)["mean_recall"], abs=1e-12)
    # phenotypes: macro AUROC over the phenotypes with both classes (the third has none positive)
    scores = rng.random((40, 3))
    targets = (rng.random((40, 3)) < 0.4).astype(int)
    targets[:, 2] = 0
    scores[:5, 0] = 0.5  # ties
    expected = phenotype_auroc(scores, targets, ["a", "b", "c"], n_boot=2)["macro_auroc"]
    assert macro_auroc(targets)(scores[None], np.arange(40))[0] == pytest.approx(expected, abs=1e-12)
    # findings: macro F1 ignoring -1
    labels = rng.integers(-1, 2, size=(40, 2))
    pred = rng.integers(0, 2, size=(40, 2))
    expected = np.mean([f1_binary(pred[labels[:, j] >= 0, j], labels[labels[:, j] >= 0, j]) for j in range(2)])
    assert macro_f1(labels)(pred[None].astype(float), np.arange(40))[0] == pytest.approx(expected)
    # balanced accuracy
    lab = np.array([0, 0, 0, 1])
    assert balanced_accuracy(lab)(np.array([[1, 1, 0, 1.0]]), np.arange(4))[0] == pytest.approx((2 / 3 + 1) / 2)


def test_stemmer_and_mentions():
    assert stem("roads") == stem("road") and stem("parking") == "park" and stem("buildings") == "build"
    assert stem("bus") == "bus" and stem("bed") == "bed"
    pairs = [["Residential Roads"], ["farmland", "farmland, next to a highway"], ["house"], ["parking lot"]]
    counts = count_mentions(pairs, ["road", "farmland", "parking lot", "water"], {"road": ["road", "highway"]})
    assert counts == {"road": 2, "farmland": 1, "parking lot": 1, "water": 0}  # a pair counts once


def test_unknown_synonym_class_is_an_error():
    with pytest.raises(ValueError, match="unknown class"):
        count_mentions([["x"]], ["road"], {"roads": ["street"]})


def test_concept_frequency_fit_and_long_tail():
    counts = {"a": 1, "b": 10, "c": 100, "d": 1000}
    acc = {k: 0.1 + 0.1 * math.log1p(v) for k, v in counts.items()}
    fit = fit_concept_frequency(counts, acc)
    assert fit.beta == pytest.approx(0.1) and fit.pearson_r == pytest.approx(1.0)
    assert [c for c, _, _ in long_tail(counts, acc, k=2)] == ["a", "b"]
    with pytest.raises(FitRefused, match="same accuracy"):
        fit_concept_frequency(counts, {k: 0.5 for k in counts})


def test_retrieval_hits_reproduce_recall_under_ties_where_first_hit_ranks_do_not(tmp_path):
    """Captions repeated word for word tie their scores: the per-query hits must score exactly as recall@k does."""
    import torch

    from pipelines.evaluate.metrics import RETRIEVAL_KS, retrieval_hits, retrieval_metrics, retrieval_ranks
    from pipelines.scaling.examples import retrieval_examples

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    vocabulary = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    owner = [i for i in range(40) for _ in range(2)]
    txt = vocabulary[torch.randint(0, 3, (len(owner),), generator=g)]  # three captions shared by 40 images: ties
    expected = retrieval_metrics(img, txt, owner)["mean_recall"]
    hits = retrieval_hits(img, txt, owner)
    ranks = retrieval_ranks(img, txt, owner)
    direction = np.array(["image_to_text"] * 40 + ["text_to_image"] * len(owner))
    every = np.arange(len(direction))
    as_hits = np.concatenate([hits["image_to_text"].numpy(), hits["text_to_image"].numpy()])[None].astype(float)
    as_ranks = np.concatenate([ranks["image_to_text"].numpy(), ranks["text_to_image"].numpy()])[None].astype(float)
    assert mean_hit_recall(direction)(as_hits, every)[0] == pytest.approx(expected, abs=1e-12)
    assert mean_recall(direction, RETRIEVAL_KS)(as_ranks, every)[0] != pytest.approx(expected, abs=1e-6)  # ties count optimistically
    # the sweep's reader takes the hits from the per-example tables the evaluate stage writes
    images = list(range(40)) + owner
    hit_columns = {f"hit@{k}": as_hits[0, :, j].astype(int) for j, k in enumerate(RETRIEVAL_KS)}
    table = pd.DataFrame({"direction": direction, "query": list(range(40)) + list(range(len(owner))), "image": images,
                          "rank": as_ranks[0].astype(int), **hit_columns})
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        table.to_csv(tmp_path / run / "per_example_retrieval.csv", index=False)
    examples = retrieval_examples([tmp_path / "a", tmp_path / "b"])
    assert examples.values.shape == (2, len(direction), len(RETRIEVAL_KS))
    assert examples.statistic(examples.values, every) == pytest.approx([expected, expected], abs=1e-12)
    assert len(examples.units()) == 40  # an image with its captions is one resampling unit
