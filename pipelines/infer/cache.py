"""Embeddings kept on disk per (model, input content, tiling), so the next query over the same input is instant.

The folder is bounded, as ccache bounds its own: it holds at most `$DOMAINFM_EMBEDDINGS_MAX_GB`
gigabytes of entries (default 5: a few thousand scenes or slides; an entry is a key's embeddings and
the pictures beside them). Each write adds its bytes to a running count (`usage.json`); a write that
takes the count past the bound counts the folder again and deletes the entries least recently written
or loaded, down to 90% of it, never the entry just written. So a write costs no scan of the folder
(65 ms for 5,000 entries) until the bound is near. A deleted entry is computed again when next needed.
Entries are written whole (a temp file renamed) but not fsynced: a crash may lose the last ones or cut
them short, and an entry that cannot be read is computed again, as a deleted one is.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipelines.errors import InputError
from pipelines.io.atomic import atomic_write_bytes
from pipelines.io.digests import WEIGHTS_ALGORITHM, Fingerprints
from pipelines.io.remote import cache_root

WEIGHTS_DIGESTS = "weights-digests.json"  # under cache_root(): weights_fingerprint's remembered digests
MAX_GB_VARIABLE = "DOMAINFM_EMBEDDINGS_MAX_GB"
DEFAULT_MAX_GB = 5.0
USAGE_FILE = "usage.json"  # {"bytes": the entries' size when last counted, plus what was written since}
BOUND_TARGET = 0.9  # a bound crossed deletes down to this share of it, so the next writes do not count the folder again
CACHE_HELP = (f"Embedding cache folder (default $DOMAINFM_CACHE/embeddings, else ~/.cache/domainfm/embeddings), kept within "
              f"${MAX_GB_VARIABLE} GB (default {DEFAULT_MAX_GB:g}): the least recently used entries are deleted first.")


def weights_fingerprint(path: Path) -> str:
    """What identifies a weights file for the embedding caches: the first 16 hex digits of its sha256.

    The digest is remembered across processes in `cache_root()/weights-digests.json` with the file's
    size, mtime and inode, and computed again only when one of those changes: the check the curation
    makes of its inputs (`Fingerprints`), and DVC of its files. Hashing a ViT-B/32's 605 MB is ~0.4 s
    of its ~0.7 s load. A store that cannot be written is left as it is (the digest is then computed
    on the next load too).
    """
    store = Fingerprints(cache_root() / WEIGHTS_DIGESTS, WEIGHTS_ALGORITHM)
    digest = store.digest(path)[:16]
    with contextlib.suppress(OSError):
        store.save()
    return digest


def max_bytes_from_environment() -> int:
    """The folder's bound: `$DOMAINFM_EMBEDDINGS_MAX_GB` gigabytes (default 5); InputError naming the variable when it is no size."""
    text = os.environ.get(MAX_GB_VARIABLE, "").strip()
    try:
        gigabytes = float(text) if text else DEFAULT_MAX_GB
    except ValueError:
        gigabytes = -1.0
    if not gigabytes > 0:  # also NaN
        raise InputError(f"${MAX_GB_VARIABLE}={text!r}: give the embedding cache's largest size in gigabytes, e.g. 5")
    return int(gigabytes * 1e9)


