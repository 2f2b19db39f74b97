"""The pairs demo writer: a filepath/title table that `domainfm curate pairs` takes whole, a held-out
zero-shot set labelled in classnames.txt order, and the same bytes from the same seed."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from domains.pairs.curation.curate import curate_pairs_command
from domains.pairs.demo import DemoConfig, write_demo_data
from domains.pairs.demo.demo_data import CLASSNAMES
from pipelines.io.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
SMALL = {"n_images": 40, "zeroshot_per_class": 4}

app = typer.Typer()
app.command()(curate_pairs_command)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs_demo")
    write_demo_data(out, DemoConfig(**SMALL))
    return out


def _zeroshot(folder: Path) -> list[dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(folder / "test-000000.tar") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def test_table_has_open_clip_columns_and_relative_paths(demo: Path) -> None:
    table = pd.read_csv(demo / "captions.csv")
    assert list(table.columns) == ["filepath", "title"]
    assert len(table) == SMALL["n_images"] and table["title"].str.strip().str.len().gt(0).all()
    for rel in table["filepath"]:
        assert not Path(rel).is_absolute()
        with Image.open(demo / rel) as im:
            assert im.size == (64, 64) and im.mode == "RGB"


def test_demo_table_curates_with_no_rejects(demo: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--csv", str(demo / "captions.csv"), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected"] == {}
    assert summary["pairs"]["kept"] == SMALL["n_images"]
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["caption"]) == sorted(pd.read_csv(demo / "captions.csv")["title"])


def test_every_class_is_captioned_and_held_out(demo: Path) -> None:
    titles = pd.read_csv(demo / "captions.csv")["title"]
    for name in CLASSNAMES:
        assert titles.str.contains(name, regex=False).any(), f"no training caption names {name!r}"
    labels = [int(s["cls"].decode("ascii")) for s in _zeroshot(demo / "zeroshot")]
    assert sorted(set(labels)) == list(range(len(CLASSNAMES)))
    assert np.bincount(labels).tolist() == [SMALL["zeroshot_per_class"]] * len(CLASSNAMES)


def test_zeroshot_labels_index_classnames_and_params(demo: Path) -> None:
    names = (demo / "zeroshot" / "classnames.txt").read_text().splitlines()
    assert names == list(CLASSNAMES)
    # evaluate prompts with params' class names in label order, so they must be the same list
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["pairs"]["evaluate"]["classnames"] == names
    for sample in _zeroshot(demo / "zeroshot"):
        assert 0 <= int(sample["cls"].decode("ascii")) < len(names)
        assert json.loads(sample["json"])["classname"] == names[int(sample["cls"])]
        assert Image.open(io.BytesIO(sample["png"])).size == (64, 64)


def test_zeroshot_images_are_not_training_images(demo: Path) -> None:
    train = {hashlib.sha1((demo / p).read_bytes()).hexdigest() for p in pd.read_csv(demo / "captions.csv")["filepath"]}
    held_out = {hashlib.sha1(s["png"]).hexdigest() for s in _zeroshot(demo / "zeroshot")}
    assert not train & held_out


def test_same_seed_same_bytes_other_seed_other_data(demo: Path, tmp_path: Path) -> None:
    write_demo_data(tmp_path / "again", DemoConfig(**SMALL))
    for rel in ("captions.csv", "zeroshot/test-000000.tar", "images/sign_00007.png"):
        assert (tmp_path / "again" / rel).read_bytes() == (demo / rel).read_bytes(), rel
    write_demo_data(tmp_path / "other", DemoConfig(**{**SMALL, "seed": 1}))
    assert (tmp_path / "other" / "captions.csv").read_bytes() != (demo / "captions.csv").read_bytes()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="n_images"):
        DemoConfig(n_images=len(CLASSNAMES) - 1)


def test_base_corpus_never_names_the_signs() -> None:
    # the demo only shows adaptation if the generic base model cannot already name the classes
    from pipelines.pretrain.synthetic_corpus import make_sample

    words = ({w for name in CLASSNAMES for w in name.split()} - {"no"}) | {"octagon", "octagonal"}
    for i in range(300):
        caption = make_sample(0, i, 32)[1]
        assert not words & set(caption.replace(",", " ").split()), caption
