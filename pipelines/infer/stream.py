"""Windows of a large input read and embedded batch by batch, in threads.

The analyst commands score thousands of windows of a scene or a slide, and evaluation thousands of
test images (pipelines.evaluate.clip.encode_images: a window is an image's index). On a GPU, reading and
preprocessing a window is CPU and disk work and running the model is device work: reader threads
read and preprocess the next batches while the model embeds the current one. On a CPU both are CPU
work: two batches are embedded at once (CPU_BATCHES_AT_ONCE), each by a thread that read it. Only a
few batches of pixels are held at once, so a scene of any size streams in bounded memory.

Threads, not processes: the readers' work runs in native code that lets go of the GIL (GDAL's
warper, OpenSlide's decoder, PIL's resampling, numpy and torch), so threads overlap it with the
model as processes did, without a process start (fork of an interpreter holding torch: about
0.1 s per run, most of a small scene's scoring) nor passing every batch of pixels between processes.
"""
from __future__ import annotations

import copy
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

# A reader turns one window description into the image `to_tensor` takes (the analysts' readers:
# pixels, HxWx3 uint8; evaluation's: a decoded PIL image), or None when the window holds no
# data (nodata, no tissue): such windows are passed on unscored. Each reader thread works on its own
# shallow copy (copy.copy), so a reader must open its file handles lazily, on first call, and not
# copy them (e.g. __getstate__ dropping them). A reader may also have read_batch(windows) -> list of
# the same, for readers that read neighbours together, close() to close its handles, and open() to open
# them now: then the threads' copies are made and opened by the calling thread before the threads start.
WindowImage = Any  # a window's image as a reader returns it and `to_tensor` takes it
Reader = Callable[[Any], WindowImage | None]
PREFETCH = 2  # batches read ahead
# Batches a CPU embeds at once, each on torch's threads. One batch of a small model's operations keeps
# few threads busy, two keep the cores busy: on 2 cores the demo's model embeds 1.9x faster than one
# batch at a time on 1 torch thread, 1.17x on 2, and ViT-B/32 1.9x and 1.02x. Each batch's embeddings
# are bit for bit those of the batch alone. A GPU embeds one batch at a time.
CPU_BATCHES_AT_ONCE = 2


def batches_at_once(device: torch.device | str) -> int:
    """How many batches `embed_windows` embeds at once on `device`: CPU_BATCHES_AT_ONCE on a CPU, 1 on a GPU."""
    return 1 if torch.device(device).type == "cuda" else CPU_BATCHES_AT_ONCE


