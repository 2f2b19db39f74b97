"""The curated pair format and its machinery: shards, manifest, rejects, summary, resume, splits."""
from __future__ import annotations

import json
import os
import signal
import tarfile
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from pipelines.curation import (
    CurationConfig,
    Pair,
    Reject,
    UnitResult,
    WorkUnit,
    assign_split,
    run_curation,
)
from pipelines.curation.executor import LocalExecutor
from pipelines.curation.fingerprint import code_version
from pipelines.curation.run import CurationRefused
from pipelines.io.manifest import read_manifest
from pipelines.io.shards import shard_paths


def make_pairs(unit: WorkUnit) -> UnitResult:
    """A small deterministic 'domain': n coloured squares per unit, one group per unit."""
    n, colour = unit.payload["n"], unit.payload["colour"]
    if unit.payload.get("fail"):
        raise OSError("truncated file")
    result = UnitResult()
    for i in range(n):
        img = np.zeros((16, 16, 3), np.uint8)
        img[..., colour] = 40 + 20 * i
        result.pairs.append(
            Pair(id=f"{unit.key}.{i}", group=unit.payload["group"], image=img, caption=f"{['red', 'green', 'blue'][colour]} square {i}",
                 source=unit.key, caption_variants={"short": "square"}, provenance={"i": i})
        )
    result.rejects.append(Reject(f"{unit.key}:extra", "check", "too dark"))
    result.counts.update({"objects_seen": n + 1, "objects_kept": n})
    return result


class Interrupt(BaseException):
    pass


def interrupting(unit: WorkUnit) -> UnitResult:
    if unit.payload.get("interrupt"):
        raise Interrupt()
    return make_pairs(unit)


def units(k: int = 6, n: int = 5, extra: dict | None = None) -> list[WorkUnit]:
    return [WorkUnit(f"scene{i}", {"n": n, "colour": i % 3, "group": f"g{i}", **(extra or {}).get(i, {})}) for i in range(k)]


def read_shards(out: Path) -> dict[str, dict]:
    samples = {}
    for split in ("train", "val", "test"):
        for path in shard_paths(out, split):
            for s in wds.WebDataset(path, shardshuffle=False):
                samples[s["__key__"]] = {"split": split, "shard": Path(path).name, **s}
    return samples


CFG = CurationConfig(shard_size=4, val_fraction=0.25, test_fraction=0.25)


def test_writes_shards_manifest_rejects_summary(tmp_path):
    summary = run_curation(units(), make_pairs, tmp_path, CFG)
    samples = read_shards(tmp_path)
    manifest = read_manifest(tmp_path)
    assert len(samples) == len(manifest) == 30
    for row in manifest.itertuples():
        s = samples[row.key]
        assert s["split"] == row.split and s["shard"] == row.shard
        assert s["txt"].decode() == row.caption
        meta = json.loads(s["json"])
        assert meta["caption_variants"] == {"short": "square"} == row.caption_variants
        assert "png" in s
    # shards hold at most shard_size samples and are named {split}-{NNNNNN}.tar
    for path in (tmp_path / "shards").iterdir():
        assert path.name.split("-")[0] in ("train", "val", "test") and path.suffix == ".tar"
        assert len(tarfile.open(path).getnames()) <= 3 * CFG.shard_size
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert list(rejects.columns) == ["input", "stage", "reason"] and len(rejects) == 6
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps({k: v for k, v in summary.items() if k != "run"}))  # "run" is never written
    assert on_disk["steps"] == {"objects_kept": 30, "objects_seen": 36}
    assert on_disk["rejected"] == {"check: too dark": 6}
    assert sum(on_disk["pairs"]["per_split"].values()) == 30


def test_splits_are_by_group_never_by_row(tmp_path):
    run_curation(units(k=20), make_pairs, tmp_path, CFG)
    manifest = read_manifest(tmp_path)
    assert (manifest.groupby("group")["split"].nunique() == 1).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    # stable: the same group always lands in the same split
    assert assign_split("g3", 0.25, 0.25) == assign_split("g3", 0.25, 0.25)


def test_failing_unit_becomes_reject_and_others_are_curated(tmp_path):
    summary = run_curation(units(extra={2: {"fail": True}}), make_pairs, tmp_path, CFG)
    assert summary["pairs"]["kept"] == 25
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    row = rejects[rejects["stage"] == "unit"].iloc[0]
    assert row["input"] == "scene2" and "truncated file" in row["reason"]


