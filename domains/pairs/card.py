"""Model-card facts for captioned images."""
from __future__ import annotations

SOURCES = ("An image-caption table (open_clip's filepath/title columns) or WebDataset shards given to `domainfm curate pairs`",)
LICENCES = ("The licences of the images and captions you curate",)
LIMITATIONS = ("The model learns what the captions say: caption quality bounds what it can recognise.",)
