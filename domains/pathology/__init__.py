"""Histopathology: narrated lecture videos (Quilt-1M's method) and captioned whole-slide images."""
from __future__ import annotations

from domains.pathology.curate import curate_command
from domains.pathology.demo_data import write_demo_data
from pipelines.domain import Domain

# Zero-shot classes of the demo's held-out patch set, in label order (cls = index).
CLASSNAMES = ("adipose tissue", "lymphocytes", "mucus", "stroma", "adenocarcinoma")

# Prompt templates for zero-shot patch classification, in the style of PLIP/QuiltNet prompts.
TEMPLATES = (
    "a histopathology image of {c}.",
    "an H&E stained image of {c}.",
    "a microscopy image showing {c}.",
    "histopathology of {c}.",
    "{c} in an H&E image.",
)

DOMAIN = Domain(
    name="pathology",
    classnames=CLASSNAMES,
    templates=TEMPLATES,
    curate_command=curate_command,
    write_demo_data=write_demo_data,
    modality="image",
    description="Histopathology frames of narrated lecture videos aligned with cleaned transcripts, and whole-slide image tiles with slide captions.",
    card_notes={
        "sources": (
            "Lecture videos with transcripts given with --videos (the demo: procedural H&E lectures with WebVTT narration)",
            "Whole-slide images with a slide caption CSV given with --slides / --slide-captions",
        ),
        "licences": ("The licences of the videos, transcripts and slides you curate; check the platform terms for lecture videos",),
        "limitations": (
            "Transcript-derived captions are noisy: narration may describe a frame before or after it is shown.",
            "Whole-slide tiles inherit the slide's caption (weak supervision): not every tile shows what the caption says.",
            "The demo model is tiny and trained on synthetic data; its numbers show the pipeline works, not diagnostic accuracy.",
        ),
    },
)
