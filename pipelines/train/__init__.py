"""The train stage: one loop (`loop.fit`) and one task per model family.

- `ClipTask` (clip_task.py): open_clip CLIP/SigLIP models, adapted per pipelines/models/adapt.py;
- `VolumeTask` (volume_task.py): the 3D dual encoder with staged or multi-task phenotype losses.

`run` picks the task from the domain's modality and its params, then calls the loop.
"""
