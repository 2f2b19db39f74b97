"""The picture `domainfm predict ct` writes beside its JSON: three slices through the volume and the top scores, drawn with PIL.

The picture was a matplotlib figure: importing matplotlib and drawing and saving the figure took
0.57 s of a first prediction on a real CT (2.2 s in all), 0.25 s of each further volume in one
process; PIL draws it in 0.03 and 0.02-0.03 s. It needs no plotting, only a window of grey levels, a
resize to millimetres, letters and lines of text (as pipelines/infer/render.py draws the map pictures).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.infer.render import ScaleBar, draw_scale_bar, font, printable, text_size
from pipelines.infer.sheets import indexed_png

if TYPE_CHECKING:
    from domains.ct.loader import PreparedVolume

TOP_SHOWN = 5  # findings and phenotypes written beside the slices
DISPLAY_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window (W400 L40) of the picture; the model sees a_min..a_max
PLANE_PX = 300  # the largest side of a slice as shown; the three share one scale (px per mm)
SCALE_STEPS_MM = (10, 20, 50, 100, 200)  # the scale bars' lengths: the longest within a fifth of a slice's width
MARGIN = 16
GAP = 24  # between the slices, and between them and the scores
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
LETTER = (255, 255, 0)  # orientation letters, yellow on the slices
NOTE = (178, 34, 34)  # firebrick: the research-use note
DIM = (105, 105, 105)  # the input's description under the title

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive) on the picture


def display_planes(array: np.ndarray, spacing: list[float]) -> list[tuple[str, np.ndarray, tuple[float, float], str, int, int]]:
    """(title, image, (mm per column, mm per row), edge letters left-right-top-bottom, index, count) per plane.

    Voxel axes point to R, A, S: images are shown in the radiological convention (patient's right on the
    image's left; anterior up in axial, superior up in coronal and sagittal, anterior left in sagittal).
    """
    volume = array[0]
    nx, ny, nz = volume.shape
    sx, sy, sz = spacing
    i, j, k = nx // 2, ny // 2, nz // 2
    return [
        ("axial", volume[:, :, k].T[::-1, ::-1], (sx, sy), "RLAP", k, nz),
        ("coronal", volume[:, j, :].T[::-1, ::-1], (sx, sz), "RLSI", j, ny),
        ("sagittal", volume[i, :, :].T[::-1, ::-1], (sy, sz), "APSI", i, nx),
    ]


def _centred(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face: ImageFont.ImageFont, fill: Any) -> None:
    w, h = text_size(draw, text, face)
    draw.text((int(round(xy[0] - w / 2)), int(round(xy[1] - h / 2))), printable(text, face), fill=fill, font=face)


def _slice_picture(image: np.ndarray, size: tuple[int, int], window: tuple[float, float]) -> Image.Image:
    """A slice (values of the model's [0, 1] scale) windowed to grey levels and resized to `size` (bilinear)."""
    low, high = window
    grey = np.clip((np.asarray(image, np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0)
    return Image.fromarray(np.round(grey * 255).astype(np.uint8), "L").resize(size, Image.BILINEAR).convert("RGB")


def _draw_plane_marks(picture: Image.Image, letters: str, mm_per_px: float) -> None:
    """The orientation letters at the edges' middles and a scale bar of round millimetres (the map pictures' bar)."""
    draw = ImageDraw.Draw(picture)
    w, h = picture.size
    face = font(15, bold=True)
    for letter, xy in zip(letters, [(0.05 * w, h / 2), (0.95 * w, h / 2), (w / 2, 0.05 * h), (w / 2, 0.95 * h)]):
        _centred(draw, xy, letter, face, LETTER)
    draw_scale_bar(picture, ScaleBar(mm_per_px, SCALE_STEPS_MM, "mm", "m"))


Section = tuple[str, list[tuple[list[str], bool]]]  # a heading, then rows of cells (bold: above the threshold)


def _score_sections(doc: dict[str, Any], top: int) -> list[Section]:
    """The lines beside the slices: the top findings, then the top phenotypes."""
    threshold = doc["threshold"]
    findings = [([row["finding"].replace("_", " "), f"P = {row['probability']:.2f}", "present" if row["present"] else "absent"],
                 bool(row["present"])) for row in doc["findings"][:top]]
    phenotypes = [([row["code"], textwrap.shorten(row["name"], 28, placeholder="..."), f"P = {row['probability']:.2f}"],
                   bool(row["predicted"])) for row in doc["phenotypes"][:top]]
    n_phenotypes = len(doc["phenotypes"])
    return [(f"Findings (zero-shot; present when P > {threshold:.2f})", findings),
            (f"Phenotypes (top {min(top, n_phenotypes)} of {n_phenotypes}; predicted when P > {threshold:.2f})", phenotypes)]


def _column_starts(draw: ImageDraw.ImageDraw, rows: list[list[str]], face: ImageFont.ImageFont, gap: int) -> list[int]:
    """Where each column of a table starts: after the widest cell of the column before it (any font, monospaced or not)."""
    starts = [0]
    for column in range(max(len(r) for r in rows) - 1):
        starts.append(starts[-1] + max(text_size(draw, r[column], face)[0] for r in rows if len(r) > column) + gap)
    return starts


def prediction_image(prepared: PreparedVolume, doc: dict[str, Any], top: int = TOP_SHOWN) -> tuple[Image.Image, dict[str, Box]]:
    """The picture (RGB) and where each slice lies on it ({"axial" | "coronal" | "sagittal": box}).

    Axial, coronal and sagittal slices through the volume centre at one scale (px per mm), shown at
    W400 L40 HU with the patient's sides lettered and a scale bar; the top findings and phenotypes
    beside them (those above the threshold in bold); the model's note under them.
    """
    settings = doc["preprocessing"]["settings"]
    a_min, a_max = float(settings.get("a_min", -1000.0)), float(settings.get("a_max", 1000.0))
    window = tuple((hu - a_min) / (a_max - a_min) for hu in DISPLAY_WINDOW_HU)
    planes = display_planes(prepared.array, prepared.output_spacing_mm)
    sizes_mm = [(image.shape[1] * mm_col, image.shape[0] * mm_row) for _, image, (mm_col, mm_row), *_ in planes]
    px_per_mm = PLANE_PX / max(max(size) for size in sizes_mm)
    sizes = [(max(1, int(round(w * px_per_mm))), max(1, int(round(h * px_per_mm)))) for w, h in sizes_mm]

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_face, info_face, plane_face = font(18, bold=True), font(12), font(14)
    text_face, bold_face = font(12), font(12, bold=True)
    title = f"{doc['name']}: CT prediction with model '{Path(doc['model']['path'] or 'in memory').name}'"
    info = (f"{doc['input']['modality']}; input {'x'.join(map(str, doc['input']['shape']))} voxels of "
            f"{'x'.join(f'{s:g}' for s in doc['input']['spacing_mm'])} mm; model input "
            f"{'x'.join(map(str, doc['preprocessing']['shape']))} voxels of "
            f"{'x'.join(f'{s:g}' for s in doc['preprocessing']['spacing_mm'])} mm; shown at W400 L40 HU")
    plane_titles = [f"{name} (slice {index + 1} of {count}, centre)" for name, _, _, _, index, count in planes]
    sections = _score_sections(doc, top)
    starts = [_column_starts(probe, [cells for cells, _ in rows], bold_face, 14) if rows else [0] for _, rows in sections]  # per section
    lines = sum(1 + len(rows) for _, rows in sections) + len(sections) - 1  # a blank line between sections
    row_h = text_size(probe, "Ag", text_face)[1] + 8
    scores_w = max([12 + columns[-1] + max(text_size(probe, cells[-1], bold_face)[0] for cells, _ in rows)
                    for (_, rows), columns in zip(sections, starts) if rows]
                   + [text_size(probe, heading, bold_face)[0] for heading, _ in sections])

    plane_title_h = text_size(probe, "Ag", plane_face)[1] + 6
    columns_w = [max(size[0], text_size(probe, t, plane_face)[0]) for size, t in zip(sizes, plane_titles)]
    width = MARGIN + sum(columns_w) + GAP * len(planes) + scores_w + MARGIN
    note_lines = _wrapped(probe, doc["note"], text_face, width - 2 * MARGIN)
    title_h, info_h = text_size(probe, title, title_face)[1], text_size(probe, info, info_face)[1]
    planes_top = MARGIN + title_h + 8 + info_h + 18
    planes_bottom = planes_top + plane_title_h + max(h for _, h in sizes)
    height = max(planes_bottom, planes_top + row_h * lines) + 20 + row_h * len(note_lines) + MARGIN

    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), printable(title, title_face), fill=BLACK, font=title_face)
    draw.text((MARGIN, MARGIN + title_h + 8), printable(info, info_face), fill=DIM, font=info_face)
    boxes: dict[str, Box] = {}
    x = MARGIN
    for (name, image, _, letters, _, _), size, plane_title, column_w in zip(planes, sizes, plane_titles, columns_w):
        _centred(draw, (x + column_w / 2, planes_top + plane_title_h / 2), plane_title, plane_face, BLACK)
        picture = _slice_picture(image, size, window)
        _draw_plane_marks(picture, letters, 1 / px_per_mm)
        left, top_px = x + (column_w - size[0]) // 2, planes_top + plane_title_h
        canvas.paste(picture, (left, top_px))
        boxes[name] = (left, top_px, left + size[0], top_px + size[1])
        x += column_w + GAP
    y = planes_top
    for (heading, rows), columns in zip(sections, starts):
        draw.text((x, y), printable(heading, bold_face), fill=BLACK, font=bold_face)
        for cells, bold in rows:
            y += row_h
            face = bold_face if bold else text_face
            for cell, start in zip(cells, columns):
                draw.text((x + 12 + start, y), printable(cell, face), fill=BLACK, font=face)
        y += 2 * row_h  # and a blank line
    y = height - MARGIN - row_h * len(note_lines)
    for line in note_lines:
        draw.text((MARGIN, y), printable(line, text_face), fill=NOTE, font=text_face)
        y += row_h
    return canvas, boxes


def _wrapped(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.ImageFont, width: int) -> list[str]:
    """`text` in lines of at most `width` px (words kept whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(draw, f"{lines[-1]} {word}", face)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _palette() -> np.ndarray:
    """The picture's 256 colours (256 x 3): its text colours, their blends with the background their edges are smoothed into, and greys.

    The slices are grey: a palette fitted to the picture (PIL's octree) banded them and tinted a few
    greys yellow; 230 evenly spaced greys are within half a grey level of any.
    """
    blends = [tuple(round(c + (b - c) * t) for c, b in zip(colour, background)) for colour, background in ((NOTE, WHITE), (LETTER, BLACK))
              for t in np.linspace(0, 1, 10)[1:-1]]
    colours = list(dict.fromkeys([BLACK, WHITE, LETTER, NOTE, DIM, *blends]))
    greys = [(v, v, v) for v in np.round(np.linspace(0, 255, 256 - len(colours))).astype(int).tolist()]
    return np.array(colours + greys, np.int32)


PALETTE = _palette()


def _nearest(colours: np.ndarray) -> np.ndarray:
    """The index of the PALETTE colour nearest to each of `colours` (n x 3; squared RGB distance, the first on a tie)."""
    return ((colours[:, None, :].astype(np.int32) - PALETTE[None]) ** 2).sum(axis=2).argmin(axis=1).astype(np.uint8)


_GREY_INDEX = _nearest(np.repeat(np.arange(256)[:, None], 3, axis=1))  # grey level -> its palette index


def palette_indices(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's nearest PALETTE colour (H x W uint8), exactly: greys by a table, the few coloured pixels (text) one by one.

    PIL's quantize to a given palette looks colours up at reduced precision: the white background came out grey 252.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    indices = _GREY_INDEX[r]
    coloured = np.flatnonzero((r != g) | (g != b))
    if len(coloured):
        unique, inverse = np.unique(rgb.reshape(-1, 3)[coloured], axis=0, return_inverse=True)
        indices.ravel()[coloured] = _nearest(unique)[inverse.ravel()]
    return indices


def render_prediction(prepared: PreparedVolume, doc: dict[str, Any], top: int = TOP_SHOWN) -> bytes:
    """`prediction_image` as PNG bytes in the 256 colours of `PALETTE` (nearest colour, no dithering): a third of the RGB file's size."""
    image, _ = prediction_image(prepared, doc, top)
    return indexed_png(palette_indices(np.asarray(image)), PALETTE.astype(np.uint8).ravel().tolist())
