"""Inputs by URL (pipelines/io/remote.py), against a local folder served over HTTP with range requests.

Rasters are read in place by GDAL (byte ranges, never the whole file), other inputs are mirrored into
a cache; the curated pairs equal those of the same files given as local paths, and reruns, changed
files and missing URLs behave as they do locally.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from bad_inputs.ct import EHR_HEADER, REPORT_HEADER, ehr_rows, regular, report_rows, write_csv, write_dicom_series, write_nifti
from http_server import serve
from test_rs_curation import good_raster, multispectral_raster, run, write_geojson

from domains.ct.curation.curate import CTCurateConfig, curate_command
from domains.ct.curation.curate import curate as curate_ct
from pipelines.deid import key_from_text
from pipelines.errors import InputError
from pipelines.io.digests import Fingerprints
from pipelines.io.manifest import read_manifest
from pipelines.io.remote import as_location, fetch, fetch_folder, is_url, remote_identity


@pytest.fixture()
def served(tmp_path: Path):
    """(root folder, base URL, request log) of an HTTP server on localhost serving `root`."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as (base, requests):
        yield root, base, requests


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _bump(path: Path, seconds: int = 10) -> None:
    """Move a file's mtime on, so its Last-Modified (1 s resolution) changes."""
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + seconds))


def _gets(requests: list, name: str, ranged: bool | None = None) -> int:
    """GET requests for `name` (with a byte range, without one, or either)."""
    return sum(1 for method, path, rng in requests
               if method == "GET" and path.endswith(name) and (ranged is None or (rng is not None) == ranged))


# ---------------------------------------------------------------- locations, identity, fetch


def test_locations_keep_urls_whole() -> None:
    assert is_url("https://example.org/a/b.tif") and is_url("s3://bucket/key.tif")
    assert not is_url("data/scene.tif") and not is_url(Path("/abs/scene.tif")) and not is_url("file:///x.tif")
    assert as_location("https://example.org/a//b.tif") == "https://example.org/a//b.tif"  # a Path would drop a slash
    assert as_location("data/scene.tif") == Path("data/scene.tif")


def test_fetch_downloads_once_and_again_only_when_the_file_changes(served) -> None:
    root, base, requests = served
    (root / "table.csv").write_text("a,b\n1,2\n")
    url = f"{base}/table.csv"
    first = fetch(url)
    assert first.read_text() == "a,b\n1,2\n"
    assert fetch(url) == first and _gets(requests, "table.csv") == 1  # unchanged: asked about, not downloaded
    (root / "table.csv").write_text("a,b\n3,4\n")
    _bump(root / "table.csv")
    assert fetch(url).read_text() == "a,b\n3,4\n" and _gets(requests, "table.csv") == 2
    assert not list(first.parent.glob("*.part"))


def test_missing_url_is_an_input_error_naming_it(served) -> None:
    _, base, _ = served
    with pytest.raises(InputError, match=re.escape(f"{base}/nope.csv")):
        fetch(f"{base}/nope.csv")
    with pytest.raises(InputError, match="cannot be reached|not found"):
        remote_identity("http://127.0.0.1:9/nothing-listens.tif")


def test_fingerprint_of_a_url_follows_its_identity(served, tmp_path: Path) -> None:
    root, base, _ = served
    (root / "a.bin").write_bytes(b"x" * 100)
    url = f"{base}/a.bin"
    before = Fingerprints(tmp_path / "fp.json").digest(url)
    assert Fingerprints(tmp_path / "fp.json").digest(url) == before
    _bump(root / "a.bin")
    assert Fingerprints(tmp_path / "fp.json").digest(url) != before
    assert Fingerprints(tmp_path / "fp.json").digest(f"{base}/gone.bin") == "missing"


def test_fetch_folder_mirrors_nested_files_and_drops_removed_ones(served) -> None:
    root, base, _ = served
    (root / "vols" / "D").mkdir(parents=True)
    (root / "vols" / "A.nii.gz").write_bytes(b"a")
    (root / "vols" / "D" / "IM0001.dcm").write_bytes(b"d1")
    (root / "vols" / "D" / "IM0002.dcm").write_bytes(b"d2")
    mirror = fetch_folder(f"{base}/vols/")
    files = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert files == ["A.nii.gz", "D/IM0001.dcm", "D/IM0002.dcm"]
    (root / "vols" / "D" / "IM0002.dcm").unlink()
    assert fetch_folder(f"{base}/vols") == mirror  # with or without the trailing slash: one mirror
    assert not (mirror / "D" / "IM0002.dcm").exists() and (mirror / "D" / "IM0001.dcm").read_bytes() == b"d1"


