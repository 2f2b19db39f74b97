"""Deterministic, rank-split training batches from the curated WebDataset shards.

Each epoch is a pure function of (shards, seed, epoch, rank, world_size, workers, batch_size):

* Every (rank, dataloader worker) pair is a "slot". With at least as many shards as slots, the
  shards are permuted with a seed derived from (seed, epoch) and dealt round-robin to the slots,
  so each slot reads only its own shards. With fewer shards than slots (small datasets), every
  slot reads all shards in the same seeded order and keeps every n-th sample. Either way the
  ranks see disjoint samples.
* Within a slot, samples go through a seeded shuffle buffer; raw bytes are decoded only for
  samples the slot keeps (`pipelines.io.png.open_rgb`: the curation's own PNGs on a fast path,
  1.5-2x Pillow's decoder, any other image through Pillow, the same RGB pixels either way).
* DDP needs every rank to run the same number of steps, so the epoch length is fixed up front:
  `steps_per_epoch = total_samples // (batch_size * world_size)` (drop-last), with the sample
  count read once from the tar headers. A slot whose shards run short starts another seeded pass
  over them.
* With `caption_variants`, each sample's text is drawn per epoch from its `txt` and the
  `caption_variants` of its `json` (e.g. SkyScript's title and title_multi_objects), seeded from
  (seed, epoch, key): more context per pair at no curation cost.
* Augmentation randomness is seeded per sample from (seed, epoch, key) on the CPU generator, whose
  state is restored afterwards, so it neither depends on which rank a sample lands on nor disturbs
  the trainer's RNG. (Seeding the generator directly costs microseconds; `torch.manual_seed` under
  `fork_rng` cost about 0.3 ms a sample, as much as decoding it.)
* A transform ending in ToTensor + Normalize (open_clip's) runs its head per sample and that tail
  once on the stacked uint8 batch: the same element-wise operations in the same order, so the same
  floats, for a fraction of the per-sample cost (`BatchedPreprocess`).
* `skip_batches` resumes mid-epoch: skipped samples are dropped before decoding, and the worker
  roles are rotated so that the DataLoader's round-robin over workers still yields the batches in
  the uninterrupted order.
"""
from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import Compose, Normalize, ToTensor

from pipelines.io.png import open_rgb
from pipelines.io.shards import IMAGE_EXTS, TEXT_EXT, count_samples, is_image_text_sample
from pipelines.train.seeds import stable_seed

DEFAULT_SHUFFLE_BUFFER = 1000


def steps_for(total_samples: int, batch_size: int, world_size: int, multiple_of: int = 1) -> int:
    """Batches per rank per epoch (drop-last), rounded down to a multiple of `multiple_of`."""
    steps = total_samples // (batch_size * world_size)
    return steps - steps % multiple_of


def _usable_samples(shards: list[str]) -> Iterator[dict[str, Any]]:
    for sample in wds.tarfile_to_samples()(iter([{"url": s} for s in shards])):
        exts = {k.lower(): k for k in sample if not k.startswith("__")}
        if is_image_text_sample(set(exts)):
            image_ext = next(e for e in IMAGE_EXTS if e in exts)
            yield {"__key__": sample["__key__"], "image_ext": image_ext,
                   "image": sample[exts[image_ext]], "txt": sample[exts[TEXT_EXT]], "json": sample.get(exts.get("json", ""))}


def images_smaller_than(shards: list[str], size: int, first: int = 64) -> str | None:
    """A warning when any of the first `first` images is smaller than `size` px on its shorter side (training enlarges it), else None.

    Only the images' headers are parsed, nothing is decoded. A model's input larger than the curated images (a 336 px
    model on shards curated at 256) trains on enlarged, blurred pixels without any error.
    """
    shorter = []
    for sample in itertools.islice(_usable_samples(shards), first):
        try:
            with Image.open(io.BytesIO(sample["image"])) as image:
                shorter.append(min(image.size))
        except OSError:  # not an image: the decoder names it when training reaches it; a warning must not stop the run
            continue
    small = [side for side in shorter if side < size]
    if not small:
        return None
    return (f"{len(small)} of the first {len(shorter)} training images are smaller than the model's {size} px input on their "
            f"shorter side (down to {min(small)} px): training enlarges them; curate them at {size} px or more")


