"""What a slide map is written as: a heatmap PNG over the slide's thumbnail and a GeoJSON that QuPath imports.

QuPath's GeoJSON (qupath-core `PathObjectTypeAdapters`): a FeatureCollection whose features have a
Polygon `geometry` in full-resolution (level-0) image pixels, origin top-left, y down, and
`properties` with `objectType` ("tile" makes lightweight tile objects; "annotation" is the default
when absent), `classification` {"name", "color": [r, g, b]} and `measurements`, an object of
measurement name -> number (the list-of-{name, value} form is QuPath < 0.4's). `isLocked` is only
written by QuPath when true and only matters for annotations, so tiles leave it out.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from pipelines.infer import render
from pipelines.infer.sheets import palette_png

DISPLAY_PX = 800  # the slide picture's larger side, in pixels

TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """Distinct RGB colours for n classes (tab10, then evenly spaced hues)."""
    if n <= len(TAB10):
        return TAB10[:n]
    import colorsys

    return [tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(i / n, 0.75, 0.85)) for i in range(n)]


def tiles_geojson(xs: np.ndarray, ys: np.ndarray, size0: float, classnames: Sequence[str], probabilities: np.ndarray,
                  object_type: str = "tile") -> dict[str, Any]:
    """A QuPath FeatureCollection: one square polygon per tile, classified by its most probable class.

    Coordinates are level-0 pixels (QuPath's image space). Each feature's `measurements` hold
    every class's probability; `classification` is the argmax class with its map colour.
    """
    colours = class_colours(len(classnames))
    best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
    side = round(float(size0), 2)
    features = []
    for x, y, k, row in zip(xs.tolist(), ys.tolist(), best.tolist(), probabilities.tolist()):
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": object_type,
                "classification": {"name": classnames[k], "color": list(colours[k])},
                "measurements": {name: round(float(p), 6) for name, p in zip(classnames, row)},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def display_view(thumbnail: np.ndarray) -> np.ndarray:
    """The picture of the slide the heatmap is drawn on: `thumbnail` (RGB) shrunk to at most DISPLAY_PX a side.

    A picture that fits already is returned as it is (as RGB), so the heatmap drawn on a view kept
    from an earlier map (the embedding cache keeps it) is the heatmap drawn on the thumbnail.
    """
    # Drawn at the size it is shown, as the slide's thumbnail may be larger; halved first (box) while still
    # twice the display or larger: half the time of Lanczos over the whole thumbnail, a background alike.
    shown = Image.fromarray(thumbnail)
    shown.thumbnail((DISPLAY_PX, DISPLAY_PX), Image.LANCZOS, reducing_gap=1.0)
    return np.asarray(shown.convert("RGB"))


def heatmap_image(thumbnail: np.ndarray, dimensions: tuple[int, int], xs: np.ndarray, ys: np.ndarray, size0: float,
                  classnames: Sequence[str], probabilities: np.ndarray, title: str, slide_mpp: float,
                  show: str = "argmax") -> tuple[Image.Image, tuple[int, int]]:
    """The heatmap as a PIL RGB image, and where the thumbnail's top-left pixel lies on it (x, y).

    `show="argmax"` colours each tile by its most probable class, more opaque the more confident
    (0.25 at chance to 0.65 when certain); a class name shows that class's probability in
    matplotlib's inferno colours at opacity 0.65, with a colour bar.
    """
    thumbnail = display_view(thumbnail)
    height, width = thumbnail.shape[:2]
    scale = width / dimensions[0]  # thumbnail px per level-0 px
    n_classes = len(classnames)
    if show == "argmax":
        colours = np.asarray(class_colours(n_classes), np.float32)
        best = probabilities.argmax(axis=1)
        confidence = (probabilities.max(axis=1) - 1 / n_classes) / max(1e-6, 1 - 1 / n_classes)
        tile_colours, tile_alpha = colours[best], 0.25 + 0.4 * confidence
    else:
        tile_colours = render.lookup(render.INFERNO, probabilities[:, list(classnames).index(show)]).astype(np.float32)
        tile_alpha = np.full(len(probabilities), 0.65, np.float32)
    overlay = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    for x, y, colour, opacity in zip(xs, ys, tile_colours, tile_alpha):
        c0, r0 = int(round(x * scale)), int(round(y * scale))
        c1, r1 = int(round((x + size0) * scale)), int(round((y + size0) * scale))
        overlay[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = colour
        alpha[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = opacity
    blended = render.blend(thumbnail, overlay, alpha)
    bar = render.ScaleBar(slide_mpp / scale, (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000), "µm", "mm", halo=False)
    if show == "argmax":
        counts = np.bincount(probabilities.argmax(axis=1), minlength=n_classes) if len(probabilities) else np.zeros(n_classes, int)
        legend = [(colour, f"{name} ({counts[i]})") for i, (name, colour) in enumerate(zip(classnames, class_colours(n_classes)))]
        return render.figure(blended, title, legend, "most probable class (tiles); opacity = confidence",
                             columns=min(3, n_classes), scale_bar=bar)
    return render.figure(blended, title, scale_bar=bar, colour_bar=(render.INFERNO, f"probability of {show}"))


def heatmap_png(thumbnail: np.ndarray, dimensions: tuple[int, int], xs: np.ndarray, ys: np.ndarray, size0: float,
                classnames: Sequence[str], probabilities: np.ndarray, title: str, slide_mpp: float, show: str = "argmax") -> bytes:
    """The tiles' classes (or one class's probability) over the slide thumbnail, with a legend and a scale bar, as PNG bytes.

    `show="argmax"` colours each tile by its most probable class, more opaque the more confident;
    a class name shows that class's probability on a colour scale with a colour bar.
    """
    image, _ = heatmap_image(thumbnail, dimensions, xs, ys, size0, classnames, probabilities, title, slide_mpp, show)
    return palette_png(image, [(0, 0, 0), (255, 255, 255), *class_colours(len(classnames))])
