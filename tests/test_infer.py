"""The analysts' machinery: exported models as encoders, read-ahead windows, the embedding cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.errors import InputError
from pipelines.infer.cache import EmbeddingCache
from pipelines.infer.clip import ClipEncoder, export_kind
from pipelines.infer.stream import embed_windows
from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "model"
    torch.manual_seed(0)
    loaded = load_model(ModelSpec("domainfm-tiny"))
    save_open_clip_dir(loaded.model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    return folder


def colour_window(i: int) -> np.ndarray | None:
    if i % 5 == 3:
        return None  # e.g. all nodata
    return np.full((40, 40, 3), (i * 37) % 255, np.uint8)


def test_encoder_embeds_and_classifies(export: Path) -> None:
    encoder = ClipEncoder.load(export)
    images = [colour_window(i) for i in range(6) if colour_window(i) is not None]
    emb = encoder.embed_images(images, batch_size=2)
    assert emb.shape == (5, encoder.embed_dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    classifier = encoder.zero_shot(["red", "green", "blue"], ["a {c} square.", "{c}"])
    probs = classifier.probabilities(emb)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(InputError, match="no class names"):
        encoder.zero_shot([], ["{c}"])
    with pytest.raises(InputError, match="repeat: red"):
        encoder.zero_shot(["red", "red"], ["{c}"])


def test_not_an_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not an exported model"):
        export_kind(tmp_path)
    (tmp_path / "config.json").write_text('{"model": {}, "phenotypes": ["x"]}')
    assert export_kind(tmp_path) == "volume"
    with pytest.raises(InputError, match="volume model"):
        ClipEncoder.load(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_windows_stream_in_order_and_skip_empty_ones(export: Path, workers: int) -> None:
    encoder = ClipEncoder.load(export)
    windows = list(range(23))
    batches = list(embed_windows(windows, colour_window, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=workers))
    assert [w for b in batches for w in b.windows] == windows  # in order, whatever worker read them
    valid = [w for b in batches for w, ok in zip(b.windows, b.valid) if ok]
    assert valid == [i for i in windows if i % 5 != 3]
    streamed = np.concatenate([b.embeddings for b in batches if len(b.embeddings)])
    direct = encoder.embed_images([colour_window(i) for i in valid])
    np.testing.assert_allclose(streamed, direct, atol=1e-5)


def test_cache_keys_follow_model_input_content_and_settings(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    raster = tmp_path / "scene.tif"
    raster.write_bytes(b"pixels v1")
    key = cache.key("model-a", [raster], {"tile_m": 100})
    assert cache.load(key) is None
    cache.save(key, np.ones((2, 4)), [{"window": 1}, {"window": 2}])
    emb, windows = cache.load(key)
    assert emb.shape == (2, 4) and windows == [{"window": 1}, {"window": 2}]
    assert cache.key("model-b", [raster], {"tile_m": 100}) != key
    assert cache.key("model-a", [raster], {"tile_m": 200}) != key
    raster.write_bytes(b"pixels v2")
    assert cache.key("model-a", [raster], {"tile_m": 100}) != key
