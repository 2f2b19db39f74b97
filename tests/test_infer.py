"""The analysts' machinery: exported models as encoders, read-ahead windows, the embedding cache."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import InputError
from pipelines.infer import outputs
from pipelines.infer.cache import EmbeddingCache
from pipelines.infer.clip import ClipEncoder, _plain_normalisation
from pipelines.infer.stream import batch_spans, embed_windows
from pipelines.io.atomic import atomic_write_bytes
from pipelines.models.clip import WEIGHTS_FILE, ModelSpec, load_model, model_config_of, save_open_clip_dir
from pipelines.models.folders import export_kind


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


def test_zero_shot_embeds_the_same_prompts_once(export: Path) -> None:
    encoder = ClipEncoder.load(export)
    texts: list[int] = []  # prompts the text tower runs on
    encoder.model.transformer.register_forward_hook(lambda _module, args, _out: texts.append(args[0].shape[0]))
    first = encoder.zero_shot(["red", "green"], ["a {c} square.", "{c}"])
    assert sum(texts) == 4
    first.weights.mul_(0)  # a caller's change to its copy reaches no other call
    again = encoder.zero_shot(["red", "green"], ["a {c} square.", "{c}"])
    fresh = ClipEncoder.load(export).zero_shot(["red", "green"], ["a {c} square.", "{c}"])
    assert sum(texts) == 4 and torch.equal(again.weights, fresh.weights)
    other = encoder.zero_shot(["green", "red"], ["a {c} square.", "{c}"])  # other prompts: embedded
    assert sum(texts) == 8 and torch.equal(other.weights, again.weights.flip(1))


def test_the_fingerprint_is_the_weights_digest_and_follows_them(export: Path, tmp_path: Path) -> None:
    """Embedding caches are keyed by it: the sha256 of the weights file (so caches made before stay valid), new weights a new one."""
    encoder = ClipEncoder.load(export)
    assert encoder.fingerprint == hashlib.sha256((export / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), other)
    assert ClipEncoder.load(other).fingerprint not in ("", encoder.fingerprint)


def test_the_weights_digest_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    """A second load reads no digest from the weights; weights written anew (same path, same size) are hashed again, and a
    damaged or unwritable store costs a digest, never a wrong one."""
    import pipelines.io.digests as digests

    hashed = []
    digest = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda path, algorithm: hashed.append(Path(path).name) or digest(path, algorithm))
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    first = ClipEncoder.load(folder).fingerprint
    assert hashed == [WEIGHTS_FILE] and first == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    assert ClipEncoder.load(folder).fingerprint == first and len(hashed) == 1  # remembered

    torch.manual_seed(3)
    size = (folder / WEIGHTS_FILE).stat().st_size
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    assert (folder / WEIGHTS_FILE).stat().st_size == size  # the same architecture: only the content tells them apart
    second = ClipEncoder.load(folder).fingerprint
    assert len(hashed) == 2 and second == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:16] != first

    (tmp_path / "cache" / "weights-digests.json").write_text("{not json")
    assert ClipEncoder.load(folder).fingerprint == second and len(hashed) == 3
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "a-file" / "cache"))  # cannot be created
    assert ClipEncoder.load(folder).fingerprint == second and len(hashed) == 4


def test_an_embedding_cache_knows_an_input_only_while_its_digest_is_remembered(tmp_path: Path) -> None:
    """`knows` tells a slide or scene hashed before and unchanged since (its key costs no read) from one a key must hash."""
    from pipelines.infer.cache import EmbeddingCache

    scene, other = tmp_path / "scene.tif", tmp_path / "other.tif"
    scene.write_bytes(b"pixels" * 1000)
    other.write_bytes(b"other")
    cache = EmbeddingCache(tmp_path / "cache")
    assert not cache.knows([scene]) and not cache.knows([tmp_path / "missing.tif"])
    key = cache.key("model", [scene], {"tile": 64})
    assert cache.knows([scene]) and not cache.knows([scene, other])
    assert EmbeddingCache(tmp_path / "cache").knows([scene])  # remembered across runs
    store = (tmp_path / "cache" / "fingerprints.json").read_text()
    assert "scene" not in store and str(tmp_path) not in store  # file names can be identifiers: the store has digests only
    assert "\n" not in store and " " not in store  # compact: a store of a million files is written 4x faster than indented
    (tmp_path / "cache" / "fingerprints.json").write_text(json.dumps({str(scene): json.loads(store).popitem()[1]}))
    older = EmbeddingCache(tmp_path / "cache")
    assert not older.knows([scene])  # a store keyed by paths (older) is not trusted ...
    older.key("model", [other], {"tile": 64})
    assert "scene" not in (tmp_path / "cache" / "fingerprints.json").read_text()  # ... nor kept
    scene.write_bytes(b"pixels" * 1001)  # changed
    assert not cache.knows([scene]) and cache.key("model", [scene], {"tile": 64}) != key


def test_inputs_are_hashed_with_blake3_and_a_store_of_sha256_digests_is_hashed_anew(tmp_path: Path, monkeypatch) -> None:
    """An input's digest is its BLAKE3; a record a store kept before (sha256, four values) is not taken for one, for inputs,
    and is computed again and replaced; a weights store's sha256 records stay valid (no weights read again)."""
    from blake3 import blake3

    import pipelines.io.digests as digests
    from pipelines.infer.cache import WEIGHTS_DIGESTS, EmbeddingCache

    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"pixels" * 1000)
    assert digests.file_digest(scene) == blake3(scene.read_bytes()).hexdigest()
    assert digests.file_digest(scene, "sha256") == hashlib.sha256(scene.read_bytes()).hexdigest()
    store = tmp_path / "cache" / "fingerprints.json"
    EmbeddingCache(tmp_path / "cache").key("model", [scene], {"tile": 64})
    [(path_key, record)] = json.loads(store.read_text()).items()
    assert record[3:] == ["blake3", blake3(scene.read_bytes()).hexdigest()]
    store.write_text(json.dumps({path_key: [*record[:3], hashlib.sha256(scene.read_bytes()).hexdigest()]}))  # as kept before
    before = EmbeddingCache(tmp_path / "cache")
    assert not before.knows([scene])
    before.key("model", [scene], {"tile": 64})
    assert json.loads(store.read_text())[path_key] == record and EmbeddingCache(tmp_path / "cache").knows([scene])

    hashed = []
    digest = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda path, algorithm: hashed.append(algorithm) or digest(path, algorithm))
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "weights-cache"))
    folder = tmp_path / "model"
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    first = ClipEncoder.load(folder).fingerprint
    weights_store = tmp_path / "weights-cache" / WEIGHTS_DIGESTS
    old = {key: [*r[:3], r[4]] for key, r in json.loads(weights_store.read_text()).items()}  # the same records, as kept before
    weights_store.write_text(json.dumps(old))
    assert ClipEncoder.load(folder).fingerprint == first and hashed == ["sha256"]  # read once, for the first load only


