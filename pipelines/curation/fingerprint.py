"""What a work unit's cached result depends on: its inputs' content and the code that processed it.

A unit's cache name hashes its key (which carries the parameters that affect it), the content of
every input file and the version of the curation code. So a transcript fixed in place, a video
replaced under the same name, a changed parameter or an edited reader each invalidate exactly the
units they touch, and a rerun never reuses a stale result.

Hashing a large raster or slide on every rerun would be slow, so content digests are remembered per
file with its (size, mtime, inode) and recomputed only when one of those changes. A remote input
(a URL: pipelines/io/remote.py) is identified by its size and the server's validator (ETag or
Last-Modified), asked once per run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from pipelines.errors import InputError
from pipelines.io.atomic import atomic_write_json
from pipelines.io.remote import is_url, remote_identity

_CHUNK = 1 << 20
CODE_SUFFIXES = (".py", ".csv", ".txt", ".json", ".yaml")  # code and the tables it reads (tag lists, vocabularies)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def code_version(folders: Iterable[Path]) -> str:
    """A digest of every code and table file under `folders` (relative names and content)."""
    h = hashlib.sha256()
    for folder in sorted({Path(f).resolve() for f in folders}):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(folder.parent)).encode())
            h.update(file_digest(path).encode())
    return h.hexdigest()[:16]


class Fingerprints:
    """Content digests of input files, remembered across runs in `store` (a JSON file)."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.known: dict[str, list] = json.loads(self.store.read_text()) if self.store.is_file() else {}
        self.changed = False
        self.remote: dict[str, str] = {}

    def digest(self, path: str | Path) -> str:
        """sha256 of a file's content, or of a folder's files (names and content); "missing" if absent.

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
            h = hashlib.sha256()
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(child.relative_to(path)).encode())
                h.update(self.digest(child).encode())
            return h.hexdigest()
        try:
            stat = path.stat()
        except FileNotFoundError:
            return "missing"
        key = str(path.resolve())
        identity = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        cached = self.known.get(key)
        if cached is not None and cached[:3] == identity:
            return cached[3]
        digest = file_digest(path)
        self.known[key] = [*identity, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        """Write the remembered digests back (atomically)."""
        if self.changed:
            atomic_write_json(self.store, self.known)
            self.changed = False


def unit_cache_name(key: str, inputs: Iterable[str], fingerprints: Fingerprints, code: str) -> str:
    """The name a unit's staged result is cached under."""
    parts = [key, code, *sorted(fingerprints.digest(p) for p in inputs)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
