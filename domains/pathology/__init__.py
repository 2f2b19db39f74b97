"""Histopathology: narrated lecture videos (Quilt-1M's method) and captioned whole-slide images."""
from pipelines.domain import Domain

DOMAIN = Domain(
    name="pathology",
    description=(
        "Histopathology frames of narrated lecture videos aligned with cleaned transcripts, "
        "and whole-slide image tiles with slide captions."
    ),
    modality="image",
)
