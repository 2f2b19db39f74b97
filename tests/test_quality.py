"""The optional top-k% image-caption quality filter, through the remote-sensing curation."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from domains.remote_sensing.curation.curate import curate, load_config
from domains.remote_sensing.demo.demo_data import RSDemoConfig, write_demo_data
from pipelines.curation.quality import make_clip_scorer
from pipelines.io.manifest import read_manifest
from pipelines.models.clip import ModelSpec, load_model, model_config_of, preprocess_config_of, save_open_clip_dir


@pytest.fixture(scope="module")
def scorer_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "model"
    torch.manual_seed(0)
    loaded = load_model(ModelSpec("domainfm-tiny"))
    save_open_clip_dir(loaded.model, model_config_of(ModelSpec("domainfm-tiny")), out, preprocess_config_of(loaded.model))
    return f"local-dir:{out}"


def test_scorer_is_cosine_similarity_of_image_and_caption(scorer_model):
    rng = np.random.default_rng(0)
    images = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    captions = ["farmland", "a park", "water, surrounded by forest"]
    scores = make_clip_scorer(ModelSpec(scorer_model))(images, captions)
    loaded = load_model(ModelSpec(scorer_model))
    with torch.no_grad():
        pixels = torch.stack([loaded.preprocess_val(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        img = loaded.model.encode_image(pixels, normalize=True)
        txt = loaded.model.encode_text(loaded.tokenizer(captions), normalize=True)
    np.testing.assert_allclose(scores, (img * txt).sum(-1).numpy(), atol=1e-5)
    small_batches = make_clip_scorer(ModelSpec(scorer_model), batch_size=2, device="cpu")(images, captions)
    np.testing.assert_allclose(small_batches, scores, atol=1e-6)  # batching does not change a score


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_scorer_device_auto_is_the_cpu_here_and_cuda_is_refused_without_a_gpu(scorer_model):
    with pytest.raises(RuntimeError, match="no CUDA device"):
        make_clip_scorer(ModelSpec(scorer_model), device="cuda")
    cfg = load_config(None)
    assert cfg.quality_device == "auto"


def test_remote_sensing_keeps_top_fraction_by_score(tmp_path, scorer_model):
    raw = tmp_path / "raw"
    write_demo_data(raw, RSDemoConfig(scene_size_px=768, zeroshot_per_class=1, zeroshot_size_px=512))
    params = tmp_path / "params.yaml"
    params.write_text(
        "remote_sensing:\n  curate:\n    target_gsd_m: 2.0\n    tile_size: 64\n"
        f"    quality_model: '{scorer_model}'\n    quality_keep_fraction: 0.5\n"
    )
    cfg = load_config(params)
    summary = curate([raw / "scene.tif"], raw / "features.osm", tmp_path / "out", cfg)
    manifest = read_manifest(tmp_path / "out")
    dropped = summary["steps"]["quality_dropped"]
    assert dropped > 0 and abs(len(manifest) - dropped) <= 1  # half kept
    assert manifest["quality_score"].notna().all()
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert (rejects["stage"] == "quality").sum() == dropped
