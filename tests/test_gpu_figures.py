"""benchmarks/gpu_figures.py: the batch search and the script itself, on the CPU (the figures need a lent GPU)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_figures():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports contract.py beside it, as `python benchmarks/...` does
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu_figures", ROOT / "benchmarks" / "gpu_figures.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("bench_gpu_figures", None)


@pytest.mark.parametrize("largest,start,limit", [(23, 8, 64), (18, 8, 64), (1, 8, 64), (5, 8, 64), (64, 8, 64), (0, 8, 64),
                                                 (40, 1, 100), (7, 7, 7)])
def test_largest_batch_finds_the_threshold_in_few_probes(gpu_figures, largest, start, limit):
    probed: list[int] = []

    def fits(batch: int) -> bool:
        probed.append(batch)
        return batch <= largest

    assert gpu_figures.largest_batch(fits, start, limit) == largest
    assert len(probed) == len(set(probed)) <= 2 * limit.bit_length() + 1  # no size probed twice, logarithmic
    assert all(1 <= b <= limit for b in probed)


def test_a_batch_too_large_for_the_card_is_a_probe_that_fails_and_other_errors_propagate(gpu_figures, monkeypatch):
    args = type("Args", (), {"ct_start_batch": 8, "ct_max_batch": 64, "ct_size": [16, 16, 8], "ct_width": 8, "steps": 3})()
    runs: list[int] = []

    def fake_run(encoder, batch, steps, size, width, info):
        runs.append(batch)
        if batch > 12:
            raise RuntimeError(["CUDA out of memory. Tried to allocate 2.00 GiB", "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"][batch % 2])
        return gpu_figures.Run(10.0 * batch, None, "fp32")

    monkeypatch.setattr(gpu_figures, "ct_run", fake_run)
    best, run, probes = gpu_figures.ct_largest_batch("i3d_resnet18", args, None)
    assert best == 12 and run.samples_per_s == 120.0 and runs[-1] == 12  # the measured run is at the batch found
    assert any("out of memory" in p for p in probes) and all(": fits" in p for p in probes if int(p.split(":")[0]) <= 12)

    def broken(encoder, batch, steps, size, width, info):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(gpu_figures, "ct_run", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        gpu_figures.ct_largest_batch("i3d_resnet18", args, None)


def test_smoke_run_trains_through_the_loop_and_writes_the_contract(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_figures.py", "--smoke", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    data = report.load(out)  # the contract report.py renders
    ct, speed = data["rows"]
    assert ct["ours"] == 3 and "probes: 2: fits; 3: fits" in ct["notes"]  # the smoke cap: every size fits on the CPU
    assert speed["ours"] > 0 and speed["peer_value"] > 0 and "fp32" in speed["figure"]  # no bf16 claimed on the CPU
    assert json.loads(out.read_text())["machine"].endswith("CPU (smoke run)")
