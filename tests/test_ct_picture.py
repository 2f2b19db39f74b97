"""The picture `predict ct` writes (domains/ct/analyst_render.py): slices in the radiological convention, exact greys (drawn without
matplotlib: tests/test_infer_render.py)."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from domains.ct.analyst_render import PALETTE, palette_indices, prediction_image, render_prediction


def _prepared(shape: tuple[int, int, int] = (40, 30, 20), spacing: tuple[float, float, float] = (1.0, 1.5, 3.0)) -> SimpleNamespace:
    """A volume of soft tissue with a bright block in its right, anterior, superior corner (voxel axes towards R, A, S)."""
    nx, ny, nz = shape
    array = np.full((1, nx, ny, nz), 0.55, np.float32)  # 100 HU on the -1000..1000 scale: mid grey in W400 L40
    array[0, nx // 2:, ny // 2:, nz // 2:] = 1.0
    return SimpleNamespace(name="study", array=array, output_spacing_mm=list(spacing))


def _doc(present: bool = True) -> dict:
    return {
        "name": "study", "note": "Research use only, not a medical device.", "threshold": 0.5,
        "model": {"path": "/models/exports/ct"}, "input": {"modality": "CT", "shape": [40, 30, 20], "spacing_mm": [1.0, 1.5, 3.0]},
        "preprocessing": {"shape": [40, 30, 20], "spacing_mm": [1.0, 1.5, 3.0], "settings": {"a_min": -1000.0, "a_max": 1000.0}},
        "findings": [{"finding": "pleural_effusion", "probability": 0.7, "present": present},
                     {"finding": "ascites", "probability": 0.2, "present": False}],
        "phenotypes": [{"code": "507", "name": "Pleurisy; pleural effusion", "probability": 0.8, "predicted": present}],
    }


def _bright_centre(pixels: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float]:
    """Where the bright block lies in a slice's box, as fractions of its width and height (0: left or top)."""
    left, top, right, bottom = box
    grey = pixels[top:bottom, left:right].astype(int)
    bright = (grey[..., 0] > 240) & (grey[..., 1] > 240) & (grey[..., 2] > 240)  # white, not the yellow letters
    rows, cols = np.nonzero(bright)
    return cols.mean() / (right - left), rows.mean() / (bottom - top)


def test_slices_follow_the_radiological_convention() -> None:
    image, boxes = prediction_image(_prepared(), _doc())
    pixels = np.asarray(image)
    # axial: the patient's right on the image's left, anterior up; coronal: right on the left, superior up;
    # sagittal: anterior on the left, superior up. The block is right, anterior and superior: upper left in all three.
    for plane in ("axial", "coronal", "sagittal"):
        x, y = _bright_centre(pixels, boxes[plane])
        assert x < 0.5 and y < 0.5, (plane, x, y)


def test_slices_share_one_scale_in_millimetres() -> None:
    _, boxes = prediction_image(_prepared(), _doc())
    size = {plane: (right - left, bottom - top) for plane, (left, top, right, bottom) in boxes.items()}
    # 40 x 30 x 20 voxels of 1 x 1.5 x 3 mm: 40 x 45 x 60 mm; the longest side (60 mm) is shown at 300 px, 5 px per mm
    assert size["axial"] == (200, 225)  # x by y
    assert size["coronal"] == (200, 300)  # x by z
    assert size["sagittal"] == (225, 300)  # y by z


def test_png_keeps_the_pictures_greys_and_text_colours() -> None:
    image, _ = prediction_image(_prepared(), _doc())
    rgb = np.asarray(image).astype(int)
    with Image.open(io.BytesIO(render_prediction(_prepared(), _doc()))) as png:
        assert png.format == "PNG" and png.mode == "P"
        written = np.asarray(png.convert("RGB")).astype(int)
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    assert np.abs(written - rgb)[grey].max() <= 1  # within half a step of 230 greys: no banding
    for colour in [(255, 255, 255), (0, 0, 0), (255, 255, 0), (178, 34, 34)]:  # background, text, letters, the note
        at = (rgb == colour).all(axis=2)
        assert at.any() and (written[at] == colour).all()


def test_palette_indices_are_the_nearest_colours() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 60, 3)).astype(np.uint8)
    rgb[:25] = rgb[:25, :, :1]  # greys too
    distances = ((rgb.reshape(-1, 1, 3).astype(int) - PALETTE[None]) ** 2).sum(axis=2)
    chosen = palette_indices(rgb).ravel()
    np.testing.assert_array_equal(distances[np.arange(len(chosen)), chosen], distances.min(axis=1))


def _last_text_line(pixels: np.ndarray) -> np.ndarray:
    """The dark pixels (text) of the lowest line of text in `pixels`."""
    dark = pixels.sum(axis=2) < 200
    rows = np.flatnonzero(dark.any(axis=1))
    first = rows[-1]
    while first - 1 in rows:
        first -= 1
    return dark[first:rows[-1] + 1]


def test_what_is_present_is_set_apart_beside_the_same_slices() -> None:
    (shown, boxes), (absent, _) = (prediction_image(_prepared(), _doc(present)) for present in (True, False))
    shown, absent = np.asarray(shown), np.asarray(absent)
    for left, top, right, bottom in boxes.values():
        np.testing.assert_array_equal(shown[top:bottom, left:right], absent[top:bottom, left:right])
    # the phenotype's line, the same words either way, is bold when it is predicted
    scores_left = max(right for _, _, right, _ in boxes.values())
    assert _last_text_line(shown[:, scores_left:]).sum() > 1.2 * _last_text_line(absent[:, scores_left:]).sum() > 0


def test_a_model_built_in_python_is_named_so() -> None:
    doc = _doc()
    doc["model"] = {"path": None}  # predict_ct's doc for a model not loaded from an export folder
    image, boxes = prediction_image(_prepared(), doc)
    assert set(boxes) == {"axial", "coronal", "sagittal"} and image.width > max(right for _, _, right, _ in boxes.values())
