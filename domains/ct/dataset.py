"""Reading curated CT shards: the ONE place that knows the curated format (read defensively).

Contract (domains/ct/curate.py): DATA/shards/{split}-NNNNNN.tar with per sample `npy` (float32
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
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.curation import shard_paths

VOLUME_EXTS = ("npy",)


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed from parts that is the same in every process (unlike hash())."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


@dataclass
class CTSample:
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


def _decode_sample(key: str, members: dict[str, bytes]) -> CTSample:
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
    return CTSample(
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
                    dirname, base = m.name.rsplit("/", 1) if "/" in m.name else ("", m.name)
                    if base.startswith(".") or "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    key = f"{dirname}/{stem}" if dirname else stem
                    grouped.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
            for key, exts in grouped.items():
                if any(e in exts for e in VOLUME_EXTS):
                    self.entries.append((str(shard), key, exts))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> CTSample:
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
    return ShardIndex(shard_paths(Path(data), split))


def choose_text(sample: CTSample, seed: int, epoch: int, full_report_prob: float = 0.5) -> str:
    """The full findings with probability `full_report_prob`, else one organ section; seeded per sample/epoch."""
    choices = sample.text_choices()
    rng = random.Random(stable_seed("text", seed, epoch, sample.key))
    if len(choices) == 1 or rng.random() < full_report_prob:
        return choices[0]
    return rng.choice(choices[1:])


def phenotype_targets(samples: Sequence[CTSample], label_space: Sequence[str]) -> torch.Tensor:
    """Multi-hot (B, P) float targets; phenotypes outside the label space are ignored."""
    index = {p: i for i, p in enumerate(label_space)}
    out = torch.zeros(len(samples), len(label_space))
    for b, s in enumerate(samples):
        for p in s.phenotypes:
            if p in index:
                out[b, index[p]] = 1.0
    return out


def volume_batch(samples: Sequence[CTSample], size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(B, 1, X, Y, Z) float32; volumes of another size are resampled (trilinear) to `size`."""
    vols = []
    for s in samples:
        v = torch.from_numpy(np.ascontiguousarray(s.volume))
        if size is not None and tuple(v.shape[1:]) != tuple(size):
            v = F.interpolate(v[None], size=tuple(size), mode="trilinear", align_corners=False)[0]
        vols.append(v)
    return torch.stack(vols)


# ----------------------------------------------------------------------------- synthetic fixture

FIXTURE_FINDINGS = {
    # phenotype / finding id: (organ, positive sentence, negative sentence)
    "liver_lesion": ("liver", "There is a hypodense liver lesion.", "The liver is normal."),
    "kidney_stone": ("kidneys", "There is a kidney stone.", "The kidneys are normal."),
    "pleural_effusion": ("lungs", "There is a pleural effusion.", "No pleural effusion."),
}


def write_synthetic_shards(out: Path, n: int = 24, size: Sequence[int] = (32, 32, 24), seed: int = 0,
                           test_fraction: float = 0.25) -> dict[str, dict[str, int]]:
    """Tiny curated-format data for tests and smoke runs: each finding is a bright blob in its own
    region of the volume and is stated in the report. Returns {study_id: {finding: 0/1}}."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    names = list(FIXTURE_FINDINGS)
    (out / "phenotypes.json").write_text(json.dumps([{"id": p, "name": p, "count": 0} for p in names]))
    labels: dict[str, dict[str, int]] = {}
    n_test = max(int(round(n * test_fraction)), 1)
    writers = {s: wds.TarWriter(str(out / "shards" / f"{s}-000000.tar")) for s in ("train", "test")}
    X, Y, Z = size
    for i in range(n):
        split = "test" if i >= n - n_test else "train"
        study = f"study{i:04d}"
        vol = rng.uniform(0.0, 0.2, size=(1, X, Y, Z)).astype(np.float32)
        present = {p: int(rng.random() < 0.5) for p in names}
        sections = {}
        for j, p in enumerate(names):
            organ, pos, neg = FIXTURE_FINDINGS[p]
            if present[p]:
                x0 = j * X // len(names)
                vol[0, x0:x0 + X // len(names), Y // 4:3 * Y // 4, Z // 4:3 * Z // 4] += 0.7
            sections[organ] = pos if present[p] else neg
        findings = " ".join(sections.values())
        impression = ", ".join(p.replace("_", " ") for p in names if present[p]) or "no acute findings"
        meta = {"provenance": {"study_id": study, "phenotypes": [p for p in names if present[p]], "findings": findings,
                               "impression": impression, "organ_sections": sections},
                "caption_variants": {"findings": findings, "impression": impression,
                                     **{f"organ:{o}": t for o, t in sections.items()}}}
        buf = io.BytesIO()
        np.save(buf, np.clip(vol, 0, 1))
        writers[split].write({"__key__": study, "npy": buf.getvalue(), "txt": f"{findings} {impression}",
                              "json": json.dumps(meta).encode()})
        labels[study] = present
    for w in writers.values():
        w.close()
    return labels