class EmbeddingCache:
    """An .npz per key under `folder`: `embeddings` and a JSON list of window records; beside it, pictures (.npy) a command keeps."""

    def __init__(self, folder: Path | None = None, max_bytes: int | None = None) -> None:
        """The cache in `folder`, its entries kept within `max_bytes`.

        `folder` defaults to `cache_root()/embeddings` ($DOMAINFM_CACHE, else ~/.cache/domainfm), with the
        other caches; `max_bytes` to `max_bytes_from_environment()`.
        """
        self.folder = Path(folder) if folder is not None else cache_root() / "embeddings"
        self.max_bytes = max_bytes if max_bytes is not None else max_bytes_from_environment()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprints = Fingerprints(self.folder / "fingerprints.json")

    def key(self, model_fingerprint: str, inputs: Sequence[str | Path], settings: dict[str, Any]) -> str:
        """A key from the model's weights, the inputs' content and the settings that shape the windows."""
        digests = [self.fingerprints.digest(p) for p in inputs]
        self.fingerprints.save()
        blob = json.dumps({"model": model_fingerprint, "inputs": digests, "settings": settings}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def knows(self, inputs: Sequence[str | Path]) -> bool:
        """Whether `key` will find the inputs' digests remembered (no input read): each was hashed before, unchanged since."""
        return all(self.fingerprints.remembers(p) for p in inputs)

    def load(self, key: str) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
        """(embeddings, window records) stored under `key`, or None."""
        path = self.folder / f"{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                found = data["embeddings"], json.loads(str(data["windows"]))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # none, or damaged: computed again
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last entry the bound deletes
        return found

    def save_picture(self, key: str, name: str, pixels: np.ndarray) -> None:
        """Store a picture of the input made while it was embedded (a map's view of the scene), as `name` under `key`."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
        atomic_write_bytes(self.folder / f"{key}.{name}.npy", buf.getvalue(), durable=False)
        self._written(key, buf.getbuffer().nbytes)

    def load_picture(self, key: str, name: str) -> np.ndarray | None:
        """The picture stored as `name` under `key`; None when there is none or it cannot be read (then make it again)."""
        path = self.folder / f"{key}.{name}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def save(self, key: str, embeddings: np.ndarray, windows: list[dict[str, Any]]) -> None:
        """Store embeddings with their window records (atomically)."""
        buf = io.BytesIO()
        np.savez(buf, embeddings=np.asarray(embeddings, np.float32), windows=np.asarray(json.dumps(windows)))
        atomic_write_bytes(self.folder / f"{key}.npz", buf.getvalue(), durable=False)
        self._written(key, buf.getbuffer().nbytes)

    def _written(self, key: str, size: int) -> None:
        """Count `size` bytes written under `key`; past `max_bytes`, count the folder again and `bound` it.

        The count is an estimate (writes of other processes between a read and a write of it may be
        lost; files deleted by hand stay counted): a count past the bound, or none, is corrected by the scan.
        """
        path = self.folder / USAGE_FILE
        try:
            counted = int(json.loads(path.read_text())["bytes"])
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: count the folder
            counted = None
        total = counted + size if counted is not None else None
        if total is None or total > self.max_bytes:
            total = self.bound(keep=key, target=int(self.max_bytes * BOUND_TARGET))
        with contextlib.suppress(OSError):  # a cache that cannot keep its count counts the folder on each write
            atomic_write_bytes(path, json.dumps({"bytes": total}).encode(), durable=False)

    def bound(self, keep: str, target: int) -> int:
        """Delete the least recently used entries (by their embeddings' mtime) until the entries fit `target` bytes; never `keep`'s.

        Pictures whose embeddings are gone go first. Files another process deletes meanwhile are
        skipped. Returns the bytes of the entries left.
        """
        sizes: dict[str, int] = {}
        used: dict[str, float] = {}
        files: dict[str, list[Path]] = {}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.endswith((".npz", ".npy")) or not entry.is_file():
                    continue  # the fingerprints store, writes under way
                key = name.split(".", 1)[0]
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                sizes[key] = sizes.get(key, 0) + stat.st_size
                files.setdefault(key, []).append(Path(entry.path))
                if name.endswith(".npz"):
                    used[key] = stat.st_mtime
        total = sum(sizes.values())
        for key in sorted((k for k in sizes if k != keep), key=lambda k: used.get(k, float("-inf"))):
            if total <= target:
                break
            for path in files[key]:
                with contextlib.suppress(OSError):
                    path.unlink()
            total -= sizes[key]
        return total
