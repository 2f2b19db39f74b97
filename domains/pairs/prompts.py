"""Zero-shot defaults for captioned images.

Class names come from params (`pairs.evaluate.classnames`) or the zero-shot set's classnames.txt,
since only the user knows them.
"""
from __future__ import annotations

CLASSNAMES: tuple[str, ...] = ()
TEMPLATES = ("a photo of {c}.", "a picture of {c}.", "an image of {c}.")
