"""Hubness-corrected search ranking (pipelines/infer/hubness.py) and the search commands' --correction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import InputError
from pipelines.infer.hubness import HubnessBank, check_bank, describe, read_bank, search_scores, write_bank


def _unit(*v: float) -> np.ndarray:
    x = np.asarray(v, np.float32)
    return x / np.linalg.norm(x)


def hub_world() -> tuple[np.ndarray, np.ndarray, HubnessBank]:
    """A query whose raw best match is a hub (near every training caption), and the item it means, just behind."""
    rng = np.random.default_rng(0)
    hub, meant, other = _unit(1, 0, 0), _unit(0.2, 0.98, 0), _unit(0, 0, 1)
    query = _unit(0.8, 0.6, 0)  # cosine: hub 0.80 > meant 0.75
    captions = np.stack([_unit(*(np.array([1.0, 0, 0]) + rng.normal(0, 0.05, 3))) for _ in range(50)])
    images = np.stack([_unit(*(np.array([1.0, 0, 0]) + rng.normal(0, 0.05, 3))) for _ in range(50)])
    return query, np.stack([hub, meant, other]), HubnessBank(captions, images, beta=20.0, beta_gallery=20.0)


def test_plain_ranking_is_cosine_and_corrections_demote_the_hub() -> None:
    query, gallery, bank = hub_world()
    plain = search_scores(query, gallery, "none", None)
    np.testing.assert_allclose(plain, gallery @ query, atol=1e-6)
    assert np.argmax(plain) == 0  # the hub wins on cosine similarity
    for correction in ("qb_norm", "db_norm"):
        assert np.argmax(search_scores(query, gallery, correction, bank)) == 1, correction  # the meant item wins


def test_a_correction_without_a_bank_is_refused_naming_the_export() -> None:
    query, gallery, _ = hub_world()
    with pytest.raises(InputError, match=r"exports/rs ships no hubness bank .* --correction none"):
        search_scores(query, gallery, "qb_norm", None, "exports/rs")
    check_bank("none", None)  # the plain ranking needs none
    assert describe("none", None) == "cosine similarity" and describe("db_norm", hub_world()[2]).startswith("DBNorm")


def test_bank_round_trip(tmp_path: Path) -> None:
    _, _, bank = hub_world()
    write_bank(tmp_path, bank)
    back = read_bank(tmp_path)
    np.testing.assert_array_equal(back.text, bank.text)
    np.testing.assert_array_equal(back.image, bank.image)
    assert (back.beta, back.beta_gallery) == (20.0, 20.0)
    assert read_bank(tmp_path / "nothing") is None


def test_search_rasters_ranks_with_the_exports_bank(tmp_path: Path) -> None:
    import torch
    from test_rs_analyst import FAST, landscape, write_raster

    from domains.remote_sensing.analyst import search_rasters
    from pipelines.infer.clip import ClipEncoder
    from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

    folder = tmp_path / "export"
    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    scene = write_raster(tmp_path / "scene.tif", landscape(), nodata=0)
    with pytest.raises(InputError, match="ships no hubness bank"):
        search_rasters(folder, scene, "a lake", tmp_path / "refused", correction="qb_norm", **FAST)
    assert not (tmp_path / "refused").exists()

    encoder = ClipEncoder.load(folder, "cpu")
    captions = ["a lake", "water", "a forest", "farmland", "a field", "woodland"] * 4
    rng = np.random.default_rng(1)
    images = rng.normal(size=(len(captions), encoder.embed_texts(["x"]).shape[1])).astype(np.float32)
    write_bank(folder, HubnessBank(encoder.embed_texts(captions), images / np.linalg.norm(images, axis=1, keepdims=True), 20.0, 20.0))
    cache = tmp_path / "cache"
    plain = search_rasters(ClipEncoder.load(folder, "cpu"), scene, "a lake", tmp_path / "plain", top_k=64, cache=cache, **FAST)
    corrected = search_rasters(ClipEncoder.load(folder, "cpu"), scene, "a lake", tmp_path / "qb", top_k=64, cache=cache,
                               correction="qb_norm", **FAST)
    summary = json.loads(corrected.summary.read_text())
    assert summary["score"].startswith("QB-Norm") and json.loads(plain.summary.read_text())["score"] == "cosine similarity"
    # every window, ranked by QB-Norm of the cached window embeddings against the export's bank
    (cached,) = cache.glob("*.npz")
    with np.load(cached, allow_pickle=False) as data:
        gallery, records = data["embeddings"], json.loads(str(data["windows"]))
    text = ClipEncoder.load(folder, "cpu").embed_texts(["a lake"])[0]
    want = search_scores(text, gallery, "qb_norm", read_bank(folder))
    got = {(r["row"], r["col"]): r["score"] for r in corrected.best}
    for record, score in zip(records, want):
        assert got[(record["row"], record["col"])] == pytest.approx(score, abs=1e-5)
    assert [r["score"] for r in corrected.best] == sorted(got.values(), reverse=True)
