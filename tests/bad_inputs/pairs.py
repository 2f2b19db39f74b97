"""Bad inputs of captioned-image tables and shards (`domainfm curate pairs`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bad_inputs import Case
from bad_inputs.files import write_pairs_csv, write_png


def _csv_with(rows: list[tuple[str, str]], **kw: object) -> callable:
    def build(folder: Path) -> list[str]:
        return ["--csv", str(write_pairs_csv(folder, extra_rows=rows, **kw))]
    return build


def _with_file(name: str, data: callable, caption: str = "an odd picture") -> callable:
    def build(folder: Path) -> list[str]:
        csv = write_pairs_csv(folder, extra_rows=[(f"images/{name}", caption)])
        (folder / "images" / name).write_bytes(data())
        return ["--csv", str(csv)]
    return build


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 megapixels that compress to a few kB
    return buf.getvalue()


def _sixteen_bit() -> bytes:
    ramp = (np.linspace(1000, 3000, 24 * 24).reshape(24, 24)).astype(np.uint16)  # a dim scene: 8-bit clipping makes it white
    return _png(ramp)  # uint16 arrays become 16-bit PNGs


def _not_white(out: Path) -> str | None:
    import webdataset as wds

    for shard in sorted((out / "shards").glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False).decode("rgb8"):
            if sample["txt"] == "an odd picture":
                white = float((np.asarray(sample["png"]) > 250).mean())
                return None if white < 0.5 else f"16-bit image came out {white:.0%} white"
    return "the 16-bit image's pair is missing"


def _caption_decoded(out: Path) -> str | None:
    captions = set(pd.read_parquet(out / "manifest.parquet")["caption"])
    return None if "caf\u00e9 cr\u00e8me" in captions else f"Latin-1 caption not decoded: {sorted(captions)[:6]}"


def _missing_column(folder: Path) -> list[str]:
    return ["--csv", str(write_pairs_csv(folder, header=("path", "title")))]


def _binary_table(folder: Path) -> list[str]:
    write_pairs_csv(folder)
    (folder / "pairs.csv").write_bytes(b"\x00\x01\x02" * 100)
    return ["--csv", str(folder / "pairs.csv")]


def _empty_group(folder: Path) -> list[str]:
    csv = write_pairs_csv(folder)
    table = pd.read_csv(csv)
    table["site"] = ["a", "b", "", "a"]
    table.to_csv(csv, index=False)
    return ["--csv", str(csv)]


def _shards(folder: Path, damage: str) -> list[str]:
    import webdataset as wds

    good = folder / "good.tar"
    with wds.TarWriter(str(good)) as sink:
        for i in range(4):
            sink.write({"__key__": f"good{i}", "png": np.full((16, 16, 3), 40 * i, np.uint8), "txt": f"good sample {i}"})
    bad = folder / "odd.tar"
    with wds.TarWriter(str(bad)) as sink:
        if damage == "no-image":
            sink.write({"__key__": "odd0", "txt": "a caption without a picture"})
        sink.write({"__key__": "odd1", "png": np.full((16, 16, 3), 9, np.uint8), "txt": "an odd sample"})
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:700])
    return ["--shards", str(good), "--shards", str(bad)]


GOOD = ["good0.png", "good3.png"]
CASES = [
    Case("pairs-missing-image", "pairs", _csv_with([("images/nowhere.png", "a lost picture")]), bad="nowhere.png",
         reason=r"not found", good=GOOD),
    Case("pairs-latin1-semicolon-csv", "pairs", _csv_with([("images/good0.png", "caf\u00e9 cr\u00e8me")], sep=";", encoding="latin-1"),
         bad="pairs.csv", reason=r"not UTF-8.*(cp1252|latin)", good=["good1.png"], expect="warning", check=_caption_decoded),
    Case("pairs-tab-separated-csv", "pairs", _csv_with([("images/nowhere.png", "lost")], sep="\t"), bad="nowhere.png",
         reason=r"not found", good=GOOD),
    Case("pairs-empty-caption", "pairs", _csv_with([("images/good1.png", "  ")]), bad="row 6", reason=r"empty caption", good=GOOD),
    Case("pairs-text-file-as-png", "pairs", _with_file("odd.png", lambda: b"this is not a picture"), bad="odd.png",
         reason=r"unreadable image", good=GOOD),
    Case("pairs-truncated-png", "pairs", _with_file("odd.png", lambda: _png(np.full((64, 64, 3), 7, np.uint8))[:60]), bad="odd.png",
         reason=r"unreadable image", good=GOOD),
    Case("pairs-decompression-bomb", "pairs", _with_file("odd.png", _bomb), bad="odd.png", reason=r"too large", good=GOOD),
    Case("pairs-16-bit-png", "pairs", _with_file("odd.png", _sixteen_bit), bad="odd.png", reason=r"16-bit", good=GOOD,
         expect="warning", check=_not_white),
    Case("pairs-missing-column", "pairs", _missing_column, bad="pairs.csv", reason=r"lacks column\(s\) filepath", expect="error"),
    Case("pairs-binary-table", "pairs", _binary_table, bad="pairs.csv", reason=r"not a text file", expect="error"),
    Case("pairs-empty-group", "pairs", _empty_group, bad="row 4", reason=r"empty group", good=["good0.png", "good1.png"],
         params={"group_key": "site"}),
    Case("pairs-shard-sample-without-image", "pairs", lambda f: _shards(f, "no-image"), bad="odd0", reason=r"no image",
         good=["good.tar"]),
    Case("pairs-truncated-shard", "pairs", lambda f: _shards(f, "truncated"), bad="odd.tar", reason=r"unreadable tar",
         good=["good.tar"]),
]
_ = write_png  # re-exported writer used by other domains' cases
