"""Captioned images users already have (a CSV/TSV of image paths and captions, or WebDataset shards)."""
from pipelines.domain import Domain

DOMAIN = Domain(
    name="pairs",
    description="Image-caption pairs the user already has, from an open_clip-style CSV/TSV or WebDataset shards.",
    modality="image",
)
