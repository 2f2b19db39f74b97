"""Model families and how they are built, adapted, saved and loaded.

- `clip`: open_clip CLIP/SigLIP models by name, `local-dir:` folders or local checkpoints.
- `adapt`: LoRA (peft), full fine-tuning or frozen towers on an open_clip model.
- `volume`: the 3D dual encoder (Merlin's design: inflated 3D ResNet, report encoder,
  phenotype and contrastive heads) with its report tokenizer in `report_text`.
- `weights`: building a model without drawing the random weights a checkpoint then replaces.
"""
