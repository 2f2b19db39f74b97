"""The scaling report builds from a fixture set of sweep results; subsets are nested and group-wise."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.scaling.report import build_report, load_runs, write_index
from pipelines.scaling.sweep import nested_train_ids, run_params, top_quality_ids

CLASSES = ["water", "forest", "road", "park"]
FRACTIONS = [0.0625, 0.125, 0.25, 0.5, 1.0]
N_FULL = 1600


def _manifest(n_groups=40, per_group=40):
    rows = []
    for g in range(n_groups):
        for i in range(per_group):
            caption = ["forest", "residential road", "highway", "park", "house"][(g + i) % 5]
            rows.append({"id": f"g{g}-{i}", "split": "test" if g % 10 == 0 else "train", "shard": None, "key": f"g{g}-{i}",
                         "caption": caption, "caption_variants": json.dumps({"title": caption}), "source": "s",
                         "group": f"grp{g}", "provenance": "{}", "quality_score": float("nan")})
    return pd.DataFrame(rows)


def _write_run(root, fraction, seed, quality, rng):
    n = int(N_FULL * fraction * quality)
    acc = 1 - (0.2 + 4.0 * n ** -0.5)
    per_class_p = {c: min(0.99, max(0.01, acc + d)) for c, d in zip(CLASSES, (0.2, 0.1, -0.1, -0.2))}
    # Deterministic correctness (the first p share of each class): the curve is known up to rounding.
    per_class = 250
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    correct = np.concatenate([np.arange(per_class) < round(per_class_p[c] * per_class) for c in CLASSES]).astype(int)
    run = root / f"f{fraction}-q{quality}-s{seed}"
    run.mkdir(parents=True)
    acc1 = correct.mean()
    recall = np.mean([correct[labels == k].mean() for k in range(len(CLASSES))])
    (run / "run.json").write_text(json.dumps({"fraction": fraction, "seed": seed, "quality_keep": quality, "n_pairs": n}))
    (run / "metrics.json").write_text(json.dumps({
        "base": {"zeroshot": {"acc1": 0.2, "mean_per_class_recall": 0.2}, "retrieval": {"mean_recall": 0.05}},
        "adapted": {"zeroshot": {"acc1": acc1, "mean_per_class_recall": recall},
                    "retrieval": {"mean_recall": 0.05 + 0.03 * np.log(n) + rng.normal(0, 0.005)}},
    }))
    (run / "zeroshot_adapted.json").write_text(json.dumps({
        "classnames": CLASSES, "per_class": {c: float(correct[labels == k].mean()) for k, c in enumerate(CLASSES)}}))
    per_example = pd.DataFrame({"example": np.arange(len(labels)), "label": labels, "correct": correct})
    per_example.to_csv(run / "per_example_zeroshot.csv", index=False)


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    for fraction in FRACTIONS:
        for seed in (0, 1):
            _write_run(runs, fraction, seed, 1.0, rng)
    for quality in (0.2, 0.5):
        for seed in (0, 1):
            _write_run(runs, 1.0, seed, quality, rng)
    data = tmp_path / "curated"
    data.mkdir()
    _manifest().to_parquet(data / "manifest.parquet", index=False)
    params = {"scaling": {"n_boot": 100}, "rs": {"scaling": {
        "targets": {"zeroshot/acc1": [0.7, 0.95]}, "synonyms": {"road": ["road", "highway"]}}}}
    return runs, data, params, tmp_path


def test_report_builds_from_fixture_sweep(sweep):
    runs, data, params, tmp = sweep
    out = tmp / "reports" / "rs"
    result = build_report("rs", runs, out, params, data)

    for name in ("scaling.md", "scaling.html", "scaling.csv", "concepts.csv", "fits.json",
                 "plots/scaling_zeroshot_acc1.png", "plots/concepts.png"):
        assert (out / name).is_file(), name
    html = (out / "scaling.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # three metrics + concepts, embedded
    assert "not reachable under this fit" in (out / "scaling.md").read_text()  # 0.95 > 1 - c = 0.8

    csv = pd.read_csv(out / "scaling.csv")
    assert len(csv) == 14 and {"fraction", "n_pairs", "seed", "zeroshot/acc1"} <= set(csv.columns)
    acc = result["metrics"]["zeroshot/acc1"]
    pl = acc["families"]["power_law"]
    assert acc["selected"] == "power_law"  # the fixture is a saturating power law
    assert abs(pl["params"]["b"] - 0.5) < 0.05
    assert pl["extrapolation"]["held_out_n"] == N_FULL and pl["bootstrap_fits"] > 90
    assert acc["needs"][0]["reachable"] and not acc["needs"][1]["reachable"]

    concepts = pd.read_csv(out / "concepts.csv").set_index("classname")
    assert concepts.loc["road", "mentions"] > concepts.loc["park", "mentions"]  # "highway" is a road synonym
    assert concepts.loc["water", "mentions"] == 0
    assert result["concepts"]["long_tail"][0][0] == "water"
    assert result["quality_sweep"] and {r["quality_keep"] for r in result["quality_sweep"]} == {0.2, 0.5, 1.0}

    index = write_index(tmp / "reports").read_text()
    assert 'href="rs/scaling.html"' in index


def test_report_records_refusal_for_too_few_sizes(sweep):
    runs, data, params, tmp = sweep
    few = tmp / "few"
    table = load_runs(runs)
    for run in table[table["fraction"].isin([0.5, 1.0]) & (table["quality_keep"] == 1.0)]["run_dir"]:
        shutil.copytree(run, few / Path(run).name)
    result = build_report("rs", few, tmp / "out", params, None)
    assert "at least 3" in result["refusals"]["zeroshot/acc1"]
    assert "refused" in (tmp / "out" / "scaling.md").read_text()


def test_subsets_are_nested_groupwise_and_seeded():
    manifest = _manifest()
    train = manifest[manifest["split"] == "train"]
    previous: set = set()
    for fraction in FRACTIONS:
        ids = set(nested_train_ids(manifest, fraction, seed=3))
        assert previous <= ids  # nested
        assert len(ids) >= fraction * len(train)
        groups = set(train[train["id"].isin(ids)]["group"])
        assert set(train[train["group"].isin(groups)]["id"]) == ids  # whole groups only
        previous = ids
    assert previous == set(train["id"])
    assert set(nested_train_ids(manifest, 0.25, 0)) != set(nested_train_ids(manifest, 0.25, 1))
    with pytest.raises(ValueError, match="fraction"):
        nested_train_ids(manifest, 0.0, 0)


def test_top_quality_and_run_params():
    scores = pd.Series([0.1, 0.9, 0.5, 0.7], index=["a", "b", "c", "d"])
    assert top_quality_ids(scores, 0.5) == ["b", "d"]
    params = {"rs": {"train": {"epochs": 30, "lr": 0.1, "seed": 0}, "scaling": {"train": {"max_steps": 60}}}}
    merged = run_params(params, "rs", seed=4)
    assert merged["rs"]["train"] == {"epochs": 30, "lr": 0.1, "seed": 4, "max_steps": 60}
    assert params["rs"]["train"]["seed"] == 0  # the caller's params are not modified
    # sweep runs of an image domain skip the evaluate stage's hubness and linear-probe analyses
    rs = run_params({"remote_sensing": {"train": {}, "evaluate": {"batch_size": 8}}}, "remote_sensing", 0)["remote_sensing"]
    assert rs["evaluate"] == {"batch_size": 8, "hubness": {"enabled": False}, "linear_probe": {"enabled": False}}
