"""Contact sheets: the best matches of a search side by side, with their rank and score."""
from __future__ import annotations

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