def test_the_encoder_is_the_export_bit_for_bit_though_no_weights_were_drawn(export: Path) -> None:
    """ClipEncoder.load builds without drawing weights: every parameter and buffer (the causal mask too, which no checkpoint
    holds) equals stock open_clip's build and load of the export, and so do the embeddings."""
    import open_clip

    torch.manual_seed(7)
    stock, _, _ = open_clip.create_model_and_transforms(f"local-dir:{export}", weights_only=True)
    stock.eval()
    ours = ClipEncoder.load(export, "cpu").model
    theirs = dict(stock.named_parameters()) | dict(stock.named_buffers())
    mine = dict(ours.named_parameters()) | dict(ours.named_buffers())
    assert mine.keys() == theirs.keys() and any("attn_mask" in k for k in mine)
    for name, tensor in theirs.items():
        assert torch.equal(mine[name], tensor), name
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.encode_image(pixels), stock.encode_image(pixels))


def test_weights_not_drawn_leaves_tensors_and_the_rng_as_they_are_and_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    """Inside, nothing is drawn (the RNG does not move), whoever calls the fills; afterwards, after an error too, all draw again,
    including a module first imported inside that took torch.nn.init's functions by name (as transformers' initialisers do)."""
    import torch.nn.modules.activation as activation

    from pipelines.models.weights import weights_not_drawn

    (tmp_path / "init_by_name.py").write_text("from torch.nn.init import normal_, xavier_uniform_\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tensor = torch.zeros(3, 3)
    rng = torch.random.get_rng_state()
    with pytest.raises(RuntimeError, match="inside"):
        with weights_not_drawn():
            import init_by_name

            torch.nn.init.normal_(tensor)
            activation.xavier_uniform_(tensor)  # imported by name in MultiheadAttention's module
            init_by_name.normal_(tensor)
            tensor.uniform_()
            torch.nn.Linear(3, 3)
            assert not tensor.any() and torch.equal(torch.random.get_rng_state(), rng)
            raise RuntimeError("a failure inside")
    for draw in (torch.nn.init.normal_, init_by_name.normal_, init_by_name.xavier_uniform_, activation.xavier_uniform_):
        tensor.zero_()
        draw(tensor)
        assert tensor.any(), draw


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


def test_the_model_sees_the_same_batches_whatever_the_readers(export: Path) -> None:
    """Batches read in parts by several threads are the batches one thread reads: embeddings equal bit for bit."""
    encoder = ClipEncoder.load(export)
    windows = list(range(23))

    def noise_window(i: int) -> np.ndarray | None:  # at the model's input size: to_batch's one-operation path
        return None if i % 5 == 3 else np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    runs = {workers: list(embed_windows(windows, noise_window, encoder.to_tensor, encoder.embed_tensors, batch_size=5,
                                        workers=workers, to_batch=encoder.to_batch)) for workers in (0, 2, 3)}
    for workers in (2, 3):
        assert [b.windows for b in runs[workers]] == [b.windows for b in runs[0]]
        for ours, alone in zip(runs[workers], runs[0]):
            np.testing.assert_array_equal(ours.valid, alone.valid)
            np.testing.assert_array_equal(ours.embeddings, alone.embeddings)


class HandleReader:
    """A reader that opens a "handle" (its thread) on first use, as the analysts' readers open their files."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.handle: int | None = None
        self.fail_at = fail_at
        self.closed: list[int | None] = []  # shared by the copies (a shallow copy keeps the list)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "handle": None}

    def __call__(self, i: int) -> np.ndarray | None:
        if self.handle is None:
            self.handle = threading.get_ident()
        assert self.handle == threading.get_ident(), "a reader's handle was used by two threads"
        if i == self.fail_at:
            raise OSError(f"window {i} is damaged")
        return colour_window(i)

    def close(self) -> None:
        self.closed.append(self.handle)


def test_reader_threads_use_their_own_handles_and_close_them(export: Path) -> None:
    encoder = ClipEncoder.load(export)
    read = HandleReader()
    batches = list(embed_windows(list(range(40)), read, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=2))
    assert [w for b in batches for w in b.windows] == list(range(40))
    assert read.handle is None  # the readers were copies: the caller's reader never opened anything
    assert 1 <= len(read.closed) <= 2 and all(h is not None for h in read.closed) and len(set(read.closed)) == len(read.closed)


class OpenedReader:
    """A reader with open(): it records which thread opened and which read each copy (a copy keeps the shared lists)."""

    def __init__(self) -> None:
        self.opened: list[tuple[int, str]] = []
        self.read_by: list[tuple[int, str]] = []
        self.closed: list[int] = []

    def open(self) -> None:
        self.opened.append((id(self), threading.current_thread().name))

    def __call__(self, i: int) -> np.ndarray | None:
        self.read_by.append((id(self), threading.current_thread().name))
        return colour_window(i)

    def close(self) -> None:
        self.closed.append(id(self))


def test_a_reader_with_open_has_the_threads_copies_opened_by_the_calling_thread(export: Path) -> None:
    """Each model thread reads through a copy of its own that the calling thread made and opened before the threads
    started (where it has GDAL and PROJ set up); every copy is closed; the batches are those of one reader."""
    encoder = ClipEncoder.load(export)
    read = OpenedReader()
    batches = list(embed_windows(list(range(40)), read, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=2))
    alone = list(embed_windows(list(range(40)), colour_window, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=0))
    assert [b.windows for b in batches] == [b.windows for b in alone]
    for ours, one in zip(batches, alone):
        np.testing.assert_array_equal(ours.embeddings, one.embeddings)
    opened = {copy_id for copy_id, _ in read.opened}
    assert len(opened) == 2 and {name for _, name in read.opened} == {threading.current_thread().name}
    readers = {copy_id: name for copy_id, name in read.read_by}
    assert set(readers) <= opened and len(set(readers.values())) == len(readers)  # a copy per model thread, opened beforehand
    assert all(name.startswith("window-model") for name in readers.values())
    assert sorted(read.closed) == sorted(opened)


def test_a_reader_thread_failure_reaches_the_caller_and_no_reader_is_left(export: Path) -> None:
    encoder = ClipEncoder.load(export)
    read = HandleReader(fail_at=13)
    with pytest.raises(OSError, match="window 13 is damaged"):
        for _ in embed_windows(list(range(40)), read, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=2):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith(("window-reader", "window-model"))]
    assert read.closed and all(h is not None for h in read.closed)



def test_a_cpu_embeds_two_batches_at_once_and_hands_them_over_in_order(export: Path, monkeypatch) -> None:
    """Two model calls overlap on a CPU (a barrier of two would time out otherwise); batches come out in order, bit for bit."""
    import pipelines.infer.stream as stream

    encoder = ClipEncoder.load(export)
    windows = list(range(23))

    def run() -> list:
        return list(embed_windows(windows, colour_window, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=2))

    monkeypatch.setattr(stream, "CPU_BATCHES_AT_ONCE", 1)
    alone = run()
    monkeypatch.setattr(stream, "CPU_BATCHES_AT_ONCE", 2)
    both_in = threading.Barrier(2, timeout=10)
    seen: list[int] = []

    def embed(batch: torch.Tensor) -> np.ndarray:
        seen.append(len(batch))
        if len(seen) <= 2:
            both_in.wait()  # the first two batches meet here only if they are embedded at once
        time.sleep(0.01 * (len(seen) % 2))  # every other batch finishes late: its successor must still come out second
        return encoder.embed_tensors(batch)

    together = list(embed_windows(windows, colour_window, encoder.to_tensor, embed, batch_size=4, workers=2))
    assert [b.windows for b in together] == [b.windows for b in alone]
    for ours, one in zip(together, alone):
        np.testing.assert_array_equal(ours.valid, one.valid)
        np.testing.assert_array_equal(ours.embeddings, one.embeddings)
    assert sum(seen) == sum(int(b.valid.sum()) for b in alone)  # each batch embedded once


def test_on_a_cpu_each_model_thread_reads_the_batches_it_embeds(export: Path) -> None:
    """No reader thread competes with the model threads: the thread that embeds a batch is the one that read it."""
    encoder = ClipEncoder.load(export)
    read_by: dict[int, str] = {}
    embedded_by: list[tuple[str, int]] = []

    def read(i: int) -> np.ndarray | None:
        read_by[i] = threading.current_thread().name
        return colour_window(i)

    def embed(batch: torch.Tensor) -> np.ndarray:
        embedded_by.append((threading.current_thread().name, len(batch)))
        return encoder.embed_tensors(batch)

    batches = list(embed_windows(list(range(40)), read, encoder.to_tensor, embed, batch_size=4, workers=2))
    assert [w for b in batches for w in b.windows] == list(range(40))
    assert all(name.startswith("window-model") for name in read_by.values())
    threads = {b.windows[0]: read_by[b.windows[0]] for b in batches}
    for b in batches:  # each batch read by one thread
        assert {read_by[w] for w in b.windows} == {threads[b.windows[0]]}
    assert len(embedded_by) == len(batches) and {name for name, _ in embedded_by} <= set(threads.values())


def test_a_model_thread_takes_the_next_batch_while_the_oldest_is_still_embedded(export: Path) -> None:
    """Batch 0 is embedded slowly: batches 1 and 2 go through the other model thread meanwhile (else batch 0 waits forever here)."""
    encoder = ClipEncoder.load(export)
    first_of = {n: encoder.to_tensor(colour_window(w)) for n, w in enumerate((0, 4, 9, 12))}  # batches of 4; window 8 is empty
    third_started = threading.Event()
    embedded: list[int] = []

    def embed(batch: torch.Tensor) -> np.ndarray:
        number = next(n for n, first in first_of.items() if torch.equal(batch[0], first))
        embedded.append(number)
        if number == 2:
            third_started.set()
        if number == 0:
            assert third_started.wait(timeout=10), "the third batch did not start while the first was embedded"
        return encoder.embed_tensors(batch)

    batches = list(embed_windows(list(range(16)), colour_window, encoder.to_tensor, embed, batch_size=4, workers=2))
    assert [w for b in batches for w in b.windows] == list(range(16)) and sorted(embedded) == [0, 1, 2, 3]


@pytest.mark.parametrize(("n", "batch_size", "sizes"), [(10, 64, [5, 5]), (13, 4, [3, 3, 3, 4])])
def test_every_round_of_batches_keeps_both_model_threads_busy(export: Path, n: int, batch_size: int, sizes: list[int]) -> None:
    """On two model threads, an even number of batches of about one size, two at a time: 10 windows at batch size 64 are
    two batches of 5 (not one of 10 on one thread), 13 at batch size 4 four of 3-4 (not 4, 4, 4 and then 1 alone)."""
    encoder = ClipEncoder.load(export)
    both_in = threading.Barrier(2, timeout=10)
    seen: list[int] = []

    def embed(batch: torch.Tensor) -> np.ndarray:
        seen.append(len(batch))
        both_in.wait()  # every batch meets another: a batch left alone in a round would time out here
        return encoder.embed_tensors(batch)

    batches = list(embed_windows(list(range(n)), lambda i: np.full((40, 40, 3), i * 15, np.uint8), encoder.to_tensor, embed,
                                 batch_size=batch_size, workers=2))
    assert [w for b in batches for w in b.windows] == list(range(n)) and sorted(seen) == sizes


def test_batch_spans_cover_the_windows_in_even_batches() -> None:
    """Every window once, in order; batches at most batch_size, within one of each other, a multiple of the threads."""
    for n, size in [(437, 64), (256, 64), (7, 64), (1, 64), (0, 4)]:
        spans = batch_spans(n, size, 2)
        assert [i for a, b in spans for i in range(a, b)] == list(range(n))
        lengths = [b - a for a, b in spans]
        assert all(0 < k <= size for k in lengths) and max(lengths, default=0) - min(lengths, default=0) <= 1
        assert len(spans) % 2 == 0 or len(spans) == n
    assert len(batch_spans(437, 64, 2)) == 8 and len(batch_spans(437, 64, 1)) == 7


def test_stopping_early_leaves_no_model_thread(export: Path) -> None:
    encoder = ClipEncoder.load(export)
    batches = embed_windows(list(range(40)), colour_window, encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=2)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("window-model", "window-reader"))]


def test_stopping_early_closes_the_handles_after_the_last_read(export: Path) -> None:
    """The caller stops after one batch: the batches still being read finish before the readers' handles are closed."""
    encoder = ClipEncoder.load(export)
    events: list[str] = []

    class SlowReader(HandleReader):
        def __call__(self, i: int) -> np.ndarray | None:
            time.sleep(0.01)  # the other model thread is still reading when the caller stops
            events.append("read")
            return super().__call__(i)

        def close(self) -> None:
            events.append("close")
            super().close()

    batches = embed_windows(list(range(40)), SlowReader(), encoder.to_tensor, encoder.embed_tensors, batch_size=4, workers=2)
    next(batches)
    batches.close()
    assert "close" in events and "read" not in events[events.index("close"):]


def test_batch_preprocessing_equals_one_image_at_a_time(export: Path) -> None:
    """to_batch gives what to_tensor gives: bit for bit at the model's input size and for images Pillow resizes and crops,
    within 2 grey levels on under 1% of values for square images torch resizes (bicubic, Pillow's filter reimplemented)."""
    encoder = ClipEncoder.load(export)
    side, mean, std = _plain_normalisation(encoder.preprocess)
    assert side == 64  # open_clip's pipeline is recognised: the one-operation path is the one tested
    rng = np.random.default_rng(0)
    at_input = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    at_input.append(np.zeros((64, 64, 3), np.uint8))
    at_input.append(np.full((64, 64, 3), 255, np.uint8))
    not_square = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((90, 70, 3), (70, 131, 3))]  # a tall and a wide window
    for images in (at_input, at_input[:1], not_square, [*at_input[:2], not_square[0]]):
        expected = torch.stack([encoder.to_tensor(im) for im in images])
        batch = encoder.to_batch(images)
        assert batch.dtype == expected.dtype and torch.equal(batch, expected)

    def grey_levels(batch: torch.Tensor) -> torch.Tensor:
        return (batch * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)) * 255

    # square: slide tiles (a smooth image, as tissue is, and noise), a larger window, one too small; in one batch with others
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).resize((224, 224), Image.BICUBIC))
    square = [smooth, rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), rng.integers(0, 256, (100, 100, 3), dtype=np.uint8),
              rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    images = [*square, at_input[0], not_square[1], square[0]]
    expected, batch = torch.stack([encoder.to_tensor(im) for im in images]), encoder.to_batch(images)
    apart = (grey_levels(batch) - grey_levels(expected)).abs()
    assert float(apart.max()) <= 2 + 1e-3 and float((apart > 0.5).float().mean()) < 0.01
    assert torch.equal(batch[4:6], expected[4:6]) and torch.equal(batch[0], batch[6])