def _shuffled(samples: Iterator[dict[str, Any]], bufsize: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Reservoir-style shuffle buffer driven by an explicit RNG (deterministic)."""
    buf: list[dict[str, Any]] = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(len(buf))
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


class BatchedPreprocess:
    """A per-sample image transform whose trailing ToTensor + Normalize runs once per batch.

    `sample(image)` applies the transform's head (crop, resize, mode conversion) and returns the RGB
    uint8 pixels (H, W, 3) when the transform ends in ToTensor + Normalize and the head yields an RGB
    PIL image; otherwise it returns the transform's own tensor. `collate(items)` stacks a batch: the
    uint8 pixels become floats exactly as ToTensor then Normalize make them (divide by 255, subtract
    the mean, divide by the std, element-wise in that order), so the batch equals stacking the
    per-sample transform's outputs bit for bit.
    """

    def __init__(self, preprocess: Callable) -> None:
        self.preprocess = preprocess
        self.head: Callable | None = None
        self.normalize: Normalize | None = None
        steps = preprocess.transforms if isinstance(preprocess, Compose) else []
        if len(steps) >= 2 and isinstance(steps[-2], ToTensor) and isinstance(steps[-1], Normalize):
            self.head, self.normalize = Compose(steps[:-2]), steps[-1]

    def sample(self, image: Image.Image) -> torch.Tensor | np.ndarray:
        """One sample: RGB uint8 pixels (H, W, 3) when the tail is batched, else the transform's tensor."""
        if self.head is None:
            return self.preprocess(image)
        out = self.head(image)
        if isinstance(out, Image.Image) and out.mode == "RGB":
            return np.array(out, dtype=np.uint8, copy=True)
        return self.normalize(ToTensor()(out))

    def _tail(self, pixels: torch.Tensor) -> torch.Tensor:
        # ToTensor: to float, / 255; Normalize: - mean, / std (per channel), the same ops batched.
        images = pixels.to(dtype=torch.get_default_dtype()).div(255)
        mean = torch.as_tensor(self.normalize.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.as_tensor(self.normalize.std, dtype=images.dtype).view(1, -1, 1, 1)
        return images.sub_(mean).div_(std)

    def collate(self, items: list[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """The batch tensor (B, 3, H, W) of `sample` outputs."""
        if all(isinstance(x, np.ndarray) for x in items) and len({x.shape for x in items}) == 1:
            return self._tail(torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous())
        return torch.stack([x if isinstance(x, torch.Tensor) else self._tail(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous())[0]
                            for x in items])


class _EpochBatches(IterableDataset):
    """One epoch of one rank's batches, (images [B,3,H,W], tokens [B,ctx]), already collated."""

    def __init__(self, shards: list[str], preprocess: Callable, tokenizer: Callable, batch_size: int,
                 seed: int, epoch: int, rank: int, world_size: int, workers: int, steps: int,
                 skip_batches: int, shuffle_buffer: int, caption_variants: bool = False) -> None:
        self.shards, self.preprocess, self.tokenizer = shards, BatchedPreprocess(preprocess), tokenizer
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)
        self.steps, self.skip_batches, self.shuffle_buffer = steps, skip_batches, shuffle_buffer
        self.caption_variants = caption_variants

    def __len__(self) -> int:
        return max(self.steps - self.skip_batches, 0)

    def _raw(self, slot: int, n_slots: int) -> Iterator[dict[str, Any]]:
        """This slot's endless stream of raw samples; pass p re-reads the data in a new order."""
        for p in range(1_000_000):
            order = list(self.shards)
            random.Random(stable_seed("shards", self.seed, self.epoch, p)).shuffle(order)
            produced = 0
            if len(order) >= n_slots:
                rng = random.Random(stable_seed("buffer", self.seed, self.epoch, p, slot, n_slots))
                for sample in _shuffled(_usable_samples(order[slot::n_slots]), self.shuffle_buffer, rng):
                    produced += 1
                    yield sample
            else:
                rng = random.Random(stable_seed("buffer", self.seed, self.epoch, p))  # same stream on every slot
                for j, sample in enumerate(_shuffled(_usable_samples(order), self.shuffle_buffer, rng)):
                    if j % n_slots == slot:
                        produced += 1
                        yield sample
            if produced == 0:
                raise RuntimeError(f"no usable samples for data slot {slot}/{n_slots} in {len(order)} shard(s)")
        raise RuntimeError("data stream exhausted")  # unreachable in practice

    def _decode(self, sample: dict[str, Any]) -> torch.Tensor | np.ndarray:
        image = open_rgb(sample["image"])
        generator = torch.default_generator  # torchvision's random transforms draw from it
        state = generator.get_state()
        generator.manual_seed(stable_seed("augment", self.seed, self.epoch, sample["__key__"]))
        try:
            return self.preprocess.sample(image)
        finally:
            generator.set_state(state)

    def _caption(self, sample: dict[str, Any]) -> str:
        caption = sample["txt"].decode("utf-8")
        if not self.caption_variants or not sample.get("json"):
            return caption
        variants = json.loads(sample["json"]).get("caption_variants") or {}
        choices = list(dict.fromkeys([caption, *(v for _, v in sorted(variants.items()) if v)]))
        return random.Random(stable_seed("caption", self.seed, self.epoch, sample["__key__"])).choice(choices)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        n = self.workers
        # DataLoader takes batches from workers 0, 1, ..., n-1, 0, ... ; batch k of the epoch is
        # owned by role k % n, so worker w plays role (w + skip) % n to keep that order on resume.
        role = (worker + self.skip_batches) % n
        mine = [k for k in range(self.steps) if k % n == role]
        skipped = sum(k < self.skip_batches for k in mine)
        todo = len(mine) - skipped
        stream = self._raw(self.rank * n + role, self.world_size * n)
        for _ in range(skipped * self.batch_size):
            next(stream)
        for _ in range(todo):
            raw = [next(stream) for _ in range(self.batch_size)]
            images = self.preprocess.collate([self._decode(s) for s in raw])
            texts = self.tokenizer([self._caption(s) for s in raw])
            yield images, texts


def make_train_loader(
    shards: list[str],
    preprocess: Callable,
    tokenizer: Callable,
    batch_size: int,
    seed: int,
    epoch: int,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
    *,
    counts: list[int] | None = None,
    skip_batches: int = 0,
    batches_multiple_of: int = 1,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    caption_variants: bool = False,
) -> tuple[DataLoader, int]:
    """A DataLoader of this rank's batches for `epoch`, and the (full) number of batches per epoch.

    `counts` (per-shard sample counts, see `count_samples`) avoids rescanning the tars each epoch.
    `skip_batches` drops the first batches of the epoch (resume); the loader then yields
    `steps_per_epoch - skip_batches` batches. `batches_multiple_of` rounds the epoch down (used for
    gradient accumulation so optimizer steps never straddle epochs).
    """
    if not shards:
        raise ValueError("no training shards given")
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"training shard(s) not found: {', '.join(missing[:3])}")
    if counts is None:
        counts = count_samples(shards)
    total = sum(counts)
    steps = steps_for(total, batch_size, world_size, batches_multiple_of)
    if steps == 0:
        raise ValueError(
            f"{total} training samples are fewer than one step of batch_size {batch_size} x world_size {world_size}"
            + (f" x accumulation {batches_multiple_of}" if batches_multiple_of > 1 else "")
        )
    dataset = _EpochBatches(list(shards), preprocess, tokenizer, batch_size, seed, epoch, rank, world_size,
                            workers, steps, min(skip_batches, steps), shuffle_buffer, caption_variants)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False,
                        pin_memory=torch.cuda.is_available())
    return loader, steps
