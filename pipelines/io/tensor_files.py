"""safetensors files that the same tensors and metadata always write as the same bytes."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from pipelines.io.atomic import atomic_write_bytes


def save_tensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> Path:
    """Write `tensors` and `metadata` as a safetensors file at `path` (atomically), its header's keys in sorted order.

    safetensors keeps the metadata in a Rust HashMap, whose order is seeded anew for every map: a file with
    several metadata entries came out in one of their orders (an export's prompt embeddings, a hubness
    bank), so a rerun on the same inputs changed its bytes and DVC ran every stage after it again. The
    header is the library's, written again with sorted keys; the tensors' offsets count from the header's
    end, so the data after it stands, and any safetensors reader loads the file.
    """
    from safetensors.numpy import save

    data = save({name: np.ascontiguousarray(array) for name, array in tensors.items()}, metadata=metadata)
    length = struct.unpack("<Q", data[:8])[0]
    header = json.dumps(json.loads(data[8:8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads its header with spaces to 8 bytes, aligning the data
    atomic_write_bytes(Path(path), struct.pack("<Q", len(header)) + header + data[8 + length:])
    return Path(path)
