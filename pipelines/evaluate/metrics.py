"""Zero-shot classification and image-text retrieval metrics, with CLIP_benchmark's key names.

Both functions take scores or embeddings already computed; they never touch a model, so they can
be checked exactly on hand-made tensors. Embeddings are expected L2-normalized (scores are plain
dot products).
"""
from __future__ import annotations

from typing import Sequence

import torch

RETRIEVAL_KS = (1, 5, 10)  # recall@k reported by default (mean_recall averages them, both ways)


def zero_shot_metrics(logits: torch.Tensor, labels: torch.Tensor | Sequence[int], classnames: Sequence[str]) -> dict:
    """acc1, acc5, mean_per_class_recall (balanced accuracy), per-class accuracy and confusion.

    acc5 uses k = min(5, n_classes). mean_per_class_recall averages recall over the classes that
    occur in `labels` (as sklearn's balanced_accuracy_score, which CLIP_benchmark uses); classes
    without samples get accuracy None in `per_class`. Confusion rows are actual, columns predicted.
    """
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    n_classes = len(classnames)
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise ValueError(f"logits must be [n_samples, {n_classes}], got {tuple(logits.shape)}")
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows but {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ValueError("zero-shot metrics need at least one sample")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{int(labels.min())}, {int(labels.max())}]")

    k5 = min(5, n_classes)
    top = logits.topk(k5, dim=1).indices  # [N, k5], best first
    pred = top[:, 0]
    n = labels.numel()  # counts / n in Python floats: no float32 noise in the JSON
    acc1 = (pred == labels).sum().item() / n
    acc5 = (top == labels[:, None]).any(dim=1).sum().item() / n

    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(dim=1)
    correct = confusion.diag()
    per_class: dict[str, float | None] = {}
    recalls = []
    for i, name in enumerate(classnames):
        if support[i] > 0:
            recall = correct[i].item() / support[i].item()
            per_class[name] = recall
            recalls.append(recall)
        else:
            per_class[name] = None
    return {
        "acc1": acc1,
        "acc5": acc5,
        "mean_per_class_recall": sum(recalls) / len(recalls),
        "per_class": per_class,
        "support": {name: int(support[i]) for i, name in enumerate(classnames)},
        "confusion_matrix": confusion.tolist(),
    }


def retrieval_hits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int],
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, torch.Tensor]:
    """Per query and k, whether a correct item is in the top k (the per-example form of recall@k).

    "text_to_image": [T, len(ks)] bool, caption t's own image among the top k images;
    "image_to_text": [I, len(ks)] bool, any of image i's captions among the top k captions. k is
    clipped to the candidate count. Top k as CLIP_benchmark takes it (torch.topk per k: with tied
    scores topk(1) need not be a prefix of topk(5), so each k is taken as the metric takes it), so the
    mean of a column is exactly that recall@k, ties included, and a resample of the queries scores
    as the metric would.
    """
    image_emb = torch.as_tensor(image_emb).float()
    text_emb = torch.as_tensor(text_emb).float()
    owner = torch.as_tensor(list(text_to_image), dtype=torch.long)
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    if owner.numel() != n_texts:
        raise ValueError(f"text_to_image has {owner.numel()} entries for {n_texts} texts")
    if n_images == 0 or n_texts == 0:
        raise ValueError("retrieval metrics need at least one image and one text")
    if owner.min() < 0 or owner.max() >= n_images:
        raise ValueError(f"text_to_image entries must lie in [0, {n_images})")
    captioned = torch.zeros(n_images, dtype=torch.bool)
    captioned[owner] = True
    if not captioned.all():
        raise ValueError(f"{int((~captioned).sum())} image(s) have no caption; drop them before scoring")
    if any(k < 1 for k in ks):
        raise ValueError(f"recall@k needs k >= 1, got {list(ks)}")

    scores = text_emb @ image_emb.T  # [T, I]
    # positive[t, i]: caption t belongs to image i
    positive = torch.zeros(n_texts, n_images, dtype=torch.bool)
    positive[torch.arange(n_texts), owner] = True
    text_hits = [positive.gather(1, scores.topk(min(k, n_images), dim=1).indices).any(dim=1) for k in ks]
    image_hits = [positive.T.gather(1, scores.T.topk(min(k, n_texts), dim=1).indices).any(dim=1) for k in ks]
    return {"text_to_image": torch.stack(text_hits, dim=1), "image_to_text": torch.stack(image_hits, dim=1)}


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int],
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, float]:
    """Recall@k both ways; every image may own several captions.

    image_retrieval_recall@k (text -> image): share of captions whose own image is in the top k
    images. text_retrieval_recall@k (image -> text): share of images with *any* of their captions
    in the top k captions. k is clipped to the candidate count (the key keeps the asked-for k).
    Top k as CLIP_benchmark takes it (torch.topk), so `clip_benchmark eval` on the exported sets gives
    these numbers; ties (captions shared word for word by several images) fall as topk orders them.
    mean_recall is the mean of all recall values. The per-query hits are `retrieval_hits`.
    """
    hits = retrieval_hits(image_emb, text_emb, text_to_image, ks)
    out: dict[str, float] = {}
    for j, k in enumerate(ks):
        out[f"image_retrieval_recall@{k}"] = hits["text_to_image"][:, j].sum().item() / hits["text_to_image"].shape[0]
    for j, k in enumerate(ks):
        out[f"text_retrieval_recall@{k}"] = hits["image_to_text"][:, j].sum().item() / hits["image_to_text"].shape[0]
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def retrieval_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The 1-based rank of the first correct item for every query, both ways (per-example retrieval).

    "text_to_image": one rank per caption (where its own image ranks among all images);
    "image_to_text": one rank per image (where the best-ranked of its captions ranks among all
    captions). recall@k of a direction is the share of its ranks <= k; this equals `retrieval_metrics`
    when no candidate ties a positive's score, and is the optimistic count when one does (a candidate
    scoring exactly as the positive does not push it down; topk breaks such ties in no set order). The
    scaling report resamples `retrieval_hits` where a run saved them, which agree with the metric always.
    """
    image_emb = torch.as_tensor(image_emb).float()
    text_emb = torch.as_tensor(text_emb).float()
    owner = torch.as_tensor(list(text_to_image), dtype=torch.long)
    if owner.numel() != text_emb.shape[0]:
        raise ValueError(f"text_to_image has {owner.numel()} entries for {text_emb.shape[0]} texts")
    scores = text_emb @ image_emb.T  # [T, I]
    own = scores[torch.arange(len(owner)), owner]  # each caption's score with its own image
    text_to_image_rank = (scores > own[:, None]).sum(dim=1) + 1
    # best positive score of each image among its captions, then how many captions beat it
    best = torch.full((image_emb.shape[0],), float("-inf")).scatter_reduce(0, owner, own, reduce="amax")
    image_to_text_rank = (scores.T > best[:, None]).sum(dim=1) + 1
    return {"text_to_image": text_to_image_rank, "image_to_text": image_to_text_rank}
