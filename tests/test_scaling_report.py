"""The scaling report builds from a fixture set of sweep results; subsets are nested and group-wise."""
import json
import math
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


# planted error-rate exponent per quality level: filtered data learns faster here
PLANTED_B = {1.0: 0.5, 0.5: 0.8}
QUALITY_FRACTIONS = [0.125, 0.25, 0.5, 1.0]


def _write_run(root, fraction, seed, quality, rng):
    n = int(N_FULL * fraction * quality)
    acc = 1 - (0.2 + 4.0 * n ** -PLANTED_B[quality])
    per_class_p = {c: min(0.99, max(0.01, acc + d)) for c, d in zip(CLASSES, (0.2, 0.1, -0.1, -0.2))}
    # Deterministic correctness (the first p share of each class): the curve is known up to rounding.
    per_class = 250
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    correct = np.concatenate([np.arange(per_class) < round(per_class_p[c] * per_class) for c in CLASSES]).astype(int)
    run = root / f"f{fraction}-q{quality}-s{seed}"
    run.mkdir(parents=True)
    acc1 = correct.mean()
    recall = np.mean([correct[labels == k].mean() for k in range(len(CLASSES))])
    # retrieval: 40 images with 2 captions each; first-hit ranks shrink as n grows
    ranks = np.maximum(1, np.round(rng.exponential(60.0 / np.log(n), size=120))).astype(int)
    direction = ["image_to_text"] * 40 + ["text_to_image"] * 80
    owner = list(range(40)) + [i // 2 for i in range(80)]
    mean_recall = np.mean([(ranks[np.array(direction) == d] <= k).mean() for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)])
    (run / "run.json").write_text(json.dumps({"fraction": fraction, "seed": seed, "quality_keep": quality, "n_pairs": n}))
    (run / "metrics.json").write_text(json.dumps({
        "base": {"zeroshot": {"acc1": 0.2, "mean_per_class_recall": 0.2}, "retrieval": {"mean_recall": 0.05}},
        "adapted": {"zeroshot": {"acc1": acc1, "mean_per_class_recall": recall}, "retrieval": {"mean_recall": mean_recall}},
    }))
    (run / "zeroshot_adapted.json").write_text(json.dumps({
        "classnames": CLASSES, "per_class": {c: float(correct[labels == k].mean()) for k, c in enumerate(CLASSES)}}))
    per_example = pd.DataFrame({"example": np.arange(len(labels)), "label": labels, "correct": correct})
    per_example.to_csv(run / "per_example_zeroshot.csv", index=False)
    pd.DataFrame({"direction": direction, "query": list(range(40)) + list(range(80)), "image": owner, "rank": ranks}).to_csv(
        run / "per_example_retrieval.csv", index=False)


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    for fraction in FRACTIONS:
        for seed in (0, 1):
            _write_run(runs, fraction, seed, 1.0, rng)
    for fraction in QUALITY_FRACTIONS:
        _write_run(runs, fraction, 0, 0.5, rng)
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

    for name in ("scaling.md", "scaling.html", "scaling.csv", "concepts.csv", "fits.json", "quality_fits.csv", "quality_curves.csv",
                 "plots/scaling_zeroshot_acc1.png", "plots/quality_zeroshot_acc1.png", "plots/concepts.png"):
        assert (out / name).is_file(), name
    html = (out / "scaling.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # three metrics, three quality plots, concepts: embedded
    md = (out / "scaling.md").read_text()
    assert "not reachable under this fit" in md  # 0.95 > 1 - c = 0.8
    assert "percentile intervals over 100 bootstrap replicates" in md and "zero-shot images" in md

    csv = pd.read_csv(out / "scaling.csv")
    assert len(csv) == 14
    assert {"fraction", "n_pairs", "seed", "zeroshot/acc1", "zeroshot/acc1:low", "zeroshot/acc1:high"} <= set(csv.columns)
    assert (csv["zeroshot/acc1:low"] <= csv["zeroshot/acc1"]).all() and (csv["zeroshot/acc1"] <= csv["zeroshot/acc1:high"]).all()
    assert (csv["retrieval/mean_recall:high"] > csv["retrieval/mean_recall:low"]).all()
    acc = result["metrics"]["zeroshot/acc1"]
    pl = acc["families"]["power_law"]
    assert acc["selected"] == "power_law"  # the fixture is a saturating power law
    assert abs(pl["params"]["b"] - 0.5) < 0.05
    assert pl["extrapolation"]["held_out_n"] == N_FULL and pl["bootstrap_fits"] > 90
    assert acc["needs"][0]["reachable"] and not acc["needs"][1]["reachable"]
    for metric in ("zeroshot/acc1", "retrieval/mean_recall"):
        assert "resampling 2 seed(s) and" in result["intervals"][metric]
    assert "retrieval images" in result["intervals"]["retrieval/mean_recall"]

    # one power law per quality level, recovering the planted exponents
    quality = pd.read_csv(out / "quality_fits.csv")
    acc_q = quality[quality["metric"] == "zeroshot/acc1"].set_index("quality_keep")
    assert set(acc_q.index) == {0.5, 1.0}
    for level, b in PLANTED_B.items():
        assert abs(acc_q.loc[level, "b"] - b) < 0.15, level
        assert acc_q.loc[level, "b_low"] <= b <= acc_q.loc[level, "b_high"], level
    assert acc_q.loc[0.5, "b"] > acc_q.loc[1.0, "b"]
    assert acc_q.loc[0.5, "runs"] == 4 and acc_q.loc[1.0, "runs"] == 10
    curves = pd.read_csv(out / "quality_curves.csv")
    assert set(curves[curves["metric"] == "zeroshot/acc1"]["quality_keep"]) == {0.5, 1.0}
    assert (curves["lower"] <= curves["upper"]).all()
    assert set(result["quality_curves"]["zeroshot/acc1"]) == {"0.5", "1.0"}
    assert "one curve per quality level" in md

    concepts = pd.read_csv(out / "concepts.csv").set_index("classname")
    assert concepts.loc["road", "mentions"] > concepts.loc["park", "mentions"]  # "highway" is a road synonym
    assert concepts.loc["water", "mentions"] == 0
    assert result["concepts"]["long_tail"][0][0] == "water"

    index = write_index(tmp / "reports").read_text()
    assert 'href="rs/scaling.html"' in index


def test_inconsistent_per_example_outcomes_fall_back_to_seeds(sweep):
    runs, data, params, tmp = sweep
    table = load_runs(runs)
    run = Path(table["run_dir"].iloc[0]) / "per_example_zeroshot.csv"
    frame = pd.read_csv(run)
    frame["correct"] = 1 - frame["correct"]
    frame.to_csv(run, index=False)
    result = build_report("rs", runs, tmp / "out", params, None)
    assert "seed(s) only" in result["intervals"]["zeroshot/acc1"] and "not its recorded" in result["intervals"]["zeroshot/acc1"]


def _write_volume_run(root, fraction, rng, n_full=400):
    """A volume-domain run: per-study phenotype probabilities and finding predictions that sharpen with n."""
    n = int(n_full * fraction)
    signal = 3.0 * (1 - 2.0 * n ** -0.5)
    studies = [f"st{i}" for i in range(60)]
    groups = [f"pt{i // 2}" for i in range(60)]  # two studies per patient
    targets = (np.arange(60)[:, None] * np.array([1, 7, 13]) % 5 < 2).astype(int)  # fixed across runs
    scores = 1 / (1 + np.exp(-(signal * (2 * targets - 1) + rng.normal(0, 1.5, targets.shape))))
    labels = np.where(np.arange(60)[:, None] % 9 == 0, -1, targets[:, :2])
    predicted = (signal * (2 * np.clip(labels, 0, 1) - 1) + rng.normal(0, 2.0, labels.shape) > 0).astype(int)
    pheno = pd.DataFrame([(studies[i], groups[i], f"ph{j}", int(targets[i, j]), float(scores[i, j]))
                          for i in range(60) for j in range(3)], columns=["study", "group", "phenotype", "target", "score"])
    findings = pd.DataFrame([(studies[i], groups[i], f"f{j}", int(labels[i, j]), 0.0, int(predicted[i, j]))
                             for i in range(60) for j in range(2)], columns=["study", "group", "finding", "label", "margin", "predicted"])
    from pipelines.scaling.fit import macro_auroc, macro_f1

    auc = macro_auroc(targets)(scores[None], np.arange(60))[0]
    f1 = macro_f1(labels)(predicted[None].astype(float), np.arange(60))[0]
    run = root / f"f{fraction}-q1.0-s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"fraction": fraction, "seed": 0, "quality_keep": 1.0, "n_pairs": n}))
    (run / "metrics.json").write_text(json.dumps({
        "base": {"phenotypes": {"macro_auroc": 0.5}, "zeroshot": {"macro_f1": 0.3}},
        "adapted": {"phenotypes": {"macro_auroc": auc}, "zeroshot": {"macro_f1": f1}}}))
    (run / "zeroshot_adapted.json").write_text(json.dumps({"classnames": ["f0", "f1"], "f1": {}}))
    pheno.sample(frac=1.0, random_state=int(n)).to_csv(run / "per_example_phenotypes.csv", index=False)  # any row order
    findings.to_csv(run / "per_example_findings.csv", index=False)
    return auc


def test_volume_domain_report_fits_phenotype_auroc_and_findings_f1(tmp_path):
    rng = np.random.default_rng(1)
    aucs = [_write_volume_run(tmp_path / "runs", f, rng) for f in FRACTIONS]
    assert aucs[-1] > aucs[0]
    data = tmp_path / "curated"
    data.mkdir()
    _manifest().to_parquet(data / "manifest.parquet", index=False)
    params = {"scaling": {"n_boot": 60}, "vol": {"scaling": {"metrics": ["phenotypes/macro_auroc", "zeroshot/macro_f1"],
                                                             "targets": {"phenotypes/macro_auroc": [0.9]}}}}
    out = tmp_path / "out"
    result = build_report("vol", tmp_path / "runs", out, params, data)
    assert set(result["metrics"]) == {"phenotypes/macro_auroc", "zeroshot/macro_f1"}
    auroc_fit = result["metrics"]["phenotypes/macro_auroc"]
    assert auroc_fit["selected"] and auroc_fit["families"]["power_law"]["bootstrap_fits"] > 50
    lo, hi = auroc_fit["families"]["power_law"]["intervals"]["b"]
    assert lo < hi
    for metric in result["metrics"]:
        assert "30 patients" in result["intervals"][metric]  # 60 studies, resampled by patient
    csv = pd.read_csv(out / "scaling.csv")
    assert {"phenotypes/macro_auroc:low", "zeroshot/macro_f1:high"} <= set(csv.columns)
    assert (out / "plots/scaling_phenotypes_macro_auroc.png").is_file()
    assert not (out / "plots/quality_phenotypes_macro_auroc.png").exists()  # one quality level: no comparison
    assert pd.read_csv(out / "concepts.csv").empty and "per-class" in result["concepts"]["note"]


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


def test_pair_subsets_are_nested_and_may_split_groups():
    manifest = _manifest()
    train = manifest[manifest["split"] == "train"]
    previous: set = set()
    for fraction in FRACTIONS:
        ids = set(nested_train_ids(manifest, fraction, seed=3, unit="pair"))
        assert previous <= ids  # nested
        assert len(ids) == math.ceil(fraction * len(train))  # single pairs: exactly the share asked for
        previous = ids
    assert previous == set(train["id"])
    smallest = set(nested_train_ids(manifest, FRACTIONS[0], seed=3, unit="pair"))
    groups = set(train[train["id"].isin(smallest)]["group"])
    assert set(train[train["group"].isin(groups)]["id"]) != smallest  # some group was split: pairs, not groups


def test_top_quality_and_run_params():
    scores = pd.Series([0.1, 0.9, 0.5, 0.7], index=["a", "b", "c", "d"])
    assert top_quality_ids(scores, 0.5) == ["b", "d"]
    params = {"rs": {"train": {"epochs": 30, "lr": 0.1, "seed": 0}, "scaling": {"train": {"max_steps": 60}}}}
    merged = run_params(params, "rs", seed=4)
    assert merged["rs"]["train"] == {"epochs": 30, "lr": 0.1, "seed": 4, "max_steps": 60}
    assert params["rs"]["train"]["seed"] == 0  # the caller's params are not modified
    # sweep runs of an image domain skip the evaluate stage's analyses, the general set and the WiSE-FT curve
    rs = run_params({"remote_sensing": {"train": {}, "evaluate": {"batch_size": 8, "general": "data/general/shapes"}}},
                    "remote_sensing", 0)["remote_sensing"]
    assert rs["evaluate"] == {"batch_size": 8, "hubness": {"enabled": False}, "linear_probe": {"enabled": False}, "general": None,
                              "wise": {"alphas": [], "export_alpha": None}}


def test_run_params_merge_adapt_and_evaluate_overrides_which_the_schema_checks():
    import yaml

    from pipelines.schema import check

    params = {"ct": {"train": {"epochs": 40, "seed": 0}, "adapt": {"schedule": "staged", "stage1_epochs": 5},
                     "evaluate": {"bootstrap": 1000, "split": "test"},
                     "scaling": {"train": {"max_steps": 10}, "adapt": {"stage1_steps": 3}, "evaluate": {"bootstrap": 20}}}}
    ct = run_params(params, "ct", seed=2)["ct"]
    assert ct["train"] == {"epochs": 40, "seed": 2, "max_steps": 10}
    assert ct["adapt"] == {"schedule": "staged", "stage1_epochs": 5, "stage1_steps": 3}
    assert ct["evaluate"] == {"bootstrap": 20, "split": "test"}  # a volume domain: no hubness/probe keys added
    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    assert check(raw) == []
    raw["ct"]["scaling"]["adapt"]["stage1_stepz"] = 3
    raw["pathology"]["scaling"]["evaluate"]["batch_sise"] = 3
    problems = check(raw)
    assert any("ct.scaling.adapt.stage1_stepz: not a ct.adapt key" in p for p in problems)
    assert any("pathology.scaling.evaluate.batch_sise: not a pathology.evaluate key" in p for p in problems)
