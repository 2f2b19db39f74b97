"""Hubness in cross-modal retrieval, and the corrections that reduce it after training.

In high-dimensional embedding spaces a few gallery items ("hubs") are the nearest neighbours of
many queries. We measure it with the k-occurrence N_k(g), the number of queries whose top k
contain gallery item g: its skewness (Radovanovic et al., 2010) and the share of gallery items no
query retrieves.

Corrections, implemented from the papers' formulas (the reference code has known bugs: DBNorm's
`db_norm` normalises the gallery bank's own similarities instead of the test queries', and
QB-Norm's `qb_norm` writes into its input):

- QB-Norm (Bogolin et al., CVPR 2022), with a query bank B of training queries:
  Inverted Softmax  IS(q, g) = exp(b * s(q, g)) / sum_{q' in B} exp(b * s(q', g));
  Dynamic IS (DIS): IS for a query whose top-1 gallery item is in the activation set (gallery
  items in the top-k of some bank query), the raw similarity otherwise.
- DBNorm (Wang et al., EMNLP 2023), with a query bank B_q and a gallery bank B_g (training
  gallery items, the gallery's modality):
  Dual IS  DIS2(q, g) = exp(b1 s(q,g)) / sum_{q' in B_q} exp(b1 s(q',g)) * exp(b2 s(q,g)) / sum_{h in B_g} exp(b2 s(h,g));
  Dual dynamic IS: the dual normalisation for a query whose top-1 item is in the union of both
  banks' activation sets, the raw similarity otherwise. (The paper leaves the union implicit; we
  state it here.)

Scores are computed in log space (a ranking within a query row is all retrieval needs), so large
b does not overflow. Every function takes L2-normalised embeddings or a similarity matrix whose
rows are queries and columns gallery items.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from pipelines.infer.hubness import Correction  # the rankings a search offers, defined where no torch is needed

CORRECTIONS: dict[str, Correction] = {"plain": "none", "qb_norm": "qb_norm", "db_norm": "db_norm"}  # report name -> correction
UNIFORMITY_MAX_ITEMS = 2048  # uniformity is quadratic in the items: a larger set is subsampled (seeded)


@dataclass
class HubnessConfig:
    """params.yaml `<domain>.evaluate.hubness`: hubness, its corrections and the modality gap on the retrieval set.

    The banks are `bank_size` image-caption pairs drawn (seeded) from the curated train split: the
    query bank is of the queries' modality, the gallery bank of the gallery's, in each direction.
    """

    enabled: bool = True
    bank_size: int = 1024  # train pairs in the banks; 0: no banks, and the corrected scores are the plain ones
    beta: float = 20.0  # inverse temperature of QB-Norm and of DBNorm's query-bank term (QB-Norm's setting for CLIP-like models)
    beta_gallery: Optional[float] = None  # DBNorm's gallery-bank term; None: beta
    k: int = 10  # the k of the k-occurrence N_k (and of the never-retrieved share)
    seed: int = 0  # which train pairs form the banks, and the subsample for uniformity

    def __post_init__(self) -> None:
        if self.bank_size < 0:
            raise ValueError(f"bank_size must be >= 0, got {self.bank_size}")
        if self.beta <= 0 or (self.beta_gallery is not None and self.beta_gallery <= 0):
            raise ValueError("beta and beta_gallery must be > 0")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


def k_occurrence(similarity: np.ndarray, k: int = 10) -> np.ndarray:
    """N_k per gallery item: in how many queries' top k it appears (similarity: queries x gallery)."""
    sim = torch.as_tensor(np.asarray(similarity, np.float32))
    k = min(k, sim.shape[1])
    top = sim.topk(k, dim=1).indices.reshape(-1)
    return np.bincount(top.numpy(), minlength=sim.shape[1])


def hubness(similarity: np.ndarray, k: int = 10) -> dict[str, float]:
    """Skewness of N_k (0 for a symmetric spread; hubs make it large and positive) and the share of gallery items never retrieved."""
    counts = k_occurrence(similarity, k).astype(np.float64)
    centred = counts - counts.mean()
    sd = np.sqrt((centred**2).mean())
    skew = float((centred**3).mean() / sd**3) if sd > 0 else 0.0
    return {f"n{k}_skewness": skew, f"never_in_top{k}": float((counts == 0).mean())}


