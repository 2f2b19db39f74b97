"""CT evaluation metrics, the evaluate/export commands end to end, and the Python loader."""
from __future__ import annotations

import csv
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import yaml
from volume_fixture import write_synthetic_shards

from domains.ct.prompts import FINDING_PROMPTS
from pipelines.evaluate import volume as E
from pipelines.evaluate.stage import evaluate_domain
from pipelines.export.stage import export_domain
from pipelines.io import volume_shards as DS
from pipelines.train.stage import train_domain


def test_auroc_hand_computed():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won (0.35>0.1), (0.8>0.1), (0.8>0.4) -> 3/4
    assert E.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert E.auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)          # a tie counts half
    assert E.auroc([0.9, 0.1, 0.2], [0, 1, 1]) == pytest.approx(0.0)  # perfectly wrong
    assert math.isnan(E.auroc([0.2, 0.3], [1, 1]))                    # one class: undefined


def test_phenotype_auroc_bootstrap_interval_and_skipped():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(60, 3))
    y[:, 2] = 0  # only negatives: must be skipped and reported
    probs = np.clip(y * 0.3 + rng.uniform(0, 0.7, size=y.shape), 0, 1)
    res = E.phenotype_auroc(probs, y, ["a", "b", "c"], n_boot=300, seed=1)
    assert res["skipped"] == ["c"] and set(res["per_phenotype"]) == {"a", "b"}
    for v in res["per_phenotype"].values():
        assert v["ci_low"] <= v["auroc"] <= v["ci_high"]
        assert v["ci_high"] - v["ci_low"] > 0.01
    assert res["macro_auroc_ci_low"] <= res["macro_auroc"] <= res["macro_auroc_ci_high"]
    assert res["macro_auroc"] == pytest.approx(np.mean([E.auroc(probs[:, j], y[:, j]) for j in (0, 1)]))


def test_bootstrap_resamples_patients_not_studies():
    # 20 patients with 10 identical studies each: the studies add no information, so the interval
    # must be as wide as for 20 studies, not as narrow as for 200 independent ones
    rng = np.random.default_rng(0)
    y1 = rng.integers(0, 2, 20)
    p1 = np.clip(y1 * 0.25 + rng.uniform(0, 0.75, 20), 0, 1)
    y, probs = np.repeat(y1, 10)[:, None], np.repeat(p1, 10)[:, None]
    patients = [f"p{i}" for i in np.repeat(np.arange(20), 10)]
    by_study = E.phenotype_auroc(probs, y, ["a"], n_boot=400, seed=2)["per_phenotype"]["a"]
    by_patient = E.phenotype_auroc(probs, y, ["a"], n_boot=400, seed=2, patients=patients)["per_phenotype"]["a"]
    once = E.phenotype_auroc(p1[:, None], y1[:, None], ["a"], n_boot=400, seed=2)["per_phenotype"]["a"]
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(by_patient) > 2 * width(by_study)
    assert width(by_patient) == pytest.approx(width(once), rel=0.35)
    # a resample holds whole patients: each index set covers a patient's 10 studies together
    seen = []
    E.bootstrap_ci(lambda idx: seen.append(idx) or 0.0, 200, n_boot=5, clusters=patients)
    assert all(len(idx) == 200 and all(np.sum(idx // 10 == k) % 10 == 0 for k in range(20)) for idx in seen)


def test_zero_shot_f1_ignores_uncertain_labels():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.8, 0.6]])  # mean similarity with x-images 0.9, y-images 0.3
    neg = torch.tensor([[0.0, 1.0]])
    # predictions: [1, 0, 1, 0]; image 2 labelled -1 (ignored) although predicted positive
    labels = {"f": [1, 0, -1, 1]}
    res = E.zero_shot_findings(img, {"f": (pos, neg)}, labels)
    # over kept images 0, 1, 3: tp=1, fp=0, fn=1 -> F1 = 2/3
    assert res["f1"]["f"] == pytest.approx(2 / 3)
    assert res["support"]["f"] == 3 and res["accuracy"]["f"] == pytest.approx(2 / 3)
    assert res["macro_f1"] == pytest.approx(2 / 3)
    assert E.f1_binary([0, 0], [0, 0]) == 0.0


