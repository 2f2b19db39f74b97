"""safetensors files written reproducibly (pipelines/io/tensor_files.py): the same content, the same bytes, loaded by safetensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from pipelines.infer.hubness import HubnessBank, read_bank, write_bank
from pipelines.io.tensor_files import save_tensors


def test_the_same_tensors_and_metadata_give_the_same_bytes_that_safetensors_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"embeddings": rng.normal(size=(5, 8)).astype(np.float32), "ids": np.arange(7, dtype=np.int64),
               "mask": rng.random((3, 3)) > 0.5}
    metadata = {f"key {i}": f"value {i}, ünïcode" for i in range(5)}  # safetensors alone orders them anew each write
    written = {save_tensors(tensors, tmp_path / f"{i}.safetensors", metadata).read_bytes() for i in range(12)}
    assert len(written) == 1
    path = tmp_path / "0.safetensors"
    assert np.frombuffer(path.read_bytes()[:8], "<u8")[0] % 8 == 0  # the data stays 8-byte aligned
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys() and all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("ids"), torch.arange(7))


def test_a_hubness_bank_is_written_the_same_each_time_and_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bank = HubnessBank(rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32), 12.5, 20.25)
    files = []
    for name in ("a", "b", "c", "d", "e", "f"):
        (tmp_path / name).mkdir()
        files.append(write_bank(tmp_path / name, bank).read_bytes())
    assert len(set(files)) == 1
    back = read_bank(tmp_path / "a")
    assert back is not None and back.beta == 12.5 and back.beta_gallery == 20.25
    assert np.array_equal(back.text, bank.text) and np.array_equal(back.image, bank.image)
