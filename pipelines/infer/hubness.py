"""Hubness-corrected ranking for the search commands, from the bank an export ships.

A few gallery items of a CLIP-style model are near every query (hubs) and crowd the top of every
search. QB-Norm and DBNorm (pipelines/evaluate/hubness.py, where evaluation measures them) rescore a
query's similarities against a bank of training queries: an item that every bank caption is close
to counts for less. `domainfm export` writes the bank, `hubness_bank.safetensors`: the export's own
embeddings of `evaluate.hubness.bank_size` training captions (`text`) and their images (`image`),
drawn as evaluation draws them, with the betas evaluation used. `search --correction qb_norm|db_norm`
ranks with it; `none` is the plain cosine similarity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipelines.errors import InputError

# the rankings a search offers; evaluation reports all three (`pipelines.evaluate.hubness`, which needs torch: imported
# when a correction is computed, so the analyst commands' options and --help need none)
Correction = Literal["none", "qb_norm", "db_norm"]
BANK_FILE = "hubness_bank.safetensors"
CORRECTION_HELP = ("Ranking: none (cosine similarity), qb_norm or db_norm (hubness corrections with the bank the export ships; "
                   "items near every caption stop crowding the top).")


@dataclass
class HubnessBank:
    """Training captions and images embedded by the exported model, and the corrections' inverse temperatures."""

    text: np.ndarray  # (n, d), L2-normalised
    image: np.ndarray  # (n, d), L2-normalised
    beta: float
    beta_gallery: float


def write_bank(folder: Path, bank: HubnessBank) -> Path:
    """Save `bank` as FOLDER/hubness_bank.safetensors (tensors and betas; no pickle)."""
    from pipelines.io.tensor_files import save_tensors

    return save_tensors({"text": np.asarray(bank.text, np.float32), "image": np.asarray(bank.image, np.float32)}, Path(folder) / BANK_FILE,
                        metadata={"beta": repr(float(bank.beta)), "beta_gallery": repr(float(bank.beta_gallery))})


def read_bank(folder: Path) -> HubnessBank | None:
    """The bank an export ships, or None when it has none."""
    from safetensors import safe_open

    path = Path(folder) / BANK_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        return HubnessBank(f.get_tensor("text"), f.get_tensor("image"), float(meta["beta"]), float(meta["beta_gallery"]))


def check_bank(correction: Correction, bank: HubnessBank | None, source: str = "the model") -> None:
    """InputError when `correction` needs a bank and `source` (the export) ships none: said before any slide or scene is read."""
    if correction != "none" and (bank is None or not len(bank.text)):
        raise InputError(f"{source} ships no hubness bank ({BANK_FILE}), which --correction {correction} needs: export it again "
                         "with evaluate.hubness enabled and bank_size > 0, or use --correction none")


def search_scores(query: np.ndarray, gallery: np.ndarray, correction: Correction, bank: HubnessBank | None,
                  source: str = "the model") -> np.ndarray:
    """Scores of the gallery items (n, d) for one text query (d,): cosine similarity, or its QB-Norm/DBNorm rescoring.

    Raises:
        InputError: a correction was asked for and `source` (the export) ships no bank.
    """
    if correction == "none":
        return np.asarray(gallery, np.float32) @ np.asarray(query, np.float32)
    from pipelines.evaluate.hubness import corrected_scores

    check_bank(correction, bank, source)
    scores = corrected_scores(correction, np.asarray(query, np.float32)[None], gallery, bank.text, bank.image, bank.beta,
                              bank.beta_gallery)
    return np.asarray(scores[0], np.float64)


def describe(correction: Correction, bank: HubnessBank | None) -> str:
    """How the scores of a search were computed, for its summary."""
    if correction == "none" or bank is None:
        return "cosine similarity"
    name = {"qb_norm": "QB-Norm", "db_norm": "DBNorm"}[correction]
    betas = f"beta {bank.beta:g}" + (f", gallery beta {bank.beta_gallery:g}" if correction == "db_norm" else "")
    return f"{name} of cosine similarity ({betas}; bank of {len(bank.text)} training captions and images)"
