"""What every benchmark shares: the machine line and the atomic write of the JSON contract (report.py has the contract).

Imported by the scripts beside it (`python benchmarks/<name>.py` puts this folder first on the path).
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> str:
    """CPU model, cores and torch version, for the JSON contract."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "absent"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch_version}"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (a temporary file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def random_model(folder: Path) -> Path:
    """The demo's tiny architecture, randomly initialised (seed 0), as an open_clip local-dir (an export without a card)."""
    import torch

    from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

    torch.manual_seed(0)
    spec = ModelSpec("domainfm-tiny")
    save_open_clip_dir(load_model(spec).model, model_config_of(spec), Path(folder) / "model")
    return Path(folder) / "model"
