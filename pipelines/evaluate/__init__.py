"""The evaluate stage: zero-shot and retrieval scores of base and adapted models, per model family.

- `clip`: open_clip models (CLIP_benchmark's zero-shot classification and retrieval);
- `volume`: the 3D dual encoder (phenotype AUROC, zero-shot findings F1, report retrieval);
- `metrics`, `zero_shot`: the shared metric and classifier code.
- `clip_benchmark`: the scored test sets written in CLIP_benchmark's WebDataset layout, and its CLI with a numpy fix.
"""