def test_interrupted_run_resumes_without_partial_or_duplicate_shards(tmp_path):
    with pytest.raises(Interrupt):
        run_curation(units(extra={4: {"interrupt": True}}), interrupting, tmp_path, CFG)
    assert not (tmp_path / "shards").exists()  # nothing packed from an unfinished run
    summary = run_curation(units(), make_pairs, tmp_path, CFG)
    assert summary["units"] == {"total": 6, "failed": 0} and summary["run"]["units_cached"] == 4 and summary["run"]["units_processed"] == 2
    assert summary["pairs"]["kept"] == 30
    keys = [k for s in read_shards(tmp_path) for k in [s]]
    assert len(keys) == len(set(keys)) == 30
    assert not list(tmp_path.rglob("*.tmp*"))
    # a full rerun is all cached and reproduces identical shards byte for byte
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    again = run_curation(units(), make_pairs, tmp_path, CFG)
    assert again["run"]["units_cached"] == 6
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}


def test_failed_unit_is_not_cached_and_is_retried_next_run(tmp_path):
    out = tmp_path / "out"
    first = run_curation(units(extra={2: {"fail": True}}), make_pairs, out, CFG)
    assert first["units"] == {"total": 6, "failed": 1} and first["run"]["units_cached"] == 0 and first["run"]["units_processed"] == 5
    second = run_curation(units(), make_pairs, out, CFG)  # the input was fixed
    assert second["units"] == {"total": 6, "failed": 0} and second["run"]["units_cached"] == 5 and second["run"]["units_processed"] == 1
    assert second["pairs"]["kept"] == 30


def _file_units(folder: Path) -> list[WorkUnit]:
    return [WorkUnit(f"scene{i}", {"n": 2, "colour": i % 3, "group": f"g{i}"}, inputs=[str(folder / f"in{i}.bin")]) for i in range(3)]


def test_editing_an_input_in_place_reprocesses_exactly_its_unit(tmp_path):
    folder, out = tmp_path / "inputs", tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        (folder / f"in{i}.bin").write_bytes(b"original %d" % i)
    assert run_curation(_file_units(folder), make_pairs, out, CFG)["run"]["units_processed"] == 3
    (folder / "in1.bin").write_bytes(b"replaced 1")  # same name, same size, new content
    run = run_curation(_file_units(folder), make_pairs, out, CFG)["run"]
    assert run["units_cached"] == 2 and run["units_processed"] == 1
    os.utime(folder / "in2.bin", ns=(1, 1))  # touched, content unchanged: still cached
    assert run_curation(_file_units(folder), make_pairs, out, CFG)["run"]["units_cached"] == 3


def test_code_version_follows_file_content(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "reader.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "tags.csv").write_text("a,b\n")
    before = code_version([tmp_path / "pkg"])
    assert code_version([tmp_path / "pkg"]) == before
    (tmp_path / "pkg" / "tags.csv").write_text("a,c\n")
    assert code_version([tmp_path / "pkg"]) != before


def killing(unit: WorkUnit) -> UnitResult:
    if unit.payload.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does
    return make_pairs(unit)


def test_unit_that_kills_its_worker_becomes_a_reject_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    summary = run_curation(units(extra={3: {"kill": True}}), killing, out, CFG, executor=LocalExecutor(2, retries=1))
    assert summary["pairs"]["kept"] == 25 and summary["units"]["failed"] == 1
    rejects = pd.read_csv(out / "rejects.csv")
    row = rejects[rejects["stage"] == "unit"].iloc[0]
    assert row["input"] == "scene3" and "killed by SIGKILL" in row["reason"] and "tried 2 times" in row["reason"]
    # not cached: the next run tries it again (and here it no longer dies)
    again = run_curation(units(), make_pairs, out, CFG, executor=LocalExecutor(2))
    assert again["units"] == {"total": 6, "failed": 0} and again["run"]["units_cached"] == 5 and again["run"]["units_processed"] == 1


def test_a_run_with_no_pairs_does_not_replace_good_output(tmp_path):
    out = tmp_path / "out"
    run_curation(units(), make_pairs, out, CFG)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = units(extra={i: {"fail": True} for i in range(6)}, n=5)
    bad = [WorkUnit(u.key + "-typo", u.payload) for u in bad]  # e.g. a misspelt input path
    with pytest.raises(CurationRefused, match="curated no pair.*30 pairs.*--allow-empty"):
        run_curation(bad, make_pairs, out, CFG)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    summary = run_curation(bad, make_pairs, out, replace(CFG, allow_empty=True))
    assert summary["pairs"]["kept"] == 0 and len(read_manifest(out)) == 0


def test_a_crash_while_writing_the_output_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import pipelines.curation.run as run_module

    out = tmp_path / "out"
    run_curation(units(k=3), make_pairs, out, CFG)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise Interrupt()  # killed after the new shards and manifest, before rejects and summary

    monkeypatch.setattr(run_module, "write_rejects", crash)
    with pytest.raises(Interrupt):
        run_curation(units(k=6), make_pairs, out, CFG)
    monkeypatch.undo()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]  # the half-written folder is gone
    # the swap itself: a kill between its two renames leaves OUT aside, and the next run puts it back
    out.rename(tmp_path / ".out.old-crash")
    summary = run_curation(units(k=6), make_pairs, out, CFG)
    assert summary["pairs"]["kept"] == 30 and not list(tmp_path.glob(".out.old-*"))