def test_batch_preprocessing_resizes_bilinear_as_pillow_does(export: Path) -> None:
    """With a bilinear pipeline torch's antialiased resize gives Pillow's bytes exactly."""
    from torchvision.transforms import InterpolationMode

    encoder = ClipEncoder.load(export)
    encoder.preprocess.transforms[0].interpolation = InterpolationMode.BILINEAR
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)] + [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)]
    assert torch.equal(encoder.to_batch(images), torch.stack([encoder.to_tensor(im) for im in images]))


def test_batch_preprocessing_keeps_any_other_pipeline(export: Path) -> None:
    from torchvision import transforms

    encoder = ClipEncoder.load(export)
    encoder.preprocess = transforms.Compose([transforms.Resize(64), transforms.ToTensor()])  # not open_clip's: no normalisation
    assert _plain_normalisation(encoder.preprocess) is None
    images = [np.full((64, 64, 3), v, np.uint8) for v in (0, 100, 255)]
    assert torch.equal(encoder.to_batch(images), torch.stack([encoder.to_tensor(im) for im in images]))


def test_the_embedding_cache_lives_with_the_other_caches(tmp_path: Path, monkeypatch) -> None:
    """$DOMAINFM_CACHE (e.g. an encrypted disk for identifiable slides) holds the window embeddings too, not ~/.cache."""
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "private"))
    cache = EmbeddingCache()
    cache.save(cache.key("model", [], {}), np.ones((1, 4)), [{"window": 0}])
    assert cache.folder == tmp_path / "private" / "embeddings" and list(cache.folder.glob("*.npz"))


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


