"""Embeddings kept on disk per (model, input content, tiling), so the next query over the same input is instant."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipelines.io.atomic import atomic_write_bytes
from pipelines.io.digests import Fingerprints
from pipelines.io.remote import cache_root


class EmbeddingCache:
    """An .npz per key under `folder`: `embeddings` and a JSON list of window records; beside it, pictures (.npy) a command keeps."""

    def __init__(self, folder: Path | None = None) -> None:
        """`folder` defaults to `cache_root()/embeddings` ($DOMAINFM_CACHE, else ~/.cache/domainfm), with the other caches."""
        self.folder = Path(folder) if folder is not None else cache_root() / "embeddings"
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
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return data["embeddings"], json.loads(str(data["windows"]))

    def save_picture(self, key: str, name: str, pixels: np.ndarray) -> None:
        """Store a picture of the input made while it was embedded (a map's view of the scene), as `name` under `key`."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
        atomic_write_bytes(self.folder / f"{key}.{name}.npy", buf.getvalue())

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
        atomic_write_bytes(self.folder / f"{key}.npz", buf.getvalue())
