"""Model-card facts for remote sensing."""
from __future__ import annotations

SOURCES = (
    "GeoTIFF/COG rasters given with --raster (the demo: a procedural landscape, EPSG:32631)",
    "OpenStreetMap features given with --osm, captioned through domains/remote_sensing/curation/visible_tags.csv",
)
LICENCES = (
    "OpenStreetMap data: (c) OpenStreetMap contributors, ODbL 1.0; models trained on it are produced works",
    "Rasters: the licence of the imagery you curate",
)
LIMITATIONS = (
    "Captions only name what OSM maps: unmapped objects are silent negatives, and OSM completeness varies by region.",
    "Tag visibility thresholds (max GSD per tag) are judgement calls; check them for your sensor.",
    "The demo model is tiny and trained on synthetic data; its numbers show the pipeline works, not real-world accuracy.",
)
