"""Content digests of files, remembered across runs by each file's (size, mtime, inode).

Hashing a large raster, slide or model weights file on every run would be slow, so a digest is
stored with the file's size, mtime and inode and computed again only when one of those changes (the
check DVC's state database makes). The store names a file by a digest of its absolute path, never
by the path: a slide's or volume's file name can hold a patient's name or number. A remote input (a
URL: pipelines/io/remote.py) is identified by its size and the server's validator (ETag or
Last-Modified), asked once per run.

Inputs are hashed with BLAKE3 (the `blake3` package, the reference implementation's Rust crate):
a cryptographic hash, so a crafted file cannot take another's cache entry, at 2.6 times sha256's
speed on one core here (4.0 against 1.5 GB/s on a 300 MB file): a first map of a 1 GB slide, or a
first curation of terabytes, waits on the hash. Model weights keep sha256 (`WEIGHTS_ALGORITHM`): their
fingerprint is what `sha256sum` prints, and the embedding caches made before stay valid.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pipelines.errors import InputError
from pipelines.io.atomic import atomic_write_text
from pipelines.io.remote import is_url, remote_identity

_CHUNK = 1 << 20
Algorithm = Literal["blake3", "sha256"]
# Model weights' and tokenizers' digests: the fingerprint `sha256sum` prints, stable across versions (the embedding
# caches' keys and the prompt files of exports made before BLAKE3 hashed inputs start from it)
WEIGHTS_ALGORITHM: Algorithm = "sha256"


def _hasher(algorithm: Algorithm) -> Any:
    """A new hash object of `algorithm` (update, hexdigest), on one thread: it runs beside other work."""
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    return hashlib.sha256()


def file_digest(path: Path, algorithm: Algorithm = "blake3") -> str:
    """The hex digest (64 digits) of a file's bytes."""
    h = _hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_digest(text: str) -> bool:
    return len(text) == 64 and not text.strip("0123456789abcdef")  # strip: in C, for a million keys at each load


class Fingerprints:
    """Content digests of input files (`algorithm`), remembered across runs in `store` (a JSON file).

    A record is [size, mtime_ns, inode, algorithm, digest]; a record of another algorithm (or of the
    stores before 2026-12-06: [size, mtime_ns, inode, sha256 digest]) is computed again and replaced.
    """

    def __init__(self, store: Path, algorithm: Algorithm = "blake3") -> None:
        self.store, self.algorithm = Path(store), algorithm
        try:
            self.known: dict[str, list] = json.loads(self.store.read_text())
        except (OSError, ValueError):  # none yet, unreadable or damaged: digests are computed again, not trusted
            self.known = {}
        if not isinstance(self.known, dict):
            self.known = {}
        if any(not _is_digest(k) for k in self.known):  # a store keyed by paths (before 2026-12): forgotten, not kept
            self.known, self.changed = {}, True
        else:
            self.changed = False
        self.remote: dict[str, str] = {}

    def digest(self, path: str | Path) -> str:
        """The digest of a file's content, or of a folder's files (names and content); "missing" if absent.

        A URL's digest is that of its remote identity (size and validator), asked once per run.
        """
        if is_url(path):
            url = str(path)
            if url not in self.remote:
                try:
                    self.remote[url] = hashlib.sha256(remote_identity(url).encode()).hexdigest()
                except InputError:
                    self.remote[url] = "missing"
            return self.remote[url]
        path = Path(path)
        if path.is_dir():
            h = _hasher(self.algorithm)
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(child.relative_to(path)).encode())
                h.update(self.digest(child).encode())
            return h.hexdigest()
        try:
            key, identity, remembered = self._lookup(path)
        except FileNotFoundError:
            return "missing"
        if remembered is not None:
            return remembered
        digest = file_digest(path, self.algorithm)
        self.known[key] = [*identity, self.algorithm, digest]
        self.changed = True
        return digest

    def remembers(self, path: str | Path) -> bool:
        """Whether `digest(path)` is known without reading the file: a local file unchanged since it was hashed."""
        if is_url(path):
            return str(path) in self.remote
        try:
            return self._lookup(Path(path))[2] is not None
        except OSError:
            return False

    def _lookup(self, path: Path) -> tuple[str, list[int], str | None]:
        """(store key, (size, mtime, inode), remembered digest or None) of a local file.

        The key is a digest of the absolute path (file names can hold patient identifiers); the digest
        is remembered when the file's identity is the one stored with it.
        """
        stat = path.stat()
        key, identity = hashlib.sha256(str(path.resolve()).encode()).hexdigest(), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        cached = self.known.get(key)
        if isinstance(cached, list) and len(cached) == 4:  # a record of the stores before 2026-12-06: sha256
            cached = [*cached[:3], "sha256", cached[3]]
        remembered = isinstance(cached, list) and len(cached) == 5 and cached[:4] == [*identity, self.algorithm]
        return key, identity, str(cached[4]) if remembered else None

    def save(self) -> None:
        """Write the remembered digests back (atomically), as compact JSON.

        Compact and in the order remembered, not indented and sorted: a curation's store can hold a
        million files (a DICOM slice each), whose indented, sorted JSON took 4x as long to write.
        """
        if self.changed:
            atomic_write_text(self.store, json.dumps(self.known, separators=(",", ":")))
            self.changed = False