def _entry_bytes(cache: EmbeddingCache, key: str) -> int:
    return sum(p.stat().st_size for p in cache.folder.glob(f"{key}.*"))


def test_the_embedding_cache_deletes_the_least_recently_used_entries_beyond_its_bound(tmp_path: Path) -> None:
    """A write past `max_bytes` deletes the least recently written or loaded entries, pictures with their embeddings, down
    to 90% of it; the entry just written stays even when it alone is larger; the fingerprints store is never deleted."""
    import os

    probe = EmbeddingCache(tmp_path / "probe", max_bytes=10**9)
    probe.save("probe", np.ones((64, 32)), [{"window": 0}])
    entry = _entry_bytes(probe, "probe")  # one entry's size
    cache = EmbeddingCache(tmp_path / "cache", max_bytes=3 * entry + entry // 5)  # 90% of it: 2.88 entries
    (tmp_path / "scene.tif").write_bytes(b"pixels")
    cache.key("model", [tmp_path / "scene.tif"], {})  # writes the fingerprints store
    for i, key in enumerate(["a", "b", "c"]):
        cache.save(key, np.full((64, 32), i), [{"window": 0}])
        os.utime(cache.folder / f"{key}.npz", (1000 + i, 1000 + i))  # written in this order, a second apart
    cache.save_picture("a", "view", np.zeros((4, 4, 3), np.uint8))  # a's picture: a now holds more than one entry
    assert {p.name for p in cache.folder.glob("*.np?")} == {"a.npz", "a.view.npy", "b.npz", "c.npz"}  # within the bound
    assert cache.load("a") is not None  # a used now: b is the least recently used
    cache.save("d", np.full((64, 32), 3), [{"window": 0}])  # past the bound: b, then c, down to 90%
    assert sorted(p.name for p in cache.folder.glob("*.np?")) == ["a.npz", "a.view.npy", "d.npz"]
    cache.save("e", np.full((64, 32), 4), [{"window": 0}])  # within it again
    assert sorted(p.name for p in cache.folder.glob("*.np?")) == ["a.npz", "a.view.npy", "d.npz", "e.npz"]
    small = EmbeddingCache(tmp_path / "cache", max_bytes=1)
    small.save("f", np.ones((64, 32)), [{"window": 0}])
    assert [p.name for p in cache.folder.glob("*.np?")] == ["f.npz"] and (cache.folder / "fingerprints.json").is_file()
    np.testing.assert_array_equal(small.load("f")[0], np.ones((64, 32)))


def test_a_write_under_the_bound_does_not_count_the_folder(tmp_path: Path, monkeypatch) -> None:
    """Writes keep a running count; the folder is scanned only without one (or a damaged one) or when it passes the bound."""
    scans = []
    bound = EmbeddingCache.bound
    monkeypatch.setattr(EmbeddingCache, "bound", lambda self, keep, target: scans.append(keep) or bound(self, keep, target))
    cache = EmbeddingCache(tmp_path / "cache", max_bytes=10**6)
    for key in ["a", "b", "c"]:
        cache.save(key, np.ones((64, 32)), [{"window": 0}])
    assert len(scans) == 1  # the first write: no count yet
    entries = sum(p.stat().st_size for p in cache.folder.glob("*.npz"))
    assert json.loads((cache.folder / "usage.json").read_text()) == {"bytes": entries}
    (cache.folder / "usage.json").write_text("{")
    cache.save_picture("c", "view", np.zeros((4, 4, 3), np.uint8))
    assert len(scans) == 2
    (cache.folder / "a.npz").unlink()  # deleted by hand: still counted, until a write passes the bound
    (cache.folder / "usage.json").write_text(json.dumps({"bytes": 10**6 - 10}))
    cache.save("d", np.ones((64, 32)), [{"window": 0}])
    assert len(scans) == 3 and sorted(p.name for p in cache.folder.glob("*.np?")) == ["b.npz", "c.npz", "c.view.npy", "d.npz"]
    assert json.loads((cache.folder / "usage.json").read_text())["bytes"] == sum(
        p.stat().st_size for p in cache.folder.glob("*.np?"))  # counted again: nothing deleted, it fits


def test_a_damaged_cache_entry_is_computed_again(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    cache.save("k", np.ones((2, 4)), [{"window": 0}])
    path = cache.folder / "k.npz"
    path.write_bytes(path.read_bytes()[:50])  # cut short, as by a full disk or a killed copy
    assert cache.load("k") is None
    cache.save("k", np.ones((2, 4)), [{"window": 0}])
    assert cache.load("k")[1] == [{"window": 0}]


def test_the_cache_writes_without_fsync_and_outputs_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache entries are rebuilt when unreadable, so they skip the fsync; other atomic writes (outputs) keep it."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    cache = EmbeddingCache(tmp_path / "cache")
    cache.save("k", np.ones((2, 4)), [{"window": 0}])
    cache.save_picture("k", "view", np.zeros((4, 4, 3), np.uint8))
    assert synced == [] and cache.load("k") is not None and cache.load_picture("k", "view") is not None
    atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert len(synced) == 1


def test_a_picture_cut_short_is_made_again(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    cache.save_picture("k", "view", np.full((40, 40, 3), 9, np.uint8))
    path = cache.folder / "k.view.npy"
    path.write_bytes(path.read_bytes()[:500])  # a crash before the bytes reached the disk
    assert cache.load_picture("k", "view") is None


@pytest.mark.parametrize("value", ["", "0.5", "20"])
def test_the_embedding_cache_bound_comes_from_the_environment(value: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOMAINFM_EMBEDDINGS_MAX_GB", value)
    assert EmbeddingCache(tmp_path / "cache").max_bytes == int(float(value or 5) * 1e9)


@pytest.mark.parametrize("value", ["lots", "0", "-1", "nan"])
def test_a_bad_embedding_cache_bound_is_named(value: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOMAINFM_EMBEDDINGS_MAX_GB", value)
    with pytest.raises(InputError, match="DOMAINFM_EMBEDDINGS_MAX_GB"):
        EmbeddingCache(tmp_path / "cache")



def _run_each(inputs: list[str], out: Path, skip: bool, done: list[str], said: list[str]) -> list[tuple[str, str]]:
    """`outputs.run_each` over names: "bad..." ones are bad inputs, "bug" a bug; the others are appended to `done`."""
    def run(name: str) -> None:
        if name.startswith("bad"):
            raise InputError(f"{name}: cannot be read\t(damaged)")
        if name == "bug":
            raise ValueError("not an input's fault")
        done.append(name)

    return outputs.run_each(inputs, run, out, skip, said.append)


def test_a_failing_input_stops_a_run_naming_it_and_the_option_that_goes_on(tmp_path: Path) -> None:
    done: list[str] = []
    with pytest.raises(InputError) as several:
        _run_each(["a", "bad1", "b"], tmp_path / "out", False, done, [])
    assert done == ["a"] and str(several.value) == f"bad1: cannot be read\t(damaged) ({outputs.SKIP_HINT})"
    with pytest.raises(InputError) as one:
        _run_each(["bad1"], tmp_path / "out", False, done, [])
    assert str(one.value) == "bad1: cannot be read\t(damaged)" and not (tmp_path / "out").exists()


def test_skipping_leaves_out_the_failing_inputs_and_lists_them_with_their_reasons(tmp_path: Path) -> None:
    import csv

    out = tmp_path / "out"
    done, said = [], []
    skipped = _run_each(["bad1", "a", "bad2", "b"], out, True, done, said)
    assert done == ["a", "b"] and skipped == [("bad1", "cannot be read\t(damaged)"), ("bad2", "cannot be read\t(damaged)")]
    assert said == ["skipped bad1: cannot be read\t(damaged)", "skipped bad2: cannot be read\t(damaged)"]
    with open(out / outputs.SKIPPED_FILE, newline="") as f:
        assert list(csv.reader(f, dialect="excel-tab")) == [["input", "reason"], *map(list, skipped)]  # the tab stays in its cell
    said.clear()
    assert _run_each(["a"], out, True, done, said) == [] and said == []  # the next run's list replaces it: none skipped
    assert (out / outputs.SKIPPED_FILE).read_text() == "input\treason\n"
    with pytest.raises(InputError, match=r"none of the 2 inputs could be used .*bad1: cannot be read.*; bad2: "):
        _run_each(["bad1", "bad2"], tmp_path / "all", True, done, said)
    assert (tmp_path / "all" / outputs.SKIPPED_FILE).read_text().count("cannot be read") == 2
    with pytest.raises(ValueError, match="not an input's fault"):  # a bug is no bad input: it stops the run
        _run_each(["a", "bug", "b"], tmp_path / "bug", True, done, said)
