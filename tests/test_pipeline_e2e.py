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

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TINY = {
    "pretrain": {"n_samples": 384, "train": {"batch_size": 32, "epochs": 1, "warmup_steps": 2}},
    "remote_sensing": {
        "demo": {"scene_size_px": 1024, "zeroshot_per_class": 3, "zeroshot_size_px": 512},
        "curate": {"workers": 1, "block_size_m": 128},
        "train": {"batch_size": 32, "epochs": 2, "checkpoint_every": 5, "warmup_steps": 2},
        "scaling": {"train": {"batch_size": 16, "max_steps": 3, "warmup_steps": 1}},
    },
    "scaling": {"fractions": [0.25, 0.5, 1.0], "seeds": [0], "quality_keep": [0.5], "n_boot": 50},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
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
    run(["dvc", "repro"], dest)
    return dest


def test_repro_runs_every_stage_and_is_then_up_to_date(project):
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in ("pretrain", "demo-data@remote_sensing", "curate@remote_sensing", "train@remote_sensing",
                  "evaluate@remote_sensing", "export@remote_sensing", "scaling-report@remote_sensing", "scaling-index"):
        assert stage in lock["stages"]
    assert "up to date" in run(["dvc", "status"], project).stdout


def test_metrics_compare_base_and_adapted(project):
    metrics = json.loads((project / "metrics/remote_sensing/metrics.json").read_text())
    for role in ("base", "adapted"):
        assert set(metrics[role]) == {"zeroshot", "retrieval"}
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


def test_scaling_report_is_written(project):
    report = project / "reports/remote_sensing"
    html = (report / "scaling.html").read_text()
    assert "data:image/png;base64," in html  # self-contained
    assert (report / "scaling.md").read_text().strip()
    assert "remote_sensing" in (project / "reports/index.html").read_text()
    runs = sorted(p.name for p in (project / "metrics/remote_sensing/scaling").iterdir())
    assert runs == ["f0.25-q1.0-s0", "f0.5-q1.0-s0", "f1.0-q0.5-s0", "f1.0-q1.0-s0"]
