"""Seeds that are the same in every process (Python's hash() is salted per process; crc32 is not)."""
from __future__ import annotations

import zlib
from typing import Any


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed from `parts`, identical in every process.

    Example: `stable_seed("step", seed, step, rank)`.
    """
    return zlib.crc32(":".join(str(p) for p in parts).encode())