# ---------------------------------------------------------------- remote sensing: rasters read in place


def _pairs(out: Path) -> list[tuple[str, str]]:
    """(caption, sha256 of the image) of every curated pair, sorted: what a curation made, whatever the ids."""
    pairs = []
    for shard in sorted((out / "shards").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            files: dict[str, dict[str, bytes]] = {}
            for m in tar:
                key, ext = m.name.split(".", 1)
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()
        pairs += [(f["txt"].decode(), hashlib.sha256(f["png"]).hexdigest()) for f in files.values()]
    return sorted(pairs)


def test_rasters_by_url_curate_the_pairs_local_files_do(served, tmp_path: Path) -> None:
    root, base, requests = served
    good, ms = good_raster(root / "good.tif"), multispectral_raster(root / "ms.tif")
    osm = write_geojson(tmp_path / "map.geojson")
    local = run(tmp_path, [good, ms], osm, out="local")
    remote = run(tmp_path, [f"{base}/good.tif", f"{base}/ms.tif", f"{base}/missing.tif"], osm, out="remote")

    assert local["pairs"]["kept"] > 10
    assert _pairs(tmp_path / "remote") == _pairs(tmp_path / "local")
    assert _gets(requests, "good.tif", ranged=False) == 0 < _gets(requests, "good.tif", ranged=True)  # byte ranges only
    rejects = pd.read_csv(tmp_path / "remote" / "rejects.csv")
    missing = rejects[rejects["input"] == f"{base}/missing.tif"]
    assert list(missing["reason"]) == ["raster URL cannot be read: not found (or the server cannot be reached)"]

    again = run(tmp_path, [f"{base}/good.tif", f"{base}/ms.tif"], osm, out="remote")
    assert again["run"]["units_processed"] == 0 and again["run"]["units_cached"] == remote["units"]["total"]
    shutil.copyfile(root / "good.tif", root / "good2.tif")
    os.replace(root / "good2.tif", root / "good.tif")
    _bump(root / "good.tif")
    changed = run(tmp_path, [f"{base}/good.tif", f"{base}/ms.tif"], osm, out="remote")
    assert changed["run"]["units_processed"] > 0  # the raster's identity changed: its units are curated again


# ---------------------------------------------------------------- CT: volumes and tables mirrored


def test_ct_by_url_equals_ct_from_local_files(served, tmp_path: Path) -> None:
    root, base, _ = served
    vols = root / "ct" / "volumes"
    vols.mkdir(parents=True)
    for sid in ("A", "B", "C"):
        write_nifti(vols / f"{sid}.nii.gz")
    write_dicom_series(vols / "D", regular(12))
    write_csv(root / "ct" / "ehr.csv", EHR_HEADER, ehr_rows(["A", "B", "C", "D"]))
    write_csv(root / "ct" / "reports.csv", REPORT_HEADER, report_rows(["A", "B", "C", "D"]))
    key_file = tmp_path / "key.txt"
    key_file.write_text("test-key-0123456789abcdef")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"ct": {"curate": {"pixdim": [6, 6, 6], "spatial_size": [8, 8, 8], "min_slices": 4,
                                                    "min_positive": 1, "workers": 0}}}))

    cfg = CTCurateConfig(pixdim=[6, 6, 6], spatial_size=[8, 8, 8], min_slices=4, min_positive=1)
    key = key_from_text(key_file.read_text(), "key.txt")
    ct = root / "ct"
    curate_ct(ct / "volumes", ct / "ehr.csv", ct / "reports.csv", None, tmp_path / "local", cfg, key)
    curate_command(volumes=f"{base}/ct/volumes/", ehr=f"{base}/ct/ehr.csv", reports=f"{base}/ct/reports.csv",
                   phecode_map=None, out=tmp_path / "remote", params=params, workers=None, allow_empty=False,
                   key_file=key_file, link_table=None, executor=None)
    local, remote = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "remote")
    assert len(local) == 4
    pd.testing.assert_frame_equal(local, remote)
    assert _pairs_ct(tmp_path / "local") == _pairs_ct(tmp_path / "remote")


def _pairs_ct(out: Path) -> list[tuple[str, int]]:
    members = []
    for shard in sorted((out / "shards").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            members += [(m.name, m.size) for m in tar]
    return sorted(members)
