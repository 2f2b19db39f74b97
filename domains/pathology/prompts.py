"""Zero-shot defaults for histopathology (params `pathology.evaluate` overrides them)."""
from __future__ import annotations

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