def test_retrieval_recall_through_score_inputs():
    from pipelines.evaluate.metrics import retrieval_metrics

    img = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    r = retrieval_metrics(img, img.clone(), list(range(12)), (1, 5, 10))
    assert r["text_retrieval_recall@1"] == 1.0
    shuffled = retrieval_metrics(img, img.roll(1, 0), list(range(12)), (1, 5, 10))
    assert shuffled["text_retrieval_recall@1"] < 0.5 and shuffled["text_retrieval_recall@10"] <= 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_e2e")
    data = root / "curated"
    labels = write_synthetic_shards(data, n=20, size=(16, 16, 12), seed=1, test_fraction=0.3)
    raw = root / "raw"
    raw.mkdir()
    with (raw / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "liver_lesion", "kidney_stone", "pleural_effusion", "splenomegaly", "ascites"])
        for i, (sid, lab) in enumerate(labels.items()):
            w.writerow([sid, lab["liver_lesion"], -1 if i % 4 == 0 else lab["kidney_stone"], lab["pleural_effusion"], 0, -1])
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"ct": {
        "base_model": {"input_size": [16, 16, 12], "image_width": 4, "embed_dim": 16, "text_hidden": 32, "text_layers": 1,
                       "text_heads": 2, "vocab_size": 150, "context_length": 32},
        "adapt": {"schedule": "staged", "stage1_steps": 3},
        "train": {"batch_size": 4, "max_steps": 8, "lr": 3e-3, "warmup_steps": 1, "precision": "fp32",
                  "grad_checkpointing": False, "checkpoint_every": 0},
        "evaluate": {"bootstrap": 100, "batch_size": 4},
        "curate": {"spatial_size": [16, 16, 12], "pixdim": [20.0, 20.0, 20.0]},
    }}))
    model = root / "model"
    train_domain("ct", data, model, params, metrics=root / "steps.csv")
    return {"root": root, "data": data, "raw": raw, "params": params, "model": model}


def test_evaluate_writes_every_declared_output(trained):
    out, plots = trained["root"] / "metrics", trained["root"] / "plots"
    evaluate_domain("ct", trained["model"], trained["raw"] / "zeroshot", trained["data"], out, plots, trained["params"])
    for name in ("metrics.json", "zeroshot_base.json", "zeroshot_adapted.json", "retrieval_base.json",
                 "retrieval_adapted.json", "per_class.csv", "hubness.json", "linear_probe.json"):
        assert (out / name).is_file(), name
    assert (plots / "phenotype_auroc.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"base", "adapted", "delta"}

    def numbers_only(node):
        return all(numbers_only(v) if isinstance(v, dict) else isinstance(v, (int, float)) and math.isfinite(v)
                   for v in node.values())

    assert numbers_only(metrics)
    assert {"phenotypes", "zeroshot", "retrieval"} <= set(metrics["adapted"])
    assert "findings_R@1" in metrics["adapted"]["retrieval"] and "impression_R@10" in metrics["base"]["retrieval"]
    d = metrics["delta"]["retrieval"]["findings_R@5"]
    assert d == pytest.approx(metrics["adapted"]["retrieval"]["findings_R@5"] - metrics["base"]["retrieval"]["findings_R@5"])
    zs = json.loads((out / "zeroshot_adapted.json").read_text())
    assert zs["task"] == "zeroshot_findings" and "liver_lesion" in zs["classnames"]
    assert zs["templates"]["liver_lesion"]["positive"]
    # splenomegaly is all 0 (scored), ascites all -1 (no labelled image: left out)
    assert "splenomegaly" in zs["metrics"]["f1"] and "ascites" not in zs["metrics"]["f1"]
    assert zs["metrics"]["n_images"] == 6
    with (out / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"base", "adapted"} and set(rows[0]) == {"model", "classname", "accuracy"}


def test_base_model_is_the_trainers_starting_point(trained):
    base = E.base_model_like(trained["model"])
    from pipelines.models.volume import load_model_dir

    adapted, _, _ = load_model_dir(trained["model"])
    w_base, w_adapted = base.visual.stages[0][0].conv1.conv.weight, adapted.visual.stages[0][0].conv1.conv.weight
    assert w_base.shape == w_adapted.shape and not torch.allclose(w_base, w_adapted)
    # the same seed rebuilds the same init: two calls agree exactly
    assert torch.equal(E.base_model_like(trained["model"]).phenotype_head.weight, base.phenotype_head.weight)


def test_export_and_loader(trained, tmp_path):
    metrics = trained["root"] / "metrics_for_export"
    E.evaluate_volume(trained["model"], trained["data"], trained["raw"], metrics, tmp_path / "plots",
                      E.VolumeEvaluateConfig(bootstrap=20), FINDING_PROMPTS, "ct")
    export = tmp_path / "export"
    export_domain("ct", trained["model"], export, metrics, trained["data"], trained["params"])
    for name in ("config.json", "model.safetensors", "tokenizer", "text_config", "preprocess.json", "README.md"):
        assert (export / name).exists(), name
    card = (export / "README.md").read_text()
    assert "phenotypes/macro_auroc" in card and "load_ct_model" in card

    from domains.ct.loader import load_ct_model

    model = load_ct_model(export)
    emb = model.embed_text(["there is a kidney stone", "no pleural effusion"])
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    sample = DS.split_index(trained["data"], "test")[0]
    v = model.embed_volume(torch.from_numpy(sample.volume)[None])
    assert v.shape == (1, 16)


@pytest.mark.skipif(importlib.util.find_spec("nibabel") is None, reason="nibabel not installed")
def test_loader_embeds_a_nifti_file(trained, tmp_path):
    pytest.importorskip("domains.ct.curation.preprocess", reason="domains/ct/preprocess.py (curation helper) not present")
    import nibabel as nib

    export = tmp_path / "export"
    export_domain("ct", trained["model"], export, None, trained["data"], trained["params"])
    from domains.ct.loader import load_ct_model

    model = load_ct_model(export)
    hu = np.full((40, 40, 30), -1000, np.int16)
    hu[8:32, 8:32, 5:25] = 40  # a soft-tissue block in air
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([10.0, 10.0, 10.0, 1.0])), str(path))
    emb = model.embed_image(path)
    assert emb.shape == (16,) and abs(np.linalg.norm(emb) - 1) < 1e-5
    probs = model.phenotype_probabilities(path)
    assert list(probs) == DS.read_phenotypes(trained["data"]) and all(0 < p < 1 for p in probs.values())


