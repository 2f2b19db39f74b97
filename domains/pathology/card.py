"""Model-card facts for histopathology."""
from __future__ import annotations

SOURCES = (
    "Lecture videos with transcripts given with --videos (the demo: procedural H&E lectures with WebVTT narration)",
    "Whole-slide images with a slide caption CSV given with --slides / --slide-captions",
)
LICENCES = ("The licences of the videos, transcripts and slides you curate; check the platform terms for lecture videos",)
LIMITATIONS = (
    "Transcript-derived captions are noisy: narration may describe a frame before or after it is shown.",
    "Whole-slide tiles inherit the slide's caption (weak supervision): not every tile shows what the caption says.",
    "The demo model is tiny and trained on synthetic data; its numbers show the pipeline works, not diagnostic accuracy.",
)
