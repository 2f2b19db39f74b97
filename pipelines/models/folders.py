"""The file names of the model folders domainfm writes, and which kind of model a folder holds.

Imports neither torch nor a model library: a command checks the folder it was given before it
pays for them, and the CT command never imports open_clip (0.8 s) to learn that a folder is not one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pipelines.errors import InputError

CLIP_CONFIG_FILE = "open_clip_config.json"  # a stock open_clip `local-dir:` folder
CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
VOLUME_CONFIG_FILE = "config.json"  # the 3D dual encoder's folder (pipelines.models.volume)


def export_kind(folder: Path) -> Literal["open_clip", "volume"]:
    """"open_clip" for a local-dir folder, "volume" for a 3D dual encoder folder; InputError otherwise."""
    folder = Path(folder)
    if (folder / CLIP_CONFIG_FILE).is_file() and (folder / CLIP_WEIGHTS_FILE).is_file():
        return "open_clip"
    config = folder / VOLUME_CONFIG_FILE
    if config.is_file() and "phenotypes" in json.loads(config.read_text()):
        return "volume"
    raise InputError(f"{folder} is not an exported model (no {CLIP_CONFIG_FILE} + {CLIP_WEIGHTS_FILE}, no volume {VOLUME_CONFIG_FILE})")
