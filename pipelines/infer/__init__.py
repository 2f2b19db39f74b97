"""Running exported models on users' own files: the machinery behind the analyst commands.

- `device`: the best device and precision (CUDA with bf16 autocast when present, else the CPU);
- `onednn`: fp32 inference on an AMD CPU through oneDNN's kernels (MKL takes its AVX2 path there);
- `clip`: an exported open_clip model as an encoder of images and texts, with zero-shot scores;
- `stream`: windows read ahead by reader threads, batched through the model, with a progress bar;
- `text`: texts embedded in batches of like length, each up to its last EOT token (evaluation and the quality filter too);
- `cache`: embeddings kept per (model, input, tiling) so a second query is instant;
- `sheets`: contact sheets of the best matches.

The domains' analyst commands (`domainfm map/search/predict <domain>`) wrap these one to one.
"""
