"""Windows of a large input read ahead by worker processes and embedded batch by batch.

The analyst commands score thousands of windows of a scene or a slide. Reading and preprocessing a
window is CPU and disk work, running the model is device work: a DataLoader's workers read and
preprocess the next windows while the model embeds the current batch, and only one batch of pixels
is in memory per worker, so a scene of any size streams in bounded memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

# A reader turns one window description into pixels (HxWx3 uint8), or None when the window holds no
# data (nodata, no tissue): such windows are passed on unscored. It runs in the worker processes,
# so it must open its own file handles (e.g. lazily, on first call in each process). A reader may
# also have read_batch(windows) -> list of the same, for readers that read neighbours together.
Reader = Callable[[Any], np.ndarray | None]


@dataclass
class Batch:
    """Windows of one batch: their descriptions, and which of them have pixels (and so an embedding)."""

    windows: list[Any]
    valid: np.ndarray  # bool per window
    embeddings: np.ndarray  # (n valid, embed_dim)


class _Windows(IterableDataset):
    def __init__(self, windows: Sequence[Any], read: Reader, to_tensor: Callable[[np.ndarray], torch.Tensor],
                 batch_size: int) -> None:
        self.windows, self.read, self.to_tensor, self.batch_size = windows, read, to_tensor, batch_size

    def __iter__(self) -> Iterator[tuple[list[int], list[bool], torch.Tensor | None]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n_batches = math.ceil(len(self.windows) / self.batch_size)
        for b in range(worker, n_batches, n_workers):  # worker w reads batches w, w + n, ...: DataLoader yields them in order
            indices = list(range(b * self.batch_size, min((b + 1) * self.batch_size, len(self.windows))))
            tensors, valid = [], []
            # A reader may read a batch's windows together (read_batch), faster than one by one.
            read_batch = getattr(self.read, "read_batch", None)
            found = read_batch([self.windows[i] for i in indices]) if read_batch else [self.read(self.windows[i]) for i in indices]
            for pixels in found:
                valid.append(pixels is not None)
                if pixels is not None:
                    tensors.append(self.to_tensor(pixels))
            yield indices, valid, (torch.stack(tensors) if tensors else None)


def embed_windows(windows: Sequence[Any], read: Reader, to_tensor: Callable[[np.ndarray], torch.Tensor],
                  embed: Callable[[torch.Tensor], np.ndarray], batch_size: int = 64, workers: int = 2,
                  desc: str = "windows") -> Iterator[Batch]:
    """Batches of embedded windows, in the order of `windows`, read ahead by `workers` processes.

    `to_tensor` is the model's preprocessing (run in the workers); `embed` runs the model (in this
    process, on its device). workers=0 reads in this process (simplest to debug).
    """
    dataset = _Windows(windows, read, to_tensor, batch_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    with tqdm(total=len(windows), desc=desc, unit="window", disable=None) as bar:
        for indices, valid, tensors in loader:
            embeddings = embed(tensors) if tensors is not None else np.zeros((0, 0), np.float32)
            bar.update(len(indices))
            yield Batch([windows[i] for i in indices], np.asarray(valid, bool), embeddings)