def _log_inverted_softmax(sim: torch.Tensor, bank_sim: torch.Tensor, beta: float) -> torch.Tensor:
    """Log IS: beta * s(q, g) - logsumexp over the bank of beta * s(b, g) (bank_sim: bank x gallery)."""
    return beta * sim - torch.logsumexp(beta * bank_sim, dim=0, keepdim=True)


def _activation_set(bank_sim: torch.Tensor, k: int) -> torch.Tensor:
    """Bool per gallery item: in the top k of some bank query."""
    active = torch.zeros(bank_sim.shape[1], dtype=torch.bool)
    active[bank_sim.topk(min(k, bank_sim.shape[1]), dim=1).indices.reshape(-1)] = True
    return active


def _dynamic(raw: torch.Tensor, normalised: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Rows whose top-1 item is active take the normalised scores, the others keep the raw ones."""
    use = active[raw.argmax(dim=1)]
    return torch.where(use[:, None], normalised, raw)


def qb_norm(sim: np.ndarray, query_bank_sim: np.ndarray, beta: float = 20.0, k: int = 1, dynamic: bool = True) -> np.ndarray:
    """QB-Norm scores for test queries (sim: queries x gallery; query_bank_sim: bank queries x gallery)."""
    raw = torch.as_tensor(np.asarray(sim, np.float64))
    bank = torch.as_tensor(np.asarray(query_bank_sim, np.float64))
    normalised = _log_inverted_softmax(raw, bank, beta)
    if dynamic:
        normalised = _dynamic(raw, normalised, _activation_set(bank, k))
    return normalised.numpy()


def db_norm(sim: np.ndarray, query_bank_sim: np.ndarray, gallery_bank_sim: np.ndarray, beta_query: float = 1 / 1.99,
            beta_gallery: float = 3.0, k: int = 1, dynamic: bool = True) -> np.ndarray:
    """DBNorm scores (gallery_bank_sim: gallery-bank items x gallery, both of the gallery's modality)."""
    raw = torch.as_tensor(np.asarray(sim, np.float64))
    qbank = torch.as_tensor(np.asarray(query_bank_sim, np.float64))
    gbank = torch.as_tensor(np.asarray(gallery_bank_sim, np.float64))
    normalised = _log_inverted_softmax(raw, qbank, beta_query) + _log_inverted_softmax(raw, gbank, beta_gallery)
    if dynamic:
        normalised = _dynamic(raw, normalised, _activation_set(qbank, k) | _activation_set(gbank, k))
    return normalised.numpy()


def corrected_scores(correction: Correction, queries: np.ndarray, gallery: np.ndarray, banks_query: np.ndarray | None,
                     banks_gallery: np.ndarray | None, beta: float, beta_gallery: float, k: int = 1) -> np.ndarray:
    """Query x gallery scores under a correction; the banks hold training items of the queries' and the gallery's modality."""
    sim = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
    if correction == "none":
        return sim
    if banks_query is None or len(banks_query) == 0:
        raise ValueError(f"{correction} needs a query bank (training items of the query modality)")
    qsim = np.asarray(banks_query, np.float32) @ np.asarray(gallery, np.float32).T
    if correction == "qb_norm":
        return qb_norm(sim, qsim, beta=beta, k=k)
    if banks_gallery is None or len(banks_gallery) == 0:
        raise ValueError("db_norm needs a gallery bank (training items of the gallery modality)")
    gsim = np.asarray(banks_gallery, np.float32) @ np.asarray(gallery, np.float32).T
    return db_norm(sim, qsim, gsim, beta_query=beta, beta_gallery=beta_gallery, k=k)


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> dict[str, float]:
    """The gap between the modalities' centroids (Liang et al., 2022) and alignment/uniformity (Wang & Isola, 2020).

    gap: L2 distance between the mean image and the mean text embedding. alignment: mean squared
    distance of matched pairs (rows of equal index; lower is better). uniformity: log of the mean
    of exp(-2 * squared distance) over pairs of distinct items, per modality (lower is more uniform).
    """
    img, txt = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
    out = {"gap": float(np.linalg.norm(img.mean(0) - txt.mean(0)))}
    if len(img) == len(txt):
        out["alignment"] = float(((img - txt) ** 2).sum(1).mean())

    def uniformity(x: np.ndarray) -> float:
        sq = np.maximum((x**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2 * x @ x.T, 0)
        off = ~np.eye(len(x), dtype=bool)
        return float(np.log(np.exp(-2 * sq[off]).mean())) if off.any() else float("nan")

    out["uniformity_image"], out["uniformity_text"] = uniformity(img), uniformity(txt)
    return out


# ---------------------------------------------------------------- on a retrieval set


def recall_at_k(scores: np.ndarray, positive: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Share of queries (rows of `scores`) with a positive gallery item (True in `positive`) among their top k.

    k is clipped to the gallery size; the key keeps the asked-for k (as metrics.retrieval_metrics does).
    """
    scores_t = torch.as_tensor(np.asarray(scores, np.float64))
    positive_t = torch.as_tensor(np.asarray(positive, bool))
    out = {}
    for k in ks:
        top = scores_t.topk(min(k, scores_t.shape[1]), dim=1).indices
        out[f"recall@{k}"] = positive_t.gather(1, top).any(dim=1).sum().item() / scores_t.shape[0]
    return out


def _direction(queries: np.ndarray, gallery: np.ndarray, positive: np.ndarray, query_bank: np.ndarray, gallery_bank: np.ndarray,
               cfg: HubnessConfig) -> dict[str, dict[str, float]]:
    """Hubness and recall of one retrieval direction, plain and under each correction."""
    out = {}
    beta_gallery = cfg.beta if cfg.beta_gallery is None else cfg.beta_gallery
    for name, correction in CORRECTIONS.items():
        if correction != "none" and len(query_bank) == 0:
            correction = "none"  # no bank, nothing to normalise by: the corrected scores are the plain ones
        scores = corrected_scores(correction, queries, gallery, query_bank, gallery_bank, cfg.beta, beta_gallery)
        stats = hubness(scores, cfg.k)
        out[name] = {f"n{cfg.k}_skewness": stats[f"n{cfg.k}_skewness"], f"never_in_top{cfg.k}": stats[f"never_in_top{cfg.k}"],
                     **recall_at_k(scores, positive)}
    return out


def retrieval_hubness(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: Sequence[int], bank_images: np.ndarray,
                      bank_texts: np.ndarray, cfg: HubnessConfig) -> dict[str, Any]:
    """Hubness, recall with and without QB-Norm/DBNorm, and the modality gap of one model on a retrieval set.

    image_emb, text_emb: the set's L2-normalised embeddings, caption t belonging to image
    text_to_image[t]; bank_images, bank_texts: embeddings of the train pairs drawn for the banks
    (may be empty). text_to_image: text queries, image gallery, query bank = bank_texts, gallery bank
    = bank_images; image_to_text the reverse, an image's positives being all its captions.

    modality_gap: gap and alignment over the set's (image, caption) pairs, an image counted once per
    caption; uniformity per modality over the distinct items (at most UNIFORMITY_MAX_ITEMS, seeded).
    """
    img, txt = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    owner = np.asarray(list(text_to_image), dtype=np.int64)
    dim = img.shape[1]
    qimg = np.asarray(bank_images, np.float32).reshape(-1, dim)
    qtxt = np.asarray(bank_texts, np.float32).reshape(-1, dim)
    positive = np.zeros((len(txt), len(img)), dtype=bool)
    positive[np.arange(len(txt)), owner] = True

    gap = modality_gap(img[owner], txt)
    rng = np.random.default_rng(cfg.seed)

    def subsample(x: np.ndarray) -> np.ndarray:
        return x if len(x) <= UNIFORMITY_MAX_ITEMS else x[np.sort(rng.choice(len(x), UNIFORMITY_MAX_ITEMS, replace=False))]

    distinct = modality_gap(subsample(img), subsample(txt))
    return {
        "text_to_image": _direction(txt, img, positive, qtxt, qimg, cfg),
        "image_to_text": _direction(img, txt, positive.T, qimg, qtxt, cfg),
        "modality_gap": {"gap": gap["gap"], "alignment": gap["alignment"],
                         "uniformity_image": distinct["uniformity_image"], "uniformity_text": distinct["uniformity_text"]},
        "bank": {"images": len(qimg), "texts": len(qtxt)},
        "n_images": len(img),
        "n_texts": len(txt),
    }


def hubness_summary(report: dict[str, Any], k: int) -> dict[str, float]:
    """metrics.json's compact view of a retrieval_hubness report: text-to-image hubness and R@1, and the modality gap."""
    t2i = report["text_to_image"]
    return {
        f"n{k}_skewness": t2i["plain"][f"n{k}_skewness"],
        "never_retrieved": t2i["plain"][f"never_in_top{k}"],
        **{f"r1_{name}": t2i[name]["recall@1"] for name in CORRECTIONS},
        "modality_gap": report["modality_gap"]["gap"],
    }
