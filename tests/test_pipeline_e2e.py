"""The whole pipeline: `dvc repro` in a temporary copy of the project, on a tiny configuration."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from stage_deps import IMPORT_LOGGER, undeclared

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TINY = {
    "pretrain": {"n_samples": 384, "train": {"batch_size": 32, "epochs": 1, "warmup_steps": 2}},
    "remote_sensing": {
        "demo": {"scene_size_px": 1024, "zeroshot_per_class": 3, "zeroshot_size_px": 512},
        # a 1 km scene: tiles up to 160 m and 400 m ground cells; seed 6 gives both train and test ground
        "curate": {"workers": 1, "max_tile_m": 160, "split_cell_m": 400, "split_seed": 6},
        "train": {"batch_size": 32, "epochs": 2, "checkpoint_every": 5, "warmup_steps": 2},
        "scaling": {"train": {"batch_size": 16, "max_steps": 3, "warmup_steps": 1}},
    },
    "pathology": {
        "demo": {"n_videos": 2, "video_seconds": 24.0, "n_slides": 2, "slide_size": 2048, "zeroshot_per_class": 4},
        # seed 2: both slides train, one lecture test (which retrieval needs), one val
        "curate": {"workers": 1, "slides": {"max_tiles_per_slide": 12}, "split_seed": 2},
        "train": {"batch_size": 4, "epochs": 1, "checkpoint_every": 0, "warmup_steps": 1},
        "scaling": {"train": {"batch_size": 4, "max_steps": 3, "warmup_steps": 1}},
    },
    "ct": {
        "base_model": {"input_size": [32, 32, 24], "image_width": 8, "embed_dim": 32, "vocab_size": 400, "context_length": 64},
        "demo": {"n_patients": 24, "n_studies": 30, "shape": [48, 48, 32], "spacing": [6.0, 6.0, 10.0]},
        "curate": {"pixdim": [9.0, 9.0, 13.0], "spatial_size": [32, 32, 24], "min_positive": 1, "workers": 1},
        "adapt": {"stage1_epochs": 1},
        "train": {"batch_size": 4, "epochs": 2, "checkpoint_every": 0, "warmup_steps": 1},
        "evaluate": {"bootstrap": 50},
        "scaling": {"train": {"batch_size": 4, "max_steps": 3, "warmup_steps": 1}, "adapt": {"stage1_steps": 1},
                    "evaluate": {"bootstrap": 10}},
    },
    "pairs": {
        "demo": {"n_images": 60, "zeroshot_per_class": 4},
        "curate": {"workers": 1},
        "train": {"batch_size": 16, "epochs": 1, "warmup_steps": 1, "checkpoint_every": 0},
    },
    "scaling": {"fractions": [0.25, 0.5, 1.0], "seeds": [0], "quality_keep": [0.5], "quality_fractions": [0.5, 1.0],
                "quality_seeds": [0], "n_boot": 50},
}
DOMAINS = ("remote_sensing", "pathology", "ct", "pairs")


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd),
           **(extra_env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    dest = tmp_path_factory.mktemp("e2e") / "project"
    for f in files:
        src = REPO / f
        if src.is_file() and f != "dvc.lock":
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    params = merge(yaml.safe_load((dest / "params.yaml").read_text()), TINY)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    logger = dest.parent / "import_logger"  # records what every stage's process imports
    logger.mkdir()
    (logger / "sitecustomize.py").write_text(IMPORT_LOGGER)
    run(["dvc", "repro"], dest, {"PYTHONPATH": f"{logger}{os.pathsep}{dest}", "DOMAINFM_IMPORT_LOG": str(dest.parent / "imports.jsonl")})
    return dest


def test_repro_runs_every_stage_and_is_then_up_to_date(project):
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    stages = ["pretrain", "scaling-report@remote_sensing", "scaling-report@pathology", "scaling-report@ct", "scaling-index"]
    stages += [f"{s}@{d}" for d in DOMAINS for s in ("demo-data", "curate", "train", "evaluate", "export")]
    for stage in stages:
        assert stage in lock["stages"], stage
    assert "up to date" in run(["dvc", "status"], project).stdout


def test_every_stage_declares_the_code_it_imports(project):
    missing = undeclared(project, project.parent / "imports.jsonl")
    assert not missing, "stages import project files their dvc.yaml deps do not declare:\n" + json.dumps(missing, indent=1)


def test_metrics_compare_base_and_adapted(project):
    metrics = json.loads((project / "metrics/remote_sensing/metrics.json").read_text())
    for role in ("base", "adapted"):
        assert set(metrics[role]) == {"zeroshot", "retrieval", "hubness", "linear_probe", "general"}
    general = {role: metrics[role]["general"]["acc1"] for role in ("base", "adapted")}
    assert metrics["delta"]["general"]["acc1"] == pytest.approx(general["adapted"] - general["base"])  # what adaptation cost
    written = {p.name for p in (project / "metrics/remote_sensing").iterdir()}
    assert {"hubness.json", "linear_probe.json", "clip_benchmark", "wise.json"} <= written
    wise = json.loads((project / "metrics/remote_sensing/wise.json").read_text())
    assert [row["alpha"] for row in wise] == [0.0, 0.25, 0.5, 0.75, 1.0]
    delta = metrics["delta"]["zeroshot"]["acc1"]
    assert delta == pytest.approx(metrics["adapted"]["zeroshot"]["acc1"] - metrics["base"]["zeroshot"]["acc1"])
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    assert shown  # DVC reads the metrics file
    zs = json.loads((project / "metrics/remote_sensing/zeroshot_adapted.json").read_text())
    assert zs["task"] == "zeroshot_classification" and len(zs["classnames"]) == 7 and zs["templates"]
    assert (project / "plots/remote_sensing/confusion_adapted.png").stat().st_size > 0
    steps = (project / "metrics/remote_sensing/train_steps.csv").read_text().splitlines()
    assert steps[0] == "step,epoch,loss,lr,samples_per_s" and len(steps) > 2


def test_export_loads_in_stock_open_clip(project):
    export = project / "exports/remote_sensing"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export}")
    with torch.no_grad():
        emb = model.encode_text(tokenizer(["a satellite image of farmland."]), normalize=True)
    assert emb.shape == (1, 64) and torch.isfinite(emb).all()
    card = (export / "README.md").read_text()
    assert "## Evaluation" in card and "acc1" in card and "ODbL" in card
    assert (export / "adapter" / "adapter_config.json").is_file()
    assert (export / "hubness_bank.safetensors").is_file()  # the search commands' --correction


def test_scaling_report_is_written(project):
    report = project / "reports/remote_sensing"
    html = (report / "scaling.html").read_text()
    assert "data:image/png;base64," in html  # self-contained
    assert (report / "scaling.md").read_text().strip()
    assert "remote_sensing" in (project / "reports/index.html").read_text()
    runs = sorted(p.name for p in (project / "metrics/remote_sensing/scaling").iterdir())
    assert runs == ["f0.25-q1.0-s0", "f0.5-q0.5-s0", "f0.5-q1.0-s0", "f1.0-q0.5-s0", "f1.0-q1.0-s0"]
    for run in runs:
        assert (project / "metrics/remote_sensing/scaling" / run / "per_example_zeroshot.csv").is_file()
    ct_runs = project / "metrics/ct/scaling"
    for run in ct_runs.iterdir():
        assert {"per_example_phenotypes.csv", "per_example_findings.csv"} <= {p.name for p in run.iterdir()}
    ct_fits = json.loads((project / "metrics/scaling/ct.json").read_text())
    assert set(ct_fits["intervals"]) == {"phenotypes/macro_auroc", "zeroshot/macro_f1"}
    assert (project / "reports/remote_sensing/quality_fits.csv").is_file()


def test_pathology_pairs_from_videos_and_slides_and_its_export_loads(project):
    import pandas as pd

    manifest = pd.read_parquet(project / "data/pathology/curated/manifest.parquet")
    sources = set(manifest["source"].map(lambda s: Path(s).suffix))
    assert {".mp4", ".tiff"} <= sources  # frames of the lectures and tiles of the slides
    rejects = pd.read_csv(project / "data/pathology/curated/rejects.csv")
    reasons = set(rejects["reason"])
    assert "text slide" in reasons and reasons & {"face or presenter", "blank frame"}  # the detector, not the text stage
    metrics = json.loads((project / "metrics/pathology/metrics.json").read_text())
    assert {"zeroshot", "retrieval"} <= set(metrics["adapted"])
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{project / 'exports/pathology'}")
    assert model.visual is not None


def test_ct_metrics_and_export_load_through_the_documented_loader(project):
    metrics = json.loads((project / "metrics/ct/metrics.json").read_text())
    for role in ("base", "adapted"):
        assert {"phenotypes", "zeroshot", "retrieval"} <= set(metrics[role])
    sys.path.insert(0, str(project))
    try:
        from domains.ct.loader import load_ct_model

        ct = load_ct_model(project / "exports/ct")
        volume = sorted((project / "data/ct/raw/volumes").glob("*.nii.gz"))[0]
        probs = ct.phenotype_probabilities(volume)
        assert len(probs) > 0 and all(0.0 <= p <= 1.0 for p in probs.values())
        from domains.ct.prompts import FINDING_PROMPTS
        from pipelines.models.report_text import TextEncoderNotLoaded

        ct.embed_prompts(FINDING_PROMPTS)  # the export's own embeddings of them: no text encoder built
        assert isinstance(ct.net.text, TextEncoderNotLoaded)
    finally:
        sys.path.remove(str(project))


def test_pairs_is_a_domain_like_the_others_with_classes_from_params(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    zs = json.loads((project / "metrics/pairs/zeroshot_adapted.json").read_text())
    assert zs["classnames"] == params["pairs"]["evaluate"]["classnames"]
    assert zs["templates"] == params["pairs"]["evaluate"]["templates"]
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{project / 'exports/pairs'}")
    assert model.visual is not None
