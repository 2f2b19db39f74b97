"""Text and tables as users have them.

Files come in UTF-8 with or without a BOM, UTF-16, legacy Latin-1, with commas, semicolons or
tabs. Every domain reads its CSVs and transcripts through here, so a file in an
unexpected encoding is decoded right (with a recorded warning) instead of filling captions with
U+FFFD, and a table with missing columns is refused with the file, the missing and the found names.
"""
from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from pipelines.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
DELIMITERS = ",;\t|"


@dataclass
class Decoded:
    """A decoded text file: the text, the encoding used, and warnings worth a rejects or log line."""

    text: str
    encoding: str
    warnings: list[str] = field(default_factory=list)


def decode_bytes(data: bytes, source: str) -> Decoded:
    """Decode bytes: a BOM decides; else UTF-8; else Windows-1252/Latin-1 with a warning.

    Raises InputError for binary data (NUL bytes in what should be text).
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return Decoded(data.decode(encoding), encoding)
    if b"\x00" in data[:4096]:
        raise InputError(f"{source}: not a text file (NUL bytes; UTF-16 without a BOM is not supported)")
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start}"
    try:  # cp1252 is Latin-1 plus the curly quotes and dashes Windows editors write in 0x80-0x9f
        text, encoding = data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "latin-1"
    return Decoded(text, encoding, [f"{source}: not UTF-8 (first bad {where}); read as {encoding}"])


def read_text(path: Path | str) -> Decoded:
    """A text file decoded as `decode_bytes` does; InputError naming the file when it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(data, str(path))


def sniff_delimiter(text: str, suffix: str = "") -> str:
    """The delimiter of a table: tabs for .tsv/.tab, else the one csv.Sniffer finds in the header lines."""
    if suffix.lower() in (".tsv", ".tab"):
        return "\t"
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def read_table(path: Path | str, required: Iterable[str], what: str) -> tuple[pd.DataFrame, list[str]]:
    """A delimited table as strings (empty cells are ""), with the warnings of decoding it.

    Column names are stripped of whitespace and a BOM. Raises InputError naming the file when it is
    missing, unreadable, or lacks any `required` column (listing the columns it has).
    """
    import pandas as pd  # here, not at the top: the analyst commands read text through this module, and no tables (0.25 s)

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} table not found: {path}")
    decoded = read_text(path)
    delimiter = sniff_delimiter(decoded.text, path.suffix)
    try:
        table = pd.read_csv(io.StringIO(decoded.text), sep=delimiter, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{what} table {path} cannot be parsed: {' '.join(str(exc).split())}") from None
    table.columns = [str(c).strip().lstrip("\ufeff") for c in table.columns]
    required = list(required)
    missing = [c for c in required if c not in table.columns]
    if missing:
        found = ", ".join(table.columns) or "none"
        hint = f" (read with delimiter {delimiter!r})" if len(table.columns) == 1 else ""
        raise InputError(f"{what} table {path} lacks column(s) {', '.join(missing)}; required: {', '.join(required)}; "
                         f"found: {found}{hint}")
    return table, decoded.warnings