def _manifest_for_fixture(data):
    """A manifest for the synthetic shards: two studies per patient (the group)."""
    from pipelines.io.manifest import write_manifest
    from pipelines.io.shards import iter_tar_samples

    rows = []
    for shard in sorted((data / "shards").glob("*.tar")):
        for i, sample in enumerate(iter_tar_samples(shard)):
            meta = json.loads(sample["json"])
            key = sample["__key__"]
            rows.append({"id": key, "split": shard.name.split("-")[0], "shard": shard.name, "key": key,
                         "caption": sample["txt"].decode(), "caption_variants": meta["caption_variants"], "source": key,
                         "group": f"pt{int(key[-4:]) // 2}", "provenance": meta["provenance"]})
    write_manifest(rows, data)


def test_evaluate_writes_per_example_outcomes_that_give_back_its_metrics(trained, tmp_path):
    from pipelines.scaling import examples as X

    per_example = tmp_path / "per_example"
    evaluate_domain("ct", trained["model"], trained["raw"] / "zeroshot", trained["data"], tmp_path / "m", tmp_path / "p",
                    trained["params"], per_example_dir=per_example)
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    run = tmp_path / "run"
    run.mkdir()
    for table in ("phenotypes", "findings", "retrieval"):
        (run / f"per_example_{table}.csv").write_bytes((per_example / f"{table}_adapted.csv").read_bytes())
    pheno = X.phenotype_examples([run])
    assert pheno.statistic(pheno.values, np.arange(pheno.n_examples))[0] == pytest.approx(
        metrics["adapted"]["phenotypes"]["macro_auroc"], abs=1e-6)
    findings = X.findings_examples([run])
    assert findings.statistic(findings.values, np.arange(findings.n_examples))[0] == pytest.approx(
        metrics["adapted"]["zeroshot"]["macro_f1"], abs=1e-9)
    with (per_example / "retrieval_adapted.csv").open() as f:
        ranks = [r for r in csv.DictReader(f) if r["direction"] == "image_to_findings"]
    r_at_5 = np.mean([int(r["rank"]) <= 5 for r in ranks])
    assert r_at_5 == pytest.approx(metrics["adapted"]["retrieval"]["findings_R@5"])


def test_scaling_run_trains_the_volume_task_with_its_phenotypes(trained, tmp_path):
    from pipelines.scaling.sweep import sweep_run, write_subset

    data = tmp_path / "curated"
    import shutil

    shutil.copytree(trained["data"], data)
    _manifest_for_fixture(data)
    subset = write_subset(data, tmp_path / "subset", 0.5, seed=0)
    assert "phenotypes.json" in subset["copied"]  # the label space travels with the subset
    assert DS.read_phenotypes(tmp_path / "subset") == DS.read_phenotypes(data)
    train_keys = {s.key for s in DS.split_index(tmp_path / "subset", "train")}
    patients = {f"pt{int(k[-4:]) // 2}" for k in train_keys}
    all_train = {s.key for s in DS.split_index(data, "train")}
    assert train_keys == {k for k in all_train if f"pt{int(k[-4:]) // 2}" in patients}  # whole patients only
    assert len(train_keys) < len(all_train)

    params = yaml.safe_load(trained["params"].read_text())
    params["ct"]["scaling"] = {"train": {"max_steps": 4}, "adapt": {"stage1_steps": 2}, "evaluate": {"bootstrap": 10}}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out = tmp_path / "runs" / "f0.5-q1.0-s0"
    record = sweep_run("ct", data, trained["raw"] / "zeroshot", out, params_path, 0.5, 0)
    assert record["n_pairs"] == len(train_keys) and record["max_steps"] == 4
    files = {p.name for p in out.iterdir()}
    assert {"run.json", "metrics.json", "phenotypes_adapted.json", "zeroshot_adapted.json", "per_example_phenotypes.csv",
            "per_example_findings.csv", "per_example_retrieval.csv"} <= files
    metrics = json.loads((out / "metrics.json").read_text())
    assert "macro_auroc" in metrics["adapted"]["phenotypes"] and "macro_f1" in metrics["adapted"]["zeroshot"]
    with (out / "per_example_phenotypes.csv").open() as f:
        phenotypes = {r["phenotype"] for r in csv.DictReader(f)}
    assert phenotypes == set(DS.read_phenotypes(data))  # trained and scored with its phenotype heads
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind
