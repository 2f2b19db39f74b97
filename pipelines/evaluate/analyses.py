"""Analyses beside CLIP_benchmark's tasks, per model: hubness and modality gap, and linear probes.

`evaluate` (clip.py) hands each model's embeddings to an `Analyses` as it computes them:
- retrieval-set embeddings -> hubness.retrieval_hubness, with query and gallery banks embedded by
  the same model from `bank_size` image-caption pairs of the curated train split;
- zero-shot-set image features -> linear_probe.linear_probe on the set's labels.
`write` puts OUT/hubness.json and OUT/linear_probe.json ({role: record}; a role whose analysis did
not run holds {"skipped": reason}), and each call returns the compact scalars for metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipelines.evaluate.clip import caption_positives, encode_images, encode_texts
from pipelines.evaluate.hubness import HubnessConfig, hubness_summary, retrieval_hubness
from pipelines.evaluate.linear_probe import LinearProbeConfig, linear_probe, probe_summary
from pipelines.io.atomic import atomic_write_json
from pipelines.io.shards import image_bytes, iter_tar_samples
from pipelines.params import to_dict

HUBNESS_FILE = "hubness.json"
LINEAR_PROBE_FILE = "linear_probe.json"


@dataclass
class Bank:
    """Train pairs for QB-Norm's and DBNorm's banks: encoded images, one caption each, and how many pairs they were drawn from."""

    images: list[bytes]
    texts: list[str]
    n_available: int


def sample_bank(shards: Sequence[str], size: int, seed: int) -> Bank:
    """`size` captioned pairs drawn uniformly from the shards in one pass (reservoir sampling), in shard order.

    Each kept image brings one of its captions (caption and variants), drawn with the same seed,
    since the test queries hold every variant too. Only `size` images are held in memory.
    """
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, bytes, list[str]]] = []
    seen = 0
    for shard in shards:
        for sample in iter_tar_samples(shard):
            captions = caption_positives(sample)
            if not captions:
                continue
            if len(kept) < size:
                kept.append((seen, image_bytes(sample), captions))
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < size:
                    kept[slot] = (seen, image_bytes(sample), captions)
            seen += 1
    kept.sort(key=lambda item: item[0])
    return Bank([img for _, img, _ in kept], [caps[int(rng.integers(0, len(caps)))] for _, _, caps in kept], seen)


class Analyses:
    """Collects hubness and linear-probe records per model role; a None config leaves that analysis (and its file) out."""

    def __init__(self, hubness: HubnessConfig | None, probe: LinearProbeConfig | None, bank_shards: Sequence[str],
                 device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        self.hubness_cfg, self.probe_cfg = hubness, probe
        self.bank_shards = list(bank_shards)
        self.device, self.batch_size = device, batch_size
        self._bank: Bank | None = None
        self.hubness_records: dict[str, dict[str, Any]] = {}
        self.probe_records: dict[str, dict[str, Any]] = {}

    def bank(self) -> Bank:
        """The train pairs of the banks, read once for every model."""
        if self._bank is None:
            cfg = self.hubness_cfg or HubnessConfig()
            self._bank = sample_bank(self.bank_shards, cfg.bank_size, cfg.seed) if cfg.bank_size else Bank([], [], 0)
        return self._bank

    def on_retrieval(self, role: str, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, image_emb: torch.Tensor,
                     text_emb: torch.Tensor, text_to_image: Sequence[int]) -> dict[str, dict[str, float]]:
        """Hubness of one model on the retrieval set; returns {"hubness": scalars} for metrics.json ({} when not asked)."""
        cfg = self.hubness_cfg
        if cfg is None or not cfg.enabled:
            return {}
        bank = self.bank()
        dim = image_emb.shape[1]
        bank_img = encode_images(model, preprocess, bank.images, self.device, self.batch_size) if bank.images else torch.zeros(0, dim)
        bank_txt = encode_texts(model, tokenizer, bank.texts, self.device, self.batch_size) if bank.texts else torch.zeros(0, dim)
        report = retrieval_hubness(image_emb.numpy(), text_emb.numpy(), text_to_image, bank_img.numpy(), bank_txt.numpy(), cfg)
        if not bank.images:
            reason = "bank_size is 0" if cfg.bank_size == 0 else f"no captioned pairs in {len(self.bank_shards)} train shard(s)"
            report["bank"]["note"] = f"no banks ({reason}): the corrected scores are the plain ones"
        else:
            report["bank"]["drawn_from"] = bank.n_available
        self.hubness_records[role] = {"settings": to_dict(cfg), **report}
        return {"hubness": hubness_summary(report, cfg.k)}

    def on_zeroshot(self, role: str, features: torch.Tensor, labels: Sequence[int]) -> dict[str, dict[str, float]]:
        """Linear probes of one model's zero-shot-set features; returns {"linear_probe": scalars} ({} when not asked)."""
        cfg = self.probe_cfg
        if cfg is None or not cfg.enabled:
            return {}
        record = linear_probe(features.numpy(), labels, cfg)
        self.probe_records[role] = {"settings": to_dict(cfg), **record}
        summary = probe_summary(record)
        return {"linear_probe": summary} if summary else {}

    def write(self, out_dir: Path, roles: Sequence[str], retrieval_skipped: str, zeroshot_skipped: str) -> None:
        """OUT/hubness.json and OUT/linear_probe.json, one record per role (declared DVC outputs: written even when skipped)."""
        for cfg, records, name, what, task_skipped in (
            (self.hubness_cfg, self.hubness_records, HUBNESS_FILE, "hubness", retrieval_skipped),
            (self.probe_cfg, self.probe_records, LINEAR_PROBE_FILE, "linear_probe", zeroshot_skipped),
        ):
            if cfg is None:
                continue
            reason = f"evaluate.{what}.enabled is false" if not cfg.enabled else task_skipped or "not run"
            atomic_write_json(Path(out_dir) / name, {role: records.get(role, {"skipped": reason}) for role in roles})


def write_skipped(out_dir: Path, roles: Sequence[str], reason: str) -> None:
    """hubness.json and linear_probe.json for a model family without these analyses (their DVC outputs must exist)."""
    for name in (HUBNESS_FILE, LINEAR_PROBE_FILE):
        atomic_write_json(Path(out_dir) / name, {role: {"skipped": reason} for role in roles})
