"""Keyed pseudonyms: HMAC-SHA256 of an identifier under a secret key, and the link table.

The key comes from `--key-file PATH` (the file's text, surrounding whitespace dropped) or, without
one, the environment variable DOMAINFM_PSEUDONYM_KEY. There is no default: a public default would let
anyone recompute the pseudonym of every record number by brute force (an MRN has ~10^8 values), so
`load_key` raises `MissingKeyError` (an InputError: the CLI prints `Error: ...`) when neither is set.
A key shorter than MIN_KEY_CHARS characters is refused as guessable.

A pseudonym is `<prefix><16 hex digits>` (64 bits of HMAC-SHA256 over `kind`, a unit separator and the
identifier with surrounding whitespace dropped): "pt-" for patients, "st-" for studies, "sl-" for
slides. Kinds are hashed in, so a patient and a study that share a number get unrelated pseudonyms.

The link table (pseudonym -> original identifier) is what re-identifies the data: it is written only
where the user asks (`--link-table PATH`), never inside the curated output folder.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pipelines.errors import InputError

KEY_ENV = "DOMAINFM_PSEUDONYM_KEY"
MIN_KEY_CHARS = 16
PREFIXES = {"patient": "pt-", "study": "st-", "slide": "sl-", "file": "f-"}
DIGEST_CHARS = 16


class MissingKeyError(InputError):
    """No pseudonym key was given (or it is unusable)."""


@dataclass(frozen=True)
class PseudonymKey:
    """A secret pseudonym key and where it came from (`source` names the file or variable, never the key)."""

    secret: bytes = field(repr=False)
    source: str

    def pseudonym(self, kind: str, identifier: str) -> str:
        """The keyed pseudonym of `identifier` as a `kind` ("patient", "study", "slide", "file")."""
        if kind not in PREFIXES:
            raise ValueError(f"unknown identifier kind {kind!r}; one of {', '.join(PREFIXES)}")
        message = f"{kind}\x1f{str(identifier).strip()}".encode()
        return PREFIXES[kind] + hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:DIGEST_CHARS]


def key_from_text(text: str, source: str) -> PseudonymKey:
    """A key from its text; MissingKeyError when it is shorter than MIN_KEY_CHARS characters."""
    secret = text.strip()
    if len(secret) < MIN_KEY_CHARS:
        raise MissingKeyError(f"the pseudonym key from {source} has {len(secret)} characters; use at least {MIN_KEY_CHARS} "
                              "random characters (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return PseudonymKey(secret.encode("utf-8"), source)


def load_key(key_file: Optional[Path] = None, required: bool = True) -> Optional[PseudonymKey]:
    """The key from `key_file`, else from $DOMAINFM_PSEUDONYM_KEY; MissingKeyError if neither (None when not `required`)."""
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise MissingKeyError(f"pseudonym key file not found: {path}")
        return key_from_text(path.read_text(encoding="utf-8", errors="strict"), f"key file {path}")
    value = os.environ.get(KEY_ENV, "")
    if value.strip():
        return key_from_text(value, f"${KEY_ENV}")
    if not required:
        return None
    raise MissingKeyError(
        f"no pseudonym key: set {KEY_ENV} or pass --key-file PATH (a file holding at least {MIN_KEY_CHARS} random "
        "characters, kept out of the data and out of version control). Patient and study ids become keyed "
        "pseudonyms (HMAC-SHA256); without a secret key they could be recovered by brute force."
    )


def check_link_table_path(path: Path, out: Path) -> Path:
    """`path` made absolute; InputError when it lies inside the output folder `out` (the table re-identifies the data)."""
    target = Path(os.path.abspath(path))
    folder = Path(os.path.abspath(out))
    if target == folder or folder in target.parents:
        raise InputError(f"--link-table {path} lies inside the output folder {out}: the link table re-identifies the data; "
                         "write it somewhere only authorised people can read")
    if target.is_dir():
        raise InputError(f"--link-table {path} is a folder; give a file name")
    return target


def write_link_table(path: Path, links: Iterable[tuple[str, str, str]]) -> int:
    """Write (kind, pseudonym, original) rows as CSV at `path` (readable by its owner only); the row count."""
    rows = sorted(set(links))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["kind", "pseudonym", "original"])
    writer.writerows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)
    return len(rows)
