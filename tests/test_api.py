"""The `domainfm` Python API: light to import, every function the analyst commands run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light_and_lists_the_api() -> None:
    code = ("import sys, domainfm; print(sorted(m for m in ('torch', 'open_clip', 'rasterio', 'openslide') if m in sys.modules)); "
            "print(dir(domainfm))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    for name in ("map_raster", "search_rasters", "map_slide", "search_slides", "predict_ct", "load"):
        assert name in out[1]


def test_functions_resolve_to_the_commands_implementations() -> None:
    import domainfm
    from domains.ct.analyst import predict_ct
    from domains.pathology.analyst import map_slide

    assert domainfm.map_slide is map_slide and domainfm.predict_ct is predict_ct
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        domainfm.nope  # noqa: B018


def test_load_gives_an_encoder_for_an_image_export(tmp_path: Path) -> None:
    import domainfm
    from pipelines.infer.clip import ClipEncoder
    from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), tmp_path / "m")
    encoder = domainfm.load(str(tmp_path / "m"))
    assert isinstance(encoder, ClipEncoder) and encoder.embed_texts(["water"]).shape == (1, encoder.embed_dim)