def batch_spans(n: int, batch_size: int, at_once: int) -> list[tuple[int, int]]:
    """(start, end) of `n` windows' batches: a multiple of `at_once` of them, each at most `batch_size`, within one of each other.

    Batches are embedded `at_once` at a time; a round of fewer batches, or of a full batch beside a
    small one, leaves model threads idle: 437 slide tiles in batches of 64 are six, then 53 alone; in
    eight batches of 54-55 every round keeps both threads busy (on two cores embedded 3-7 % sooner).
    So a job of fewer than `at_once` full batches is cut into `at_once` smaller ones (one window each
    when there are fewer windows than that).
    """
    count = -(-n // max(1, batch_size))
    count = min(n, count + -count % at_once)
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


@dataclass
class Batch:
    """Windows of one batch: their descriptions, and which of them have pixels (and so an embedding)."""

    windows: list[Any]
    valid: np.ndarray  # bool per window
    embeddings: np.ndarray  # (n valid, embed_dim)


def read_batch(read: Reader, windows: Sequence[Any], to_tensor: Callable[[WindowImage], torch.Tensor],
               to_batch: Callable[[list[np.ndarray]], torch.Tensor] | None = None) -> tuple[list[bool], torch.Tensor | None]:
    """Which of `windows` hold data, and the model inputs of those that do (None when none does).

    `to_batch` preprocesses the batch's images at once (stacking `to_tensor`'s, or as near as ClipEncoder.to_batch states).
    """
    reads_together = getattr(read, "read_batch", None)  # faster than one by one, for readers that have it
    found = reads_together(list(windows)) if reads_together else [read(w) for w in windows]
    images = [pixels for pixels in found if pixels is not None]
    valid = [pixels is not None for pixels in found]
    if not images:
        return valid, None
    tensors = to_batch(images) if to_batch is not None else torch.stack([to_tensor(pixels) for pixels in images])
    return valid, tensors


def embed_windows(windows: Sequence[Any], read: Reader, to_tensor: Callable[[WindowImage], torch.Tensor],
                  embed: Callable[[torch.Tensor], np.ndarray], batch_size: int = 64, workers: int = 2,
                  desc: str = "windows", to_batch: Callable[[list[np.ndarray]], torch.Tensor] | None = None,
                  device: torch.device | str = "cpu") -> Iterator[Batch]:
    """Batches of embedded windows, in the order of `windows`, read by `workers` threads.

    `to_tensor` is the model's preprocessing of one image, `to_batch` optionally of a batch's images
    at once (run where the batch is read); `embed` runs the model on `device`, on the same batches
    (`batch_spans`: at most `batch_size` windows, of about one size) whatever `workers` is:
    - on a GPU, `workers` reader threads read ahead while this thread embeds one batch at a time;
    - on a CPU, CPU_BATCHES_AT_ONCE batches at once, each at most a 1/CPU_BATCHES_AT_ONCE share of the
      windows. With workers > 0 each model thread reads the batches it embeds (`_read_then_embed`): the
      cores do one thing at a time instead of reader threads competing with the model for them.
    workers=0 reads in this thread, batch after batch (on a CPU, model threads embed them).
    """
    at_once = batches_at_once(device)
    on_gpu = torch.device(device).type == "cuda"  # pinned host memory only for a GPU
    batches = batch_spans(len(windows), batch_size, at_once)
    model_threads_read = at_once > 1 and workers > 0  # on a CPU, each model thread reads the batches it embeds
    readers = _ThreadReaders(read, at_once if model_threads_read else workers)  # a copy for each thread that reads

    def load(span: tuple[int, int]) -> tuple[list[bool], torch.Tensor | None]:
        return read_batch(readers.own() if workers > 0 else read, windows[span[0]:span[1]], to_tensor, to_batch)

    def embed_batch(tensors: torch.Tensor | None) -> np.ndarray:
        if tensors is None:
            return np.zeros((0, 0), np.float32)
        return embed(tensors.pin_memory() if on_gpu else tensors)

    def read_then_embed(span: tuple[int, int]) -> tuple[list[bool], np.ndarray]:
        valid, tensors = load(span)
        return valid, embed_batch(tensors)

    if model_threads_read:
        done = _read_then_embed(batches, read_then_embed, at_once)
    else:
        done = _read_ahead(batches, load, embed_batch, workers, at_once)
    try:
        with tqdm(total=len(windows), desc=desc, unit="window", disable=None) as bar:
            for (start, end), valid, embeddings in done:
                bar.update(end - start)
                yield Batch(list(windows[start:end]), np.asarray(valid, bool), embeddings)
    finally:
        done.close()  # its threads are done (queued batches cancelled, running ones finished) before the handles close
        readers.close()


class _ThreadReaders:
    """A shallow copy of a reader for each thread that reads (file handles are not shared between threads), closed at the end.

    A reader with open() has its copies for `threads` threads made and opened here, in the calling thread: a thread's
    first open of a raster costs GDAL's and PROJ's set-up for that thread (about 7 ms), where this thread has had it.
    """

    def __init__(self, read: Reader, threads: int) -> None:
        self.read, self.copies, self.lock, self.local = read, [], threading.Lock(), threading.local()
        if getattr(read, "open", None) is not None:
            try:
                for _ in range(threads):
                    self.copies.append(copy.copy(read))  # closed at the end, used or not
                    self.copies[-1].open()
            except BaseException:
                self.close()
                raise
        self.ready = list(self.copies)

    def own(self) -> Reader:
        """This thread's copy of the reader: one opened already, else made on its first call."""
        if not hasattr(self.local, "reader"):
            with self.lock:
                if self.ready:
                    self.local.reader = self.ready.pop()
                else:
                    self.local.reader = copy.copy(self.read)
                    self.copies.append(self.local.reader)
        return self.local.reader

    def close(self) -> None:
        """Let each copy go of its file handles, for readers that can (they have a close method)."""
        for reader in self.copies:
            close = getattr(reader, "close", None)
            if close is not None:
                close()


Done = tuple[tuple[int, int], list[bool], np.ndarray]  # a batch's span of windows, which hold data, their embeddings


def _read_then_embed(batches: list[tuple[int, int]], read_then_embed: Callable[[tuple[int, int]], tuple[list[bool], np.ndarray]],
                     threads: int) -> Iterator[Done]:
    """Each batch read, then embedded, by one of `threads` threads; handed over in order.

    On a CPU reading and the model compete for the same cores: reader threads beside the model
    threads only add switching between them (the remote-sensing benchmark's 256 windows were scored
    10-12 % sooner without them), and the first model call waits for one batch, not two. Up to
    `threads` more batches are queued, so a thread that finishes one starts the next at once
    while this thread waits for the oldest; only the batches being worked on hold pixels.
    """
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="window-model")
    queued = iter(batches)
    working: deque[tuple[tuple[int, int], Future]] = deque()
    try:
        while True:
            while len(working) < 2 * threads and (span := next(queued, None)) is not None:
                working.append((span, pool.submit(read_then_embed, span)))
            if not working:
                return
            span, future = working.popleft()
            yield (span, *future.result())
    finally:
        for _, future in working:
            future.cancel()
        pool.shutdown(wait=True)


