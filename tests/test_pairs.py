"""`domainfm curate pairs`: captioned images from a table or existing shards."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import typer
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from domains.pairs.curation.curate import curate_pairs_command
from pipelines.io.manifest import read_manifest
from pipelines.io.shards import shard_paths

app = typer.Typer()
app.command()(curate_pairs_command)


def write_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(folder / f"img{i}.png")


def test_csv_with_open_clip_columns(tmp_path):
    write_images(tmp_path / "images", 6)
    rows = [{"filepath": f"images/img{i}.png", "title": f"caption {i}", "site": f"s{i % 2}"} for i in range(6)]
    rows.append({"filepath": "images/missing.png", "title": "lost", "site": "s0"})
    rows.append({"filepath": "images/img0.png", "title": "", "site": "s0"})
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append({"filepath": "broken.png", "title": "broken", "site": "s1"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    (tmp_path / "params.yaml").write_text("pairs:\n  curate:\n    group_key: site\n    val_fraction: 0.0\n    test_fraction: 0.5\n")
    args = ["--csv", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["caption"]) == [f"caption {i}" for i in range(6)]
    assert (manifest.groupby("group")["split"].nunique() == 1).all()  # split by the site column
    reasons = set(pd.read_csv(tmp_path / "out" / "rejects.csv")["reason"])
    assert reasons == {"image file not found", "empty caption", "unreadable image (UnidentifiedImageError)"}


def test_csv_missing_column_is_a_clear_error(tmp_path):
    pd.DataFrame([{"path": "a.png", "text": "x"}]).to_csv(tmp_path / "t.csv", index=False)
    from pipelines.cli import app as domainfm

    result = CliRunner().invoke(domainfm, ["curate", "pairs", "--csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.replace("│", " ").split())
    assert "t.csv lacks column(s) filepath, title" in text and "found: path, text" in text


def test_existing_shards_are_recurated(tmp_path):
    src = tmp_path / "src-000000.tar"
    with wds.TarWriter(str(src)) as w:
        for i in range(5):
            w.write({"__key__": f"s{i}", "png": np.full((8, 8, 3), i, np.uint8), "txt": f"text {i}", "json": {"group": "g"}})
        w.write({"__key__": "noimage", "txt": "orphan caption"})
    result = CliRunner().invoke(app, ["--shards", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 5 and manifest["split"].nunique() == 1  # one group -> one split
    split = manifest["split"].iloc[0]
    got = {s["txt"].decode() for s in wds.WebDataset(shard_paths(tmp_path / "out", split), shardshuffle=False)}
    assert got == {f"text {i}" for i in range(5)}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected"] == {"image: sample has no image": 1}
