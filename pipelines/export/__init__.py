"""The export stage: checkpoints that stock tools load, with a model card, per model family.

- `clip`: a stock open_clip `local-dir:` folder (LoRA merged), the peft adapter, the card;
- `volume`: the 3D dual encoder's self-contained folder, its preprocessing and card.
"""
