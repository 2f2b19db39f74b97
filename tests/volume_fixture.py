"""Tiny curated volume-pair shards for tests: each finding a bright blob in its own region, stated in the report."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

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
