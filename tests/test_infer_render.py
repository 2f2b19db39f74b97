"""The map pictures drawn with PIL (pipelines/infer/render.py): class colours where the classes are, legends, no matplotlib."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domains.pathology.analyst_render import class_colours as slide_colours
from domains.pathology.analyst_render import heatmap_image, heatmap_png
from domains.remote_sensing.analyst import NODATA_CLASS, OVERLAY_ALPHA, class_colours, quicklook_image, quicklook_png
from pipelines.infer import render, sheets

ROOT = Path(__file__).resolve().parents[1]
GREY = 100
CLASSES = ["water", "forest", "farmland"]


def _expected_blend(colour: tuple[int, int, int], alpha: float, base: int = GREY) -> np.ndarray:
    return np.round(base * (1 - alpha) + np.asarray(colour, np.float64) * alpha).astype(np.uint8)


def _scene_quicklook() -> tuple[Image.Image, tuple[int, int], np.ndarray, list[tuple[int, int, int]]]:
    rgb = np.full((200, 300, 3), GREY, np.uint8)
    classes = np.array([[0, 1, 2], [NODATA_CLASS, 1, 0]], np.uint8)  # 2 x 3 cells of 100 px
    colours = class_colours(CLASSES)
    image, offset = quicklook_image(rgb, classes, CLASSES, colours, {"water": 0.4, "forest": 0.4, "farmland": 0.2},
                                    "scene\nsecond line", metres_per_px=2.0)
    return image, offset, classes, colours


def test_quicklook_pixels_take_their_cell_class_colour_over_the_scene() -> None:
    image, (x0, y0), classes, colours = _scene_quicklook()
    pixels = np.asarray(image)
    for row in range(2):
        for col in range(3):
            got = pixels[y0 + row * 100 + 30, x0 + col * 100 + 50]  # clear of the scale bar (lower left, 95 % down)
            k = classes[row, col]
            want = np.full(3, GREY, np.uint8) if k == NODATA_CLASS else _expected_blend(colours[k], OVERLAY_ALPHA)
            np.testing.assert_array_equal(got, want, err_msg=f"cell {row},{col}")
    assert image.width >= 300 + 2 * render.MARGIN and image.height > 200 + 40  # title above, legend below


def test_quicklook_png_keeps_the_legend_colours_exactly_and_the_map_closely() -> None:
    image, (x0, y0), classes, colours = _scene_quicklook()
    rgb = np.full((200, 300, 3), GREY, np.uint8)
    png = quicklook_png(rgb, classes, CLASSES, colours, {"water": 0.4, "forest": 0.4, "farmland": 0.2}, "scene\nsecond line", 2.0)
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert decoded.shape == np.asarray(image).shape
    below_map = decoded[y0 + 200:]
    for colour in colours:  # each legend swatch, in its exact colour (the palette keeps it), under the map
        assert (below_map == colour).all(axis=2).sum() >= render.SWATCH ** 2
    got = decoded[y0 + 30, x0 + 50].astype(int)  # water cell: the palette may move it a few levels
    assert np.abs(got - _expected_blend(colours[0], OVERLAY_ALPHA)).max() <= 6


@pytest.mark.parametrize("alpha", [OVERLAY_ALPHA, 0.3, 0.77])
def test_label_blend_by_table_is_the_per_pixel_blend_bit_for_bit(alpha: float) -> None:
    """`blend_labels` looks up what `blend` computes pixel by pixel: every label, channel and base value, the clear label untouched."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    base[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(7)] + [(0, 0, 0), (255, 255, 255)]
    labels = rng.integers(0, len(colours), (90, 120)).astype(np.uint8)
    labels[rng.random((90, 120)) < 0.2] = NODATA_CLASS
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colours)] = colours
    want = render.blend(base, palette[labels], np.where(labels == NODATA_CLASS, 0.0, alpha).astype(np.float32))
    got = render.blend_labels(base, labels, colours, alpha, clear=NODATA_CLASS)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[labels == NODATA_CLASS], base[labels == NODATA_CLASS])


