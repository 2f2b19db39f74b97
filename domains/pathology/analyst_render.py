"""What a slide map is written as: a heatmap PNG over the slide's thumbnail and a GeoJSON that QuPath imports.

QuPath's GeoJSON (qupath-core `PathObjectTypeAdapters`): a FeatureCollection whose features have a
Polygon `geometry` in full-resolution (level-0) image pixels, origin top-left, y down, and
`properties` with `objectType` ("tile" makes lightweight tile objects; "annotation" is the default
when absent), `classification` {"name", "color": [r, g, b]} and `measurements`, an object of
measurement name -> number (the list-of-{name, value} form is QuPath < 0.4's). `isLocked` is only
written by QuPath when true and only matters for annotations, so tiles leave it out.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image

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


def heatmap_png(thumbnail: np.ndarray, dimensions: tuple[int, int], xs: np.ndarray, ys: np.ndarray, size0: float,
                classnames: Sequence[str], probabilities: np.ndarray, title: str, slide_mpp: float, show: str = "argmax") -> bytes:
    """The tiles' classes (or one class's probability) over the slide thumbnail, with a legend and a scale bar, as PNG bytes.

    `show="argmax"` colours each tile by its most probable class, more opaque the more confident;
    a class name shows that class's probability on a colour scale with a colour bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    # Drawn at the size it is shown: matplotlib resampling a 2048 px thumbnail costs seconds.
    shown = Image.fromarray(thumbnail)
    shown.thumbnail((DISPLAY_PX, DISPLAY_PX), Image.LANCZOS)
    thumbnail = np.asarray(shown)
    height, width = thumbnail.shape[:2]
    scale = width / dimensions[0]  # thumbnail px per level-0 px
    overlay = np.zeros((height, width, 4), np.float32)
    n_classes = len(classnames)
    colours = np.asarray(class_colours(n_classes), np.float32) / 255
    if show == "argmax":
        best = probabilities.argmax(axis=1)
        confidence = (probabilities.max(axis=1) - 1 / n_classes) / max(1e-6, 1 - 1 / n_classes)
        rgba = np.concatenate([colours[best], (0.25 + 0.4 * confidence)[:, None]], axis=1)
    else:
        cmap = plt.get_cmap("inferno")
        p = probabilities[:, list(classnames).index(show)]
        rgba = np.asarray(cmap(p), np.float32)
        rgba[:, 3] = 0.65
    for x, y, colour in zip(xs, ys, rgba):
        c0, r0 = int(round(x * scale)), int(round(y * scale))
        c1, r1 = int(round((x + size0) * scale)), int(round((y + size0) * scale))
        overlay[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = colour

    fig_w = 7.5
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * height / width * 0.92 + 0.9), dpi=100)
    ax.imshow(thumbnail, interpolation="nearest")
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    _scale_bar(ax, width, height, slide_mpp / scale)
    if show == "argmax":
        counts = np.bincount(probabilities.argmax(axis=1), minlength=n_classes) if len(probabilities) else np.zeros(n_classes, int)
        handles = [Patch(facecolor=colours[i], edgecolor="none", label=f"{name} ({counts[i]})") for i, name in enumerate(classnames)]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(3, n_classes), fontsize=8,
                  frameon=False, title="most probable class (tiles); opacity = confidence", title_fontsize=8)
    else:
        mappable = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="inferno")
        bar = fig.colorbar(mappable, ax=ax, orientation="horizontal", fraction=0.04, pad=0.02)
        bar.set_label(f"probability of {show}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fixed = [(0, 0, 0), (255, 255, 255), *class_colours(n_classes)]
    return palette_png(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), fixed)


def _scale_bar(ax: Any, width: int, height: int, um_per_px: float) -> None:
    """A bar of a round length (um or mm) in the lower left corner."""
    target = width * 0.2 * um_per_px
    length = max(v for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000) if v <= max(target, 10))
    px = length / um_per_px
    x0, y0 = width * 0.04, height * 0.95
    ax.plot([x0, x0 + px], [y0, y0], color="black", linewidth=3, solid_capstyle="butt")
    label = f"{length // 1000} mm" if length >= 1000 else f"{length} µm"
    ax.text(x0 + px / 2, y0 - height * 0.015, label, ha="center", va="bottom", fontsize=8, color="black",
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
