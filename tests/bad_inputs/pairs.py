"""Bad inputs of captioned-image tables (`domainfm curate pairs --csv`)."""
from __future__ import annotations

from pathlib import Path

from bad_inputs import Case
from bad_inputs.files import write_pairs_csv


def _missing_image(folder: Path) -> list[str]:
    return ["--csv", str(write_pairs_csv(folder, extra_rows=[("images/nowhere.png", "a lost picture")]))]


def _latin1_semicolons(folder: Path) -> list[str]:
    return ["--csv", str(write_pairs_csv(folder, extra_rows=[("images/good0.png", "caf\u00e9 cr\u00e8me")], sep=";", encoding="latin-1"))]


def _caption_decoded(out: Path) -> str | None:
    import pandas as pd

    captions = set(pd.read_parquet(out / "manifest.parquet")["caption"])
    return None if "caf\u00e9 cr\u00e8me" in captions else f"Latin-1 caption not decoded: {sorted(captions)[:6]}"


CASES = [
    Case("pairs-missing-image", "pairs", _missing_image, bad="nowhere.png", reason=r"not found", good=["good0.png", "good3.png"]),
    Case("pairs-latin1-semicolon-csv", "pairs", _latin1_semicolons, bad="pairs.csv", reason=r"not UTF-8.*(cp1252|latin)",
         good=["good1.png"], expect="warning", check=_caption_decoded),
]