def _read_ahead(batches: list[tuple[int, int]], load: Callable[[tuple[int, int]], tuple[list[bool], torch.Tensor | None]],
                embed_batch: Callable[[torch.Tensor | None], np.ndarray], workers: int, at_once: int) -> Iterator[Done]:
    """Batches read ahead by `workers` threads (none: in this thread) and embedded `at_once` at a time (1: in this thread), in order.

    Each batch is read in `workers` consecutive parts, one per thread: the first batch reaches the
    model sooner (the model waits for it), and the parts are put together in order. At most
    PREFETCH batches are read ahead.
    """
    parts = max(1, workers)
    spans = []
    for start, end in batches:
        step = -(-(end - start) // parts)
        spans.append([(s, min(s + step, end)) for s in range(start, end, step)])
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="window-reader") if workers > 0 else None
    model = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="window-model") if at_once > 1 else None
    pending: deque[Future] = deque()
    embedding: deque[tuple[tuple[int, int], list[bool], Future]] = deque()  # batches handed to the model threads, in order
    queued = iter([span for batch in spans for span in batch])
    try:
        for number, (batch, parts_of_batch) in enumerate(zip(batches, spans)):
            valid: list[bool] = []
            found: list[torch.Tensor] = []
            for span in parts_of_batch:
                if pool is None:
                    part_valid, tensors = load(span)
                else:
                    while len(pending) < PREFETCH * parts and (nxt := next(queued, None)) is not None:
                        pending.append(pool.submit(load, nxt))
                    part_valid, tensors = pending.popleft().result()
                valid += part_valid
                if tensors is not None:
                    found.append(tensors)
            tensors = (found[0] if len(found) == 1 else torch.cat(found)) if found else None
            if model is None:  # one batch at a time, in this thread
                future: Future = Future()
                future.set_result(embed_batch(tensors))
            else:
                future = model.submit(embed_batch, tensors)
            embedding.append((batch, valid, future))
            while embedding and (len(embedding) >= at_once or number == len(batches) - 1):
                span, done_valid, future = embedding.popleft()
                yield span, done_valid, future.result()
    finally:
        for executor, futures in ((pool, pending), (model, [f for _, _, f in embedding])):
            if executor is not None:
                for future in futures:
                    future.cancel()
                executor.shutdown(wait=True)
