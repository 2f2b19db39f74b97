"""The `domainfm` entry point makes CPython's full garbage collections rare, so a command's start-up runs none.

Start-up imports about half a million long-lived objects (torch, open_clip, transformers), and each full
collection scans them all; CPython's default thresholds ran 7-8 of them in a map or prediction.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.cli import FULL_COLLECTION_EVERY

ROOT = Path(__file__).resolve().parents[1]
# Full collections counted while torch and open_clip import (what a map, search, prediction or training
# imports first), after the entry point ran ("entry": `domainfm --help`) or not ("default").
CODE = """
import gc, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1))
from pipelines import cli
if sys.argv[1] == "entry":
    sys.argv = ["domainfm", "--help"]
    try:
        cli.main()
    except SystemExit:
        pass
import torch, open_clip
print(len(full), gc.get_threshold()[2])
"""


def full_collections(how: str) -> tuple[int, int]:
    """(full collections during the imports, the full-collection threshold) in a fresh process."""
    done = subprocess.run([sys.executable, "-c", CODE, how], cwd=ROOT, capture_output=True, text=True, check=True)
    count, threshold = done.stdout.split()[-2:]
    return int(count), int(threshold)


def test_the_entry_point_leaves_start_up_without_full_collections() -> None:
    default, entry = full_collections("default"), full_collections("entry")
    assert default[0] >= 2 and default[1] == 10  # CPython's own setting collects while the libraries import
    assert entry == (0, FULL_COLLECTION_EVERY)
