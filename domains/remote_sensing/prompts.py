"""Zero-shot defaults for remote sensing (params `remote_sensing.evaluate` overrides them)."""
from __future__ import annotations

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
