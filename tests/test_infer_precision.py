"""Inference precision of the analyst commands (pipelines/infer/device.py): "auto" is bf16 only where the device computes it
natively, and an encoder embeds in its precision (fp32: exactly the model's fp32 forward). The maps' caches and the commands'
--precision are tested with the commands (test_rs_analyst.py, test_pathology_analyst.py, test_ct_analyst.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.infer.clip import ClipEncoder
from pipelines.infer.device import inference_precision, native_bf16, resolve_precision
from pipelines.models.clip import ModelSpec, model_config_of, save_open_clip_dir


@pytest.fixture(scope="module")
def export(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:  # conftest's tiny model
    folder = tmp_path_factory.mktemp("export") / "model"
    save_open_clip_dir(tiny.model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    return folder


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool,
                                                     expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) == (expected == "bf16")
    assert resolve_precision(cpu) == resolve_precision(cpu, "auto") == expected
    assert resolve_precision(cpu, "fp32") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"  # asked for: as asked


def test_autocast_follows_the_precision_and_the_pipeline_rule_keeps_the_cpu_in_fp32() -> None:
    cpu = torch.device("cpu")
    weight = torch.randn(8, 8)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32), (None, torch.float32)):
        with inference_precision(cpu, precision):
            assert (torch.randn(2, 8) @ weight).dtype == dtype


def test_encoder_embeds_in_its_precision(export: Path) -> None:
    fp32, bf16 = ClipEncoder.load(export, "cpu", "fp32"), ClipEncoder.load(export, "cpu", "bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert ClipEncoder.load(export, "cpu").precision == resolve_precision(torch.device("cpu"))
    pixels = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (6, 3, 64, 64)).astype(np.float32))
    with torch.no_grad(), inference_precision(torch.device("cpu"), "fp32"):  # on an AMD CPU, oneDNN's kernels (test_infer_onednn.py)
        reference = torch.nn.functional.normalize(fp32.model.encode_image(pixels, normalize=True), dim=-1).numpy()
    np.testing.assert_array_equal(fp32.embed_tensors(pixels), reference)  # fp32: the model's own fp32 forward
    low = bf16.embed_tensors(pixels)
    assert low.dtype == np.float32 and np.allclose(np.linalg.norm(low, axis=1), 1, atol=1e-5)  # unit length in fp32
    cosine = (low * reference).sum(axis=1)
    assert not np.array_equal(low, reference) and cosine.min() > 0.999  # bf16's rounding, nothing more
    texts = ["a lake", "a forest"]
    assert (fp32.embed_texts(texts) * bf16.embed_texts(texts)).sum(axis=1).min() > 0.999
