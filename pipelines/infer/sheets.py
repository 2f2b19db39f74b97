"""Contact sheets: the best matches of a search side by side, with their rank and score."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipelines.io.atomic import atomic_write_bytes


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], path: Path, cell: int = 160, columns: int = 5,
                  title: str = "") -> Path:
    """A PNG grid of RGB images, each with its label under it."""
    rows = max(1, -(-len(images) // columns))
    top = 24 if title else 0
    sheet = Image.new("RGB", (columns * cell, top + rows * (cell + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 5), title, fill="black")
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell, top + (i // columns) * (cell + 18)
        tile = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
        tile.thumbnail((cell - 6, cell - 6))
        sheet.paste(tile, (x + 3 + (cell - 6 - tile.width) // 2, y + 3 + (cell - 6 - tile.height) // 2))
        draw.text((x + 4, y + cell), label[: cell // 6], fill="black")
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def palette_png(image: Image.Image, fixed: Sequence[tuple[int, int, int]]) -> bytes:
    """PNG bytes of `image` in 256 colours: the `fixed` ones exactly (legend, text), the rest fitted to the image.

    A photo-like map or heatmap in full RGB is megabytes; a palette without dithering keeps it at a
    few hundred KB with no visible loss, and the legend's swatches keep their exact colours. The
    palette is fitted by PIL's fast octree: on the quick-looks and heatmaps about 30 times faster
    than median cut (3 ms instead of 90 ms for 800 px) and closer to the figure (mean error 2.6
    instead of 3.1 levels, largest 37-47 instead of 55-72).
    """
    fixed = list(dict.fromkeys(tuple(c) for c in fixed))[:128]
    fitted = image.quantize(colors=256 - len(fixed), method=Image.Quantize.FASTOCTREE).getpalette()[: 3 * (256 - len(fixed))]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for colour in fixed for v in colour] + fitted)
    out = io.BytesIO()
    # zlib level 3: 6 % larger than the default 6 for less than half its time (10 ms instead of 25 ms for 800 px);
    # optimize=True: 1 % smaller for 50 % more time
    image.quantize(palette=palette, dither=Image.Dither.NONE).save(out, format="PNG", compress_level=3)
    return out.getvalue()
