"""Remote sensing: GeoTIFF rasters tagged through OpenStreetMap (SkyScript's method)."""
from __future__ import annotations

from domains.remote_sensing.curate import curate_command
from domains.remote_sensing.demo_data import write_demo_data
from pipelines.domain import Domain

# Zero-shot classes of the demo's held-out set, in label order (cls = index).
CLASSNAMES = (
    "water",
    "forest",
    "farmland",
    "residential area",
    "road",
    "park",
    "parking lot",
)

# Prompt templates for zero-shot classification. "{c}" is the class name. Kept plain and
# article-free so mass nouns ("water", "farmland") read naturally; see README "Prompts".
TEMPLATES = (
    "a satellite image of {c}.",
    "an aerial image of {c}.",
    "an overhead view of {c}.",
    "a remote sensing image of {c}.",
    "{c} seen from above.",
)


DOMAIN = Domain(
    name="remote_sensing",
    classnames=CLASSNAMES,
    templates=TEMPLATES,
    curate_command=curate_command,
    write_demo_data=write_demo_data,
    modality="image",
    description="Satellite and aerial image tiles captioned from OpenStreetMap tags visible at the tile's resolution.",
    card_notes={
        "sources": (
            "GeoTIFF/COG rasters given with --raster (the demo: a procedural landscape, EPSG:32631)",
            "OpenStreetMap features given with --osm, captioned through domains/remote_sensing/visible_tags.csv",
        ),
        "licences": (
            "OpenStreetMap data: (c) OpenStreetMap contributors, ODbL 1.0; models trained on it are produced works",
            "Rasters: the licence of the imagery you curate",
        ),
        "limitations": (
            "Captions only name what OSM maps: unmapped objects are silent negatives, and OSM completeness varies by region.",
            "Tag visibility thresholds (max GSD per tag) are judgement calls; check them for your sensor.",
            "The demo model is tiny and trained on synthetic data; its numbers show the pipeline works, not real-world accuracy.",
        ),
    },
)