def test_process_pool_gives_same_result_as_in_process(tmp_path):
    run_curation(units(), make_pairs, tmp_path / "a", CFG, executor=LocalExecutor(0))
    run_curation(units(), make_pairs, tmp_path / "b", CFG, executor=LocalExecutor(2))
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    pd.testing.assert_frame_equal(a, b)


def test_quality_filter_drops_train_pairs_only_and_scores_every_pair(tmp_path):
    def score(images: list[bytes], captions: list[str]) -> np.ndarray:
        return np.array([float(c.split()[-1]) for c in captions])  # later squares score higher

    summary = run_curation(units(k=12), make_pairs, tmp_path / "out", CFG, quality_scorer=score, quality_keep_fraction=0.4)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["quality_score"].notna().all()  # every kept pair carries its score
    train, evaluation = manifest[manifest["split"] == "train"], manifest[manifest["split"] != "train"]
    n_eval_groups = evaluation["group"].nunique()
    assert len(evaluation) == 5 * n_eval_groups  # evaluation splits keep every pair
    n_train_before = 5 * (12 - n_eval_groups)
    assert len(train) == round(0.4 * n_train_before) and set(train["quality_score"]) <= {3.0, 4.0}
    assert summary["steps"]["quality_dropped"] == n_train_before - len(train)


def test_stock_open_clip_train_reads_the_shards(tmp_path):
    from open_clip_train.data import get_wds_dataset

    from pipelines.models.clip import ModelSpec, load_model

    run_curation(units(k=4, n=8), make_pairs, tmp_path, CurationConfig(shard_size=100, val_fraction=0, test_fraction=0))
    loaded = load_model(ModelSpec("domainfm-tiny"))
    args = Namespace(
        train_data=shard_paths(tmp_path, "train")[0], train_data_upsampling_factors=None, val_data=None, dataset_type="webdataset",
        batch_size=8, workers=0, world_size=1, seed=0, train_num_samples=32, distributed=False, dataset_resampled=False,
    )
    info = get_wds_dataset(args, loaded.preprocess_train, is_train=True, tokenizer=loaded.tokenizer)
    images, texts = next(iter(info.dataloader))
    assert images.shape == (8, 3, 64, 64) and texts.shape == (8, 32)


def test_row_filter_drops_across_units_with_reasons(tmp_path):
    def drop_first_of_each_unit(rows):
        return {r["id"]: Reject(r["id"], "dedupe", "near-duplicate across inputs") for r in rows if r["id"].endswith(".0")}

    summary = run_curation(units(k=3), make_pairs, tmp_path, CFG, row_filter=drop_first_of_each_unit)
    manifest = read_manifest(tmp_path)
    assert len(manifest) == 12 and not manifest["id"].str.endswith(".0").any()
    assert summary["rejected"]["dedupe: near-duplicate across inputs"] == 3
    assert summary["steps"]["row_filter_dropped"] == 3
