"""Reading curated volume shards: the ONE place that knows the volume-pair format (read defensively).

Contract (written by volume domains' curation, e.g. domains/ct/curation): DATA/shards/{split}-NNNNNN.tar with per sample `npy` (float32
volume (1, X, Y, Z), RAS, in [0, 1]), `txt` (report), `json` (with "provenance": phenotypes,
findings, impression, organ_sections, study_id; and "caption_variants"); DATA/phenotypes.json.
Tolerated variations: volumes without the channel axis, phenotypes given as names or dicts,
missing sections (the report text stands in), study_id at the top level of the json.

Shards are indexed once (member offsets from the tar headers) and samples read on demand by
seeking, so the dataset is map-style (any order, any rank split) without holding volumes in memory.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipelines.io.shards import member_key_ext, shard_paths

VOLUME_EXTS = ("npy",)


@dataclass
class VolumeSample:
    """One curated CT sample: the volume, its report and report parts, and its positive phenotypes."""

    key: str
    volume: np.ndarray                  # float32 (1, X, Y, Z)
    report: str                         # the `txt` member
    findings: str
    impression: str
    organ_sections: dict[str, str]
    phenotypes: list[str]               # positive phenotype ids
    study_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    def text_choices(self) -> list[str]:
        """Report-splitting augmentation: the full findings, then each organ section."""
        full = self.findings or self.report
        return [full] + [t for _, t in sorted(self.organ_sections.items()) if t and t != full]


def read_phenotypes(data: Path) -> list[str]:
    """The ordered phenotype label space (DATA/phenotypes.json: ids, or dicts with "id"/"name")."""
    path = Path(data) / "phenotypes.json"
    if not path.is_file():
        return []
    raw = json.loads(path.read_text())
    if isinstance(raw, dict):  # {"phenotypes": [...]} or {id: count}
        raw = raw.get("phenotypes", list(raw))
    out = []
    for item in raw:
        out.append(str(item.get("id", item.get("name"))) if isinstance(item, dict) else str(item))
    return out


def _decode_sample(key: str, members: dict[str, bytes]) -> VolumeSample:
    volume = np.load(io.BytesIO(members["npy"]), allow_pickle=False).astype(np.float32, copy=False)
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4:
        raise ValueError(f"{key}: expected a (1, X, Y, Z) volume, got shape {volume.shape}")
    meta = json.loads(members["json"]) if "json" in members else {}
    prov = meta.get("provenance") or {}
    if isinstance(prov, str):
        prov = json.loads(prov)
    variants = meta.get("caption_variants") or {}
    report = members.get("txt", b"").decode("utf-8")
    sections = prov.get("organ_sections") or {}
    if not sections:  # fall back to the "organ:<name>" caption variants
        sections = {k.split(":", 1)[1]: v for k, v in variants.items() if k.startswith("organ:") and v}
    phenos = prov.get("phenotypes", meta.get("phenotypes", [])) or []
    phenos = [str(p.get("id", p.get("name"))) if isinstance(p, dict) else str(p) for p in phenos]
    return VolumeSample(
        key=key,
        volume=volume,
        report=report,
        findings=str(prov.get("findings") or variants.get("findings") or report),
        impression=str(prov.get("impression") or variants.get("impression") or ""),
        organ_sections={str(k): str(v) for k, v in sections.items() if v},
        phenotypes=phenos,
        study_id=str(prov.get("study_id", meta.get("study_id", key))),
        meta=meta,
    )


class ShardIndex:
    """Map-style access to the samples of some WebDataset tars (index built from headers only)."""

    def __init__(self, shards: Sequence[str | Path]) -> None:
        self.entries: list[tuple[str, str, dict[str, tuple[int, int]]]] = []  # (shard, key, ext -> (offset, size))
        for shard in shards:
            grouped: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    parsed = member_key_ext(m.name)
                    if parsed is not None:
                        grouped.setdefault(parsed[0], {})[parsed[1]] = (m.offset_data, m.size)
            for key, exts in grouped.items():
                if any(e in exts for e in VOLUME_EXTS):
                    self.entries.append((str(shard), key, exts))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> VolumeSample:
        shard, key, exts = self.entries[i]
        members = {}
        with open(shard, "rb") as f:
            for ext, (offset, size) in exts.items():
                f.seek(offset)
                members[ext] = f.read(size)
        return _decode_sample(key, members)

    def reports(self) -> list[str]:
        """Every text of every sample (the tokenizer's training corpus), without reading volumes."""
        out = []
        for shard, key, exts in self.entries:
            with open(shard, "rb") as f:
                members = {}
                for ext in ("txt", "json"):
                    if ext in exts:
                        f.seek(exts[ext][0])
                        members[ext] = f.read(exts[ext][1])
            members["npy"] = _EMPTY_NPY
            s = _decode_sample(key, members)
            out.extend(dict.fromkeys([s.report, s.findings, s.impression, *s.organ_sections.values()]))
        return [t for t in out if t]


def _empty_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 1, 1, 1), np.float32))
    return buf.getvalue()


_EMPTY_NPY = _empty_npy()


def split_index(data: Path, split: str) -> ShardIndex:
    """The index of one split's curated shards."""
    return ShardIndex(shard_paths(Path(data), split))
