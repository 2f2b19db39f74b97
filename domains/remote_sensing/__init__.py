"""Remote sensing: GeoTIFF rasters tagged through OpenStreetMap (SkyScript's method)."""
from pipelines.domain import Domain

DOMAIN = Domain(
    name="remote_sensing",
    description="Satellite and aerial image tiles captioned from OpenStreetMap tags visible at the tile's resolution.",
    modality="image",
)
