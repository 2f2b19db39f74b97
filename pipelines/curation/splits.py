"""Train/val/test assignment by group: every pair of a group lands in the same split."""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def assign_split(group: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """Deterministic split of a group from a hash: the same group always gets the same split."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
