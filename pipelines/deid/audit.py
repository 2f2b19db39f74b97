"""Search everything a run wrote for identifiers: every file of an output folder, inside tar shards and parquet too.

`output_texts(folder)` yields (where, text) for each file: tar shards member by member, parquet tables
as their rows' text, other files decoded as UTF-8 (Latin-1 when not). `find_leaks(folder, needles,
extra)` returns where each needle occurs, compared case-insensitively, also in `extra` texts (a run's
captured stdout, stderr and log). `dicom_files(folder)` lists DICOM objects anywhere in it.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from pipelines.deid.dicom import is_dicom


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _parquet_text(data: bytes) -> str:
    import pandas as pd

    table = pd.read_parquet(io.BytesIO(data))
    return table.to_csv(index=False) + "\n" + " ".join(map(str, table.columns))


def output_texts(folder: Path) -> Iterator[tuple[str, str, bytes]]:
    """(where, text, raw bytes) of every file under `folder`, tar members one by one."""
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        where = str(path.relative_to(folder))
        data = path.read_bytes()
        yield where, where + "\n" + _decode(data), data
        if path.suffix == ".parquet":
            yield f"{where} (rows)", _parquet_text(data), b""
        if path.suffix == ".tar" or tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                for member in tar:
                    handle = tar.extractfile(member)
                    payload = handle.read() if handle is not None else b""
                    yield f"{where}:{member.name}", member.name + "\n" + _decode(payload), payload


def find_leaks(folder: Path, needles: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """{needle: [where it occurs]} for each needle found (case-insensitively) in the output folder or `extra` texts."""
    lowered = [(n, n.lower()) for n in needles if n]
    leaks: dict[str, list[str]] = {}
    sources = list(output_texts(folder)) + [(name, text, b"") for name, text in (extra or {}).items()]
    for where, text, _ in sources:
        low = text.lower()
        for needle, needle_low in lowered:
            if needle_low in low:
                leaks.setdefault(needle, []).append(where)
    return leaks


def dicom_files(folder: Path) -> list[str]:
    """Files (or tar members) under `folder` that are DICOM objects."""
    return [where for where, _, data in output_texts(folder) if data and is_dicom(data)]
