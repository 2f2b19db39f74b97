"""The pretrain stage: the demo's generic base model, the stand-in for downloaded CLIP weights.

`synthetic_corpus` writes an out-of-domain corpus (shapes, colours, textures); `pretrain` trains the
tiny open_clip model on it with the one training loop and saves it in open_clip's local-dir format.
"""
