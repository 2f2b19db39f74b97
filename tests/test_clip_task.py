"""The open_clip family's task: what it checkpoints, the SigLIP loss it owns, its rank-split data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import FAMILIES, run, tiny_clip, write_shard

from pipelines.train.clip_data import count_samples, make_train_loader

CLIP = FAMILIES["clip"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return CLIP.write_data(tmp_path_factory.mktemp("clip_data"))


def test_only_trainable_parameters_are_saved_and_frozen_ones_stay(data: Path, tmp_path: Path) -> None:
    lm = tiny_clip()
    for p in lm.model.visual.parameters():  # partial training: only the other names may be stored
        p.requires_grad_(False)
    frozen_before = {n: p.detach().clone() for n, p in lm.model.visual.named_parameters()}
    task, _ = run(CLIP, data, tmp_path, CLIP.config(max_steps=3), model=lm.model)
    expected = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert expected and not any(n.startswith("visual.") for n in expected)
    final = load_file(str(tmp_path / "trainable.safetensors"))
    assert set(final) == expected
    assert torch.equal(final["text_projection"], lm.model.text_projection.detach())
    assert all(torch.equal(p, frozen_before[n]) for n, p in lm.model.visual.named_parameters())


def test_siglip_owns_scale_and_bias_trains_and_checkpoints_them(data: Path, tmp_path: Path) -> None:
    task, stats = run(CLIP, data, tmp_path, CLIP.config(loss="siglip", max_steps=3, lr=1e-2))
    saved = load_file(str(tmp_path / "trainable.safetensors"))
    assert {"loss.logit_scale", "loss.logit_bias"} <= set(saved)
    assert saved["loss.logit_bias"].item() != -10.0  # it was optimised
    assert task.may_leave_parameters_unused  # the model's own logit_scale gets no gradient under DDP
    assert np.isfinite(stats["final_loss"])


def test_grad_checkpointing_reaches_the_open_clip_towers(data: Path, tmp_path: Path) -> None:
    task, _ = run(CLIP, data, tmp_path, CLIP.config(max_steps=1, grad_checkpointing=True))
    assert task.model.visual.transformer.grad_checkpointing


def test_loader_splits_ranks_disjointly_and_resumes(tmp_path: Path) -> None:
    shard_list = [write_shard(tmp_path / f"train-{i:06d}.tar", 20, seed=i) for i in range(3)]
    assert count_samples(shard_list) == [20, 20, 20]
    ident = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)))  # noqa: E731
    tok = lambda texts: torch.tensor([[hash(t) % 1000] for t in texts])  # noqa: E731

    def epoch(rank: int, world: int, workers: int = 0, skip: int = 0, ep: int = 0) -> list[torch.Tensor]:
        loader, steps = make_train_loader(shard_list, ident, tok, 4, 0, ep, workers, rank, world, skip_batches=skip)
        batches = [imgs for imgs, _ in loader]
        assert len(batches) == steps - skip
        return batches

    r0, r1 = epoch(0, 2), epoch(1, 2)
    assert len(r0) == len(r1) == 60 // 8  # same step count on every rank
    rows0 = {tuple(x.tolist()) for b in r0 for x in b}
    rows1 = {tuple(x.tolist()) for b in r1 for x in b}
    assert len(rows0) == 28 and not rows0 & rows1  # disjoint, no repeats within an epoch
    # deterministic, epoch-dependent, resumable mid-epoch
    assert all(torch.equal(x, y) for x, y in zip(epoch(0, 1), epoch(0, 1)))
    assert not all(torch.equal(x, y) for x, y in zip(epoch(0, 1), epoch(0, 1, ep=1)))
    full = epoch(0, 1, workers=2)
    assert all(torch.equal(x, y) for x, y in zip(full[5:], epoch(0, 1, workers=2, skip=5)))


def test_batched_preprocess_equals_the_per_sample_transform_bit_for_bit(tmp_path: Path) -> None:
    from PIL import Image

    from pipelines.train.clip_data import BatchedPreprocess

    lm = tiny_clip()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(5)]
    per_sample, pixels = [], []
    batched = BatchedPreprocess(lm.preprocess_train)
    assert batched.head is not None  # open_clip's train transform ends in ToTensor + Normalize
    for i, image in enumerate(images):  # the random crop draws the same parameters from the same seed
        torch.manual_seed(i)
        per_sample.append(lm.preprocess_train(image))
        torch.manual_seed(i)
        pixels.append(batched.sample(image))
    assert all(isinstance(p, np.ndarray) and p.dtype == np.uint8 for p in pixels)
    out = batched.collate(pixels)
    assert out.is_contiguous() and torch.equal(out, torch.stack(per_sample))
    # a grey image comes out of the head in mode L; it takes the per-sample tail, in the same batch
    torch.manual_seed(9)
    grey = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    mixed = batched.collate([pixels[0], batched.sample(grey.convert("RGB"))])
    torch.manual_seed(9)
    assert torch.equal(mixed[1], lm.preprocess_train(grey.convert("RGB")))
    # any other transform runs whole, per sample
    plain = BatchedPreprocess(lambda im: torch.ones(2))
    assert plain.head is None and torch.equal(plain.collate([plain.sample(images[0])]), torch.ones(1, 2))


def test_augmentation_is_seeded_per_sample_and_leaves_the_trainers_rng_alone(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "train-000000.tar", 8)
    lm = tiny_clip()

    def first_batch() -> torch.Tensor:
        loader, _ = make_train_loader([shard], lm.preprocess_train, lm.tokenizer, 8, 0, 0, 0)
        iterator = iter(loader)  # the DataLoader draws its base seed here, before any sample
        torch.manual_seed(123)
        images, _ = next(iterator)
        after = torch.rand(4)
        torch.manual_seed(123)
        assert torch.equal(after, torch.rand(4))  # decoding the batch drew nothing from the global RNG
        return images

    a, b = first_batch(), first_batch()
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_images_smaller_than_the_models_input_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import io

    import webdataset as wds
    from PIL import Image

    from pipelines.train import distributed as D
    from pipelines.train.clip_task import ClipTask

    fitting = write_shard(tmp_path / "fitting.tar", 8)  # 64 px, the tiny model's input
    small = tmp_path / "small.tar"
    with wds.TarWriter(str(small)) as sink:
        for i, side in enumerate((64, 40, 48)):
            buf = io.BytesIO()
            Image.fromarray(np.full((side, 80, 3), 90, np.uint8)).save(buf, format="PNG")
            sink.write({"__key__": f"s{i}", "png": buf.getvalue(), "txt": "a grey picture"})
        sink.write({"__key__": "s3", "png": b"not a picture", "txt": "a broken file"})  # left to the decoder: no error here
    lm = tiny_clip()

    def warnings_for(shard: str) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="pipelines.train.clip_task"):
            ClipTask(lm.model, lm.preprocess_train, lm.tokenizer, [shard], CLIP.config(), D.DistInfo())
        return [r.getMessage() for r in caplog.records if r.name == "pipelines.train.clip_task"]

    assert warnings_for(fitting) == []
    assert warnings_for(str(small)) == [
        "2 of the first 3 training images are smaller than the model's 64 px input on their shorter side (down to 40 px): "
        "training enlarges them; curate them at 64 px or more"]
