"""domainfm's Python API: exported domain models at work on your own files.

```python
import domainfm

result = domainfm.map_slide("exports/pathology", "slide.svs", "out/", classes=["stroma", "tumour"])
hits = domainfm.search_slides("exports/pathology", "slides/", "mitotic figures", "out/search")
ct = domainfm.predict_ct("exports/ct", "scan.nii.gz", "out/ct")
scene = domainfm.map_raster("exports/remote_sensing", "scene.tif", "out/", classes=["water", "forest"])
found = domainfm.search_rasters("exports/remote_sensing", ["a.tif", "b.tif"], "parking lot", "out/search")
encoder = domainfm.load("exports/remote_sensing")   # embeddings and zero-shot scores of any image export
```

Each function is the one behind a `domainfm map|search|predict <domain>` command (same options,
same outputs), defined by its domain package; they are imported on first use, so `import
domainfm` stays light. Each returns a small dataclass naming the files written and the key numbers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.infer.device import Precision

_API = {
    "map_raster": "domains.remote_sensing.analyst",
    "search_rasters": "domains.remote_sensing.analyst",
    "map_slide": "domains.pathology.analyst",
    "search_slides": "domains.pathology.analyst",
    "predict_ct": "domains.ct.analyst",
    "load_ct_model": "domains.ct.loader",
    "ClipEncoder": "pipelines.infer.clip",
}

__all__ = ["load", *_API]


def load(export_dir: str, device: str = "auto", precision: Precision = "auto") -> Any:
    """An exported model ready to use: a ClipEncoder for image (open_clip) exports, a CTModel for volume exports.

    `precision`: "auto" embeds in bf16 where the device computes it natively, else in fp32 (pipelines.infer.device).
    """
    from pipelines.infer.clip import ClipEncoder, export_kind

    if export_kind(export_dir) == "volume":
        from domains.ct.loader import load_ct_model

        return load_ct_model(export_dir, device=device, precision=precision)
    return ClipEncoder.load(export_dir, device=device, precision=precision)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'domainfm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
