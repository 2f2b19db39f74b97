"""Curation that runs no model starts without torch, and its tar writer matches webdataset's byte for byte."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from pipelines.io.shards import SampleTarWriter

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["domains.remote_sensing.curation.curate", "domains.pathology.curation.curate",
                                    "domains.ct.curation.curate", "domains.pairs.curation.curate", "pipelines.curation.cli"])
def test_curation_without_a_model_does_not_import_torch(module: str) -> None:
    # torch costs every worker process ~0.6 GB and seconds of start-up; only model code may import it
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'monai', 'webdataset', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", ["pipelines.curation.cli", "domains.remote_sensing.curation.curate", "domains.pathology.curation.curate",
                                    "domains.pairs.curation.curate", "domains.ct.curation", "domains.ct.loader", "domains.ct.analyst"])
def test_help_and_prediction_modules_do_not_import_pandas(module: str) -> None:
    # pandas (0.25 s, 70 MB) is imported where a table is read or written: not by `curate ... --help`, nor by `predict ct`
    code = f"import sys, {module}; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("module", ["domains.pathology.analyst", "domains.remote_sensing.analyst"])
def test_the_map_and_search_commands_import_no_model_code_until_a_model_runs(module: str) -> None:
    # `domainfm map pathology --help` imported torch and open_clip with its command: 6 s and 940 MB for a help page; the
    # pathology curation's package imported its video sampler (PyAV) for the slide readers the commands use
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'open_clip', 'pandas', 'av') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_volume_evaluation_does_not_import_open_clip() -> None:
    # `domainfm evaluate ct` reads the shared evaluation settings (WiseConfig among them) but runs no open_clip model
    code = ("import sys, pipelines.evaluate.stage, pipelines.evaluate.analyses, pipelines.evaluate.volume; "
            "print(sorted(m for m in ('open_clip', 'peft', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_sample_tar_writer_writes_what_webdataset_writes(tmp_path: Path) -> None:
    samples = [{"__key__": f"s{i}", "png": bytes([i]) * 700, "txt": "caption \u00e9", "json": b'{"a": 1}'} for i in range(4)]
    with wds.TarWriter(str(tmp_path / "wds.tar"), mtime=0) as writer:
        for sample in samples:
            writer.write(dict(sample))
    with SampleTarWriter(tmp_path / "ours.tar") as writer:
        for sample in samples:
            writer.write(dict(sample))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()
