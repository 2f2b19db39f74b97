"""What a work unit's cached result depends on: its inputs' content and the code that processed it.

A unit's cache name hashes its key (which carries the parameters that affect it), the content of
every input file and the version of the curation code. So a transcript fixed in place, a video
replaced under the same name, a changed parameter or an edited reader each invalidate exactly the
units they touch, and a rerun never reuses a stale result.

Hashing a large raster or slide on every rerun would be slow, so content digests are remembered per
file with its (size, mtime, inode) and recomputed only when one of those changes
(`pipelines.io.digests.Fingerprints`, which the analysts' embedding caches use too).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from pipelines.io.digests import Fingerprints, file_digest

CODE_SUFFIXES = (".py", ".csv", ".txt", ".json", ".yaml")  # code and the tables it reads (tag lists, vocabularies)


def code_version(folders: Iterable[Path]) -> str:
    """A digest of every code and table file under `folders` (relative names and content)."""
    h = hashlib.sha256()
    for folder in sorted({Path(f).resolve() for f in folders}):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(folder.parent)).encode())
            h.update(file_digest(path).encode())
    return h.hexdigest()[:16]


def unit_cache_name(key: str, inputs: Iterable[str], fingerprints: Fingerprints, code: str) -> str:
    """The name a unit's staged result is cached under."""
    parts = [key, code, *sorted(fingerprints.digest(p) for p in inputs)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
