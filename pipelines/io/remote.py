"""Inputs by URL: rasters read in place through GDAL's virtual file systems, other files fetched once into a cache.

A location is a local path (the special case) or a URL that fsspec understands: `https://`,
`http://`, and `s3://`, `gs://`, `az://` ... when that protocol's fsspec package (s3fs, gcsfs, adlfs)
is installed. Two ways of reading one, chosen by what the reading library can do:

- Rasters are opened by rasterio from the URL itself (GDAL's `/vsicurl/`, `/vsis3/`, ...): a
  windowed read fetches only the byte ranges a tile needs, so a cloud-optimised GeoTIFF is never
  downloaded whole. `gdal_url_defaults` sets GDAL's options for that (no directory listing on open,
  retries).
- Readers that need a local file (nibabel and pydicom for CT volumes, pyosmium, the CSV tables) get
  one from `fetch` or `fetch_folder`: each file is copied into the cache (`$DOMAINFM_CACHE`, else
  `$XDG_CACHE_HOME/domainfm`, else `~/.cache/domainfm`) under its URL's digest, and copied again only
  when the server's identity of it changes.

A remote file's identity (what reruns compare, `remote_identity`) is its size with the validator
the server gives, ETag or Last-Modified (object stores give both). A server that gives neither gets
its content hashed: slower, never stale.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.errors import InputError

# GDAL options for reading rasters by URL: without the first, opening a file lists its folder (one
# more request, and a slow one on object stores with many keys).
GDAL_URL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1"}
_VALIDATORS = ("ETag", "etag", "Last-Modified", "LastModified", "last_modified", "mtime", "md5Hash", "generation")
_CHUNK = 1 << 20


def is_url(location: str | Path) -> bool:
    """True for a location with a protocol other than the local file system (`https://`, `s3://`, ...)."""
    if isinstance(location, Path):
        return False
    from fsspec.core import split_protocol

    protocol, _ = split_protocol(str(location))
    return protocol not in (None, "file", "local")


def as_location(text: str | Path) -> str | Path:
    """A URL as given (a `Path` would collapse its `//`), anything else as a `Path`."""
    return str(text) if is_url(text) else Path(text)


def _filesystem(url: str) -> Any:
    import fsspec
    from fsspec.core import split_protocol

    protocol, _ = split_protocol(url)
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{url}: cannot read {protocol}:// locations here ({exc})") from None


def remote_info(url: str) -> dict[str, Any]:
    """The description fsspec gives of a remote file (size, validators); InputError when it is absent or unreachable."""
    fs = _filesystem(url)
    try:
        info = fs.info(url)
    except FileNotFoundError:
        raise InputError(f"{url}: not found (or the server cannot be reached)") from None
    except OSError as exc:
        raise InputError(f"{url}: cannot be reached ({exc})") from None
    if info.get("type") == "directory":
        raise InputError(f"{url}: is a folder, not a file")
    return info


def remote_identity(url: str) -> str:
    """What identifies a remote file's current content: size and the server's validator, or a content hash."""
    info = remote_info(url)
    validators = {k: str(info[k]) for k in _VALIDATORS if info.get(k) not in (None, "")}
    if validators:
        return json.dumps({"size": info.get("size"), **validators}, sort_keys=True)
    h = hashlib.sha256()
    with _filesystem(url).open(url, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return json.dumps({"size": info.get("size"), "sha256": h.hexdigest()}, sort_keys=True)


def gdal_url_defaults() -> None:
    """Set GDAL's options for URL rasters in this process and the workers it starts (the user's own settings win)."""
    for key, value in GDAL_URL_OPTIONS.items():
        os.environ.setdefault(key, value)


def cache_root() -> Path:
    """Where fetched files are kept: `$DOMAINFM_CACHE`, else `$XDG_CACHE_HOME/domainfm`, else `~/.cache/domainfm`."""
    if os.environ.get("DOMAINFM_CACHE"):
        return Path(os.environ["DOMAINFM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "domainfm"


def _url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _download(url: str, dest: Path, identity: str) -> None:
    """Copy `url` to `dest` through a temporary file and record its identity beside it; never a partial `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, _filesystem(url).open(url, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _identity_file(dest).write_text(identity)


def _identity_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.identity")


def _fresh(url: str, dest: Path, identity: str) -> Path:
    marker = _identity_file(dest)
    if not (dest.is_file() and marker.is_file() and marker.read_text() == identity):
        try:
            _download(url, dest, identity)
        except OSError as exc:
            raise InputError(f"{url}: download failed ({exc})") from None
    return dest


def fetch(url: str, cache: Path | None = None) -> Path:
    """A local copy of a remote file, refreshed when its identity changed; a local path is returned as it is."""
    if not is_url(url):
        return Path(url)
    name = Path(url.rstrip("/").split("?")[0]).name or "file"
    dest = (cache or cache_root()) / "files" / _url_digest(url) / name
    return _fresh(url, dest, remote_identity(url))


def fetch_folder(url: str, cache: Path | None = None) -> Path:
    """A local mirror of a remote folder (every file below it, names kept), refreshed file by file.

    Files gone from the remote folder are removed from the mirror, so a rerun sees what the remote
    holds now. Folders are listed by fsspec (object-store prefixes; for HTTP, the links of the
    server's index pages).
    """
    if not is_url(url):
        return Path(url)
    fs = _filesystem(url)
    base = url.rstrip("/") + "/"
    try:
        listing = fs.find(base, detail=True)
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"{url}: folder cannot be listed ({exc})") from None
    files = {}
    for name, info in listing.items():
        full = name if is_url(name) else fs.unstrip_protocol(name)
        rel = full[len(base):] if full.startswith(base) else None
        if rel and info.get("type", "file") == "file" and ".." not in Path(rel).parts:
            files[rel] = full
    if not files:
        raise InputError(f"{url}: no files found in the folder")
    root = (cache or cache_root()) / "folders" / _url_digest(base)
    for rel, full in sorted(files.items()):
        _fresh(full, root / rel, remote_identity(full))
    for path in sorted(root.rglob("*"), reverse=True):  # deepest first, so emptied folders go too
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.name.startswith(".") and rel not in files:
            path.unlink()
            _identity_file(path).unlink(missing_ok=True)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return root
