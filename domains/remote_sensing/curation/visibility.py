"""Which OSM tags can be seen from above, at which resolution, and how to say them in a caption.

The table `visible_tags.csv` (key, value, max_gsd_m, phrase) follows SkyScript: a tag is kept
for a tile only when the tile's ground sampling distance (metres per pixel) is at most the
tag's `max_gsd_m`. `value` "*" matches any value of the key; an exact value row wins over it.
Row order is priority: when an object has several visible tags, the first row names it.
An empty phrase falls back to "<key> of <value>" (underscores read as spaces).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

TABLE_PATH = Path(__file__).with_name("visible_tags.csv")


@dataclass(frozen=True)
class VisibleTag:
    """One row of the visibility table."""

    key: str
    value: str  # "*" = any value
    max_gsd_m: float  # coarsest metres/pixel at which the tag is still recognisable
    phrase: str = ""


@dataclass(frozen=True)
class TagMatch:
    """One tag of an object, matched against the table."""

    key: str
    value: str
    max_gsd_m: float
    phrase: str
    priority: int  # table row index: lower names the object first


def default_phrase(key: str, value: str) -> str:
    """'<key> of <value>' with underscores read as spaces, for rows without a phrase."""
    return f"{key} of {value}".replace("_", " ")


class TagTable:
    """The visibility table, with lookups by (key, value)."""

    def __init__(self, rows: Iterable[VisibleTag]):
        self.rows: list[VisibleTag] = []
        self._index: dict[tuple[str, str], int] = {}
        for row in rows:
            slot = self._index.get((row.key, row.value))
            if slot is None:  # a later row for the same key=value replaces the earlier one in place
                self._index[(row.key, row.value)] = len(self.rows)
                self.rows.append(row)
            else:
                self.rows[slot] = row

    def match(self, key: str, value: str) -> TagMatch | None:
        """The row for key=value, else the key's "*" row; None when the tag is not in the table."""
        slot = self._index.get((key, value))
        if slot is None:
            slot = self._index.get((key, "*"))
        if slot is None:
            return None
        row = self.rows[slot]
        phrase = row.phrase.strip() or default_phrase(key, value)
        return TagMatch(key, value, row.max_gsd_m, phrase, slot)

    def matches(self, tags: Mapping[str, str]) -> list[TagMatch]:
        """The object's tags that appear in the table, in priority order."""
        found = [m for k, v in tags.items() if (m := self.match(k, v)) is not None]
        return sorted(found, key=lambda m: (m.priority, m.key, m.value))

    def visible(self, tags: Mapping[str, str], gsd_m: float) -> list[TagMatch]:
        """Tags recognisable at `gsd_m` metres per pixel, in priority order."""
        return [m for m in self.matches(tags) if gsd_m <= m.max_gsd_m + 1e-9]

    def has_visible(self, tags: Mapping[str, str]) -> bool:
        """Whether any tag is in the table (visible at some GSD)."""
        return any(self.match(k, v) is not None for k, v in tags.items())

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (picklable, and what table_from_dicts reads back)."""
        return [dict(key=r.key, value=r.value, max_gsd_m=r.max_gsd_m, phrase=r.phrase) for r in self.rows]


def _row(raw: Mapping[str, Any], where: str) -> VisibleTag:
    missing = [k for k in ("key", "value", "max_gsd_m") if raw.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{where}: visible tag row needs {', '.join(missing)}: {dict(raw)}")
    gsd = float(raw["max_gsd_m"])
    if gsd <= 0:
        raise ValueError(f"{where}: max_gsd_m must be positive: {dict(raw)}")
    return VisibleTag(str(raw["key"]).strip(), str(raw["value"]).strip(), gsd, str(raw.get("phrase") or "").strip())


def read_table_csv(path: Path) -> list[VisibleTag]:
    """The rows of a visibility CSV (key, value, max_gsd_m, phrase), validated."""
    with Path(path).open(newline="") as f:
        return [_row(raw, f"{path}:{i + 2}") for i, raw in enumerate(csv.DictReader(f))]


def load_tag_table(extra: Sequence[Mapping[str, Any]] = (), path: Path = TABLE_PATH) -> TagTable:
    """The shipped table plus `extra_visible_tags` rows from params (which override same key=value)."""
    rows = read_table_csv(path) + [_row(r, "extra_visible_tags") for r in extra]
    return TagTable(rows)


def table_from_dicts(rows: Sequence[Mapping[str, Any]]) -> TagTable:
    """Rebuild a table from `TagTable.as_dicts()` (how it travels to worker processes)."""
    return TagTable(_row(r, "table") for r in rows)


def join_phrases(phrases: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def dedupe(phrases: Iterable[str]) -> list[str]:
    """Non-empty phrases, first occurrence of each, in order."""
    return list(dict.fromkeys(p for p in phrases if p))


def captions(title: str, others: Sequence[str], max_others: int) -> dict[str, str]:
    """SkyScript's caption variants: the focus object's title, and title plus its neighbours."""
    rest = [p for p in dedupe(others) if p != title][:max_others]
    multi = f"{title}, surrounded by {join_phrases(rest)}" if rest else title
    return {"title": title, "title_multi_objects": multi}
