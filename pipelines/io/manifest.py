"""The curated folder's tables: `manifest.parquet` (one row per pair) and `rejects.csv`.

Manifest columns: id, split, shard, key, caption, caption_variants (JSON), source, group,
provenance (JSON), quality_score, footprint (GeoJSON geometry in lon/lat for imagery, else null).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.io.atomic import atomic_write_bytes, atomic_write_text, json_default

if TYPE_CHECKING:  # imported where a table is made or read: the analyst commands import the curation, not its tables (0.25 s)
    import pandas as pd

MANIFEST_FILE = "manifest.parquet"
REJECTS_FILE = "rejects.csv"
MANIFEST_COLUMNS = ("id", "split", "shard", "key", "caption", "caption_variants", "source", "group", "provenance", "quality_score",
                    "footprint")
REJECT_COLUMNS = ("input", "stage", "reason")


def write_manifest(rows: list[dict[str, Any]], out: Path) -> None:
    """Write OUT/manifest.parquet from pair records (JSON columns encoded as sorted JSON text)."""
    import pandas as pd

    table = pd.DataFrame(
        [
            {
                "id": r["id"],
                "split": r["split"],
                "shard": r.get("shard"),
                "key": r["key"],
                "caption": r["caption"],
                "caption_variants": json.dumps(r["caption_variants"], sort_keys=True),
                "source": r["source"],
                "group": r["group"],
                "provenance": json.dumps(r["provenance"], sort_keys=True, default=json_default),
                "quality_score": r.get("quality_score", np.nan),
                "footprint": json.dumps(r["footprint"], sort_keys=True) if r.get("footprint") else None,
            }
            for r in rows
        ],
        columns=list(MANIFEST_COLUMNS),
    )
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write_bytes(Path(out) / MANIFEST_FILE, buf.getvalue())


def read_manifest(out: Path) -> pd.DataFrame:
    """The manifest with its JSON columns decoded."""
    import pandas as pd

    table = pd.read_parquet(Path(out) / MANIFEST_FILE)
    table["caption_variants"] = table["caption_variants"].map(json.loads)
    table["provenance"] = table["provenance"].map(json.loads)
    if "footprint" in table:  # GeoJSON geometry in lon/lat, for pairs that cover ground
        table["footprint"] = table["footprint"].map(lambda v: json.loads(v) if isinstance(v, str) else None)
    return table


def write_rejects(rejects: list[dict[str, Any]], out: Path) -> None:
    """Write OUT/rejects.csv: input, stage, reason."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(REJECT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rejects)
    atomic_write_text(Path(out) / REJECTS_FILE, buf.getvalue())
