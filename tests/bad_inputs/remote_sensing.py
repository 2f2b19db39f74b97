"""Bad remote-sensing inputs: rasters and OpenStreetMap files as users have them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bad_inputs import Case
from bad_inputs.files import good_raster, write_geojson, write_raster

PARAMS = {"tile_size": 32, "target_gsd_m": 2.0, "max_shift_fraction": 0.1, "block_size_m": 128.0}


def _truncated_raster(folder: Path) -> list[str]:
    good = good_raster(folder / "good.tif")
    raw = good_raster(folder / "whole.tif", seed=2).read_bytes()
    (folder / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    (folder / "whole.tif").unlink()
    return ["--raster", str(good), "--raster", str(folder / "truncated.tif"), "--osm", str(write_geojson(folder / "map.geojson"))]


def _no_crs(folder: Path) -> list[str]:
    nocrs = write_raster(folder / "nocrs.tif", np.full((3, 192, 192), 100, np.uint8), crs=None)
    return ["--raster", str(good_raster(folder / "good.tif")), "--raster", str(nocrs), "--osm", str(write_geojson(folder / "map.geojson"))]


CASES = [
    Case("rs-truncated-raster", "remote_sensing", _truncated_raster, bad="truncated.tif", reason=r"corrupt|truncat|unreadable",
         good=["good.tif"], params=PARAMS),
    Case("rs-raster-without-crs", "remote_sensing", _no_crs, bad="nocrs.tif", reason=r"CRS", good=["good.tif"], params=PARAMS),
]
