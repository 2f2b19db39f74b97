"""Curation on Ray: the same pairs as with local processes, dying workers named, a bad address refused at once."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from test_curation import CFG, make_pairs, units

from pipelines.curation import run_curation
from pipelines.curation.executor import RayExecutor
from pipelines.errors import InputError
from pipelines.io.manifest import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    tests = Path(__file__).parent  # Ray workers import the test's `process` functions by module name
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}})
    yield
    ray.shutdown()


def dying(unit):
    if unit.payload.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    return make_pairs(unit)


def test_ray_gives_the_pairs_local_processes_give(ray_cluster, tmp_path: Path) -> None:
    run_curation(units(), make_pairs, tmp_path / "local", replace(CFG, workers=2))
    summary = run_curation(units(), make_pairs, tmp_path / "ray", replace(CFG, executor="ray"))
    assert summary["run"]["units_processed"] == 6
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray"))
    assert sorted(p.read_bytes() for p in (tmp_path / "local" / "shards").iterdir()) == \
        sorted(p.read_bytes() for p in (tmp_path / "ray" / "shards").iterdir())


def test_a_unit_killing_its_ray_worker_becomes_a_reject_and_the_rerun_skips_finished_units(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_curation(units(extra={2: {"kill": True}}), dying, out, CFG, executor=RayExecutor(retries=1))
    assert summary["units"]["failed"] == 1 and summary["pairs"]["kept"] == 25
    rejects = pd.read_csv(out / "rejects.csv")
    row = rejects[rejects["stage"] == "unit"].iloc[0]
    assert row["input"] == "scene2" and "Ray worker died" in row["reason"] and "tried 2 times" in row["reason"]
    again = run_curation(units(), make_pairs, out, replace(CFG, executor="ray"))
    assert again["units"] == {"total": 6, "failed": 0} and again["run"]["units_cached"] == 5 and again["run"]["units_processed"] == 1
    assert len(read_manifest(out)) == 30


def test_ray_address_where_nothing_listens_is_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(InputError, match=r"no Ray cluster answers at RAY_ADDRESS=127\.0\.0\.1:9"):
        run_curation(units(k=2), make_pairs, tmp_path / "out", replace(CFG, executor="ray"))
    assert time.monotonic() - start < 30 and not (tmp_path / "out").exists()