def test_indexed_png_is_a_valid_png_of_the_indices_and_palette() -> None:
    """Our PNG writer (libdeflate): Pillow checks its chunks' CRCs and reads back the very indices and palette."""
    rng = np.random.default_rng(4)
    indices = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    indices[:10] = 7  # runs, which compress
    palette = [int(v) for v in rng.integers(0, 256, 768)]
    png = sheets.indexed_png(indices, palette)
    Image.open(io.BytesIO(png)).verify()  # the chunks' CRCs, the stream's end
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.mode == "P" and decoded.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(decoded), indices)
    assert decoded.getpalette() == palette
    assert len(png) < indices.size + 768


def test_palette_png_decodes_to_the_image_quantised_to_its_palette() -> None:
    """The bytes change writer (ours instead of Pillow's), not the picture: Pillow's own PNG of the quantised image decodes the same."""
    image, _, _, colours = _scene_quicklook()
    fixed = [(0, 0, 0), (255, 255, 255), *colours]
    decoded = Image.open(io.BytesIO(sheets.palette_png(image, fixed)))
    ours = np.asarray(decoded.convert("RGB"))
    quantised = image.quantize(palette=decoded, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    quantised.save(buffer, format="PNG")
    np.testing.assert_array_equal(ours, np.asarray(Image.open(buffer).convert("RGB")))
    assert np.abs(ours.astype(int) - np.asarray(image).astype(int)).mean() < 1


def test_scale_bar_picks_a_round_length_and_says_it() -> None:
    bar = render.ScaleBar(2.0, [v * 10 ** e for e in range(0, 7) for v in (1, 2, 5)], "m", "km")
    assert bar.length(300) == 100 and bar.label(100) == "100 m"  # a fifth of 300 px x 2 m = 120 m
    assert bar.label(bar.length(8000)) == "2 km"
    image, (x0, y0), _, _ = _scene_quicklook()
    pixels = np.asarray(image)
    bar_row = pixels[y0 + int(round(200 * 0.95)) - 1, x0:x0 + 300]
    black = np.nonzero((bar_row == 0).all(axis=1))[0]
    assert len(black) == 50  # 100 m at 2 m per px


def test_heatmap_argmax_colours_each_tile_by_its_class_with_confidence_as_opacity() -> None:
    thumbnail = np.full((100, 200, 3), GREY, np.uint8)
    probabilities = np.array([[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    xs, ys = np.array([0, 1000]), np.array([0, 500])  # level-0 px; the slide is 2000 x 1000: 10 level-0 px per thumbnail px
    image, (x0, y0) = heatmap_image(thumbnail, (2000, 1000), xs, ys, 500.0, CLASSES, probabilities, "slide", 0.5)
    pixels = np.asarray(image)
    colours = slide_colours(3)
    confidence = (0.9 - 1 / 3) / (1 - 1 / 3)
    np.testing.assert_array_equal(pixels[y0 + 25, x0 + 25], _expected_blend(colours[0], np.float32(0.25 + 0.4 * confidence)))
    np.testing.assert_array_equal(pixels[y0 + 75, x0 + 125], _expected_blend(colours[0], 0.25))  # chance: faintest
    np.testing.assert_array_equal(pixels[y0 + 25, x0 + 150], [GREY] * 3)  # no tile


def test_heatmap_of_one_class_uses_inferno_and_draws_a_colour_bar() -> None:
    thumbnail = np.full((100, 200, 3), GREY, np.uint8)
    probabilities = np.array([[0.2, 0.7, 0.1]], np.float32)
    image, (x0, y0) = heatmap_image(thumbnail, (2000, 1000), np.array([0]), np.array([0]), 500.0, CLASSES, probabilities,
                                    "slide", 0.5, show="forest")
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[y0 + 25, x0 + 25], _expected_blend(tuple(render.INFERNO[int(0.7 * 256)]), 0.65))
    ramp = pixels[y0 + 100 + render.MARGIN + 5]  # the colour bar's first row under the picture
    assert (ramp == render.INFERNO[0]).all(axis=1).any() and (ramp == render.INFERNO[-1]).all(axis=1).any()
    png = heatmap_png(thumbnail, (2000, 1000), np.array([0]), np.array([0]), 500.0, CLASSES, probabilities, "slide", 0.5)
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_inferno_table_and_lookup_are_matplotlibs() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    cmap = matplotlib.colormaps["inferno"]
    values = np.concatenate([np.linspace(0, 1, 1001), [-0.5, 1.5]])
    want = np.round(np.asarray(cmap(values))[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(render.lookup(render.INFERNO, values), want)


def test_micro_sign_is_written_u_only_in_a_font_without_it() -> None:
    face = render.font(11)
    assert render.printable("50 µm", face) in ("50 µm", "50 um")
    bundled = render.ImageFont.load_default(size=11)
    if render._lacks_micro(bundled):
        assert render.printable("50 µm", bundled) == "50 um"


def test_analyst_pictures_do_not_import_matplotlib() -> None:
    code = ("import sys, numpy as np\n"
            "sys.path.insert(0, 'tests')\n"
            "from test_ct_picture import _doc, _prepared\n"
            "from domains.ct.analyst_render import render_prediction\n"
            "render_prediction(_prepared(), _doc())\n"
            "from domains.remote_sensing.analyst import quicklook_png, class_colours\n"
            "from domains.pathology.analyst_render import heatmap_png\n"
            "import domains.pathology.analyst\n"
            "rgb = np.zeros((40, 40, 3), np.uint8); cls = np.zeros((2, 2), np.uint8)\n"
            "quicklook_png(rgb, cls, ['water'], class_colours(['water']), {'water': 1.0}, 't', 1.0)\n"
            "p = np.array([[0.6, 0.4]], np.float32)\n"
            "heatmap_png(rgb, (40, 40), np.array([0]), np.array([0]), 20.0, ['a', 'b'], p, 't', 0.5)\n"
            "heatmap_png(rgb, (40, 40), np.array([0]), np.array([0]), 20.0, ['a', 'b'], p, 't', 0.5, show='a')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_palette_png_of_a_scene_is_as_close_to_the_figure_as_median_cut() -> None:
    """The quick-look's palette (fast octree) keeps a photo-like figure within a few levels, at least as close as median cut."""
    from domains.remote_sensing.demo.demo_data import render_landscape

    landscape, _, _ = render_landscape(256, 1.0, 0)
    rgb = np.asarray(Image.fromarray(landscape).resize((600, 600), Image.BICUBIC))
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (12, 12)).astype(np.uint8)
    colours = class_colours(CLASSES)
    shares = {"water": 0.3, "forest": 0.4, "farmland": 0.3}
    image, _ = quicklook_image(rgb, classes, CLASSES, colours, shares, "scene", 2.0)
    figure = np.asarray(image).astype(int)
    decoded = np.asarray(Image.open(io.BytesIO(quicklook_png(rgb, classes, CLASSES, colours, shares, "scene", 2.0))).convert("RGB"))
    error = np.abs(decoded.astype(int) - figure)
    assert error.mean() <= 3.5 and np.percentile(error, 99) <= 16
    fixed = [(0, 0, 0), (255, 255, 255), *colours]
    median_cut = image.quantize(colors=256 - len(fixed), method=Image.Quantize.MEDIANCUT).getpalette()[: 3 * (256 - len(fixed))]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for c in fixed for v in c] + median_cut)
    before = np.abs(np.asarray(image.quantize(palette=palette, dither=Image.Dither.NONE).convert("RGB")).astype(int) - figure)
    assert error.mean() <= before.mean() and error.max() <= before.max()
