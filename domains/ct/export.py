"""`domainfm export ct`: the trained model folder as a self-contained release.

EXPORT/ holds config.json, model.safetensors, tokenizer/, text_config/ (all that
`domains.ct.loader.load_ct_model` needs, offline), preprocess.json (the curation's MONAI
preprocessing, so `embed_image` on a NIfTI matches what the model was trained on) and README.md
(a model card: provenance, training settings, evaluation tables). Written into a temp folder that
replaces EXPORT in one rename (pipelines.export's helper): a crash never leaves half an export.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from domains.ct import model as M
from pipelines.config import load_params, section
from pipelines.export import atomic_dir

PREPROCESS_FILE = "preprocess.json"
CARD_FILE = "README.md"
MODEL_FILES = (M.CONFIG_FILE, M.WEIGHTS_FILE, M.TOKENIZER_DIR, M.TEXT_CONFIG_DIR)


def preprocess_config(params: dict[str, Any], data: Optional[Path], input_size: list[int]) -> dict[str, Any]:
    """The preprocessing the curated volumes went through: params ct.curate, else a shard's provenance, else defaults."""
    try:
        from domains.ct.curate import CTCurateConfig

        cur = section(params, "ct", "curate")
        return dataclasses.asdict(CTCurateConfig(**cur).preprocess())
    except Exception:  # noqa: BLE001 - curation module or params absent: fall through to the other sources
        pass
    if data is not None:
        from domains.ct.dataset import split_index

        for split in ("train", "test", "val"):
            index = split_index(data, split)
            if len(index):
                prov = index[0].meta.get("provenance") or {}
                if isinstance(prov.get("preprocessing"), dict):
                    return prov["preprocessing"]
    return {"spatial_size": list(input_size)}


def _table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def render_card(config: dict[str, Any], metrics: Optional[dict[str, Any]], summary: Optional[dict[str, Any]],
                train_params: dict[str, Any], preprocess: dict[str, Any], notes: dict[str, Any]) -> str:
    model_cfg, phenotypes = config["model"], config["phenotypes"]
    lines = ["# domainfm CT model", "",
             "A Merlin-style 3D CT vision-language model: an I3D image encoder trained with phenotype supervision "
             "(sigmoid/BCE on EHR-derived phenotypes) and report contrastive learning (InfoNCE, report splitting).", "",
             "## Use", "", "```python", "from domains.ct.loader import load_ct_model", "",
             "m = load_ct_model('EXPORT_DIR')", "emb = m.embed_image('scan.nii.gz')        # (embed_dim,) L2-normalised",
             "txt = m.embed_text(['no pleural effusion'])  # (n, embed_dim)",
             "probs = m.phenotype_probabilities('scan.nii.gz')  # {phenotype: probability}", "```", "",
             "## Model", "", *_table([["key", "value"], *[[k, f"`{json.dumps(v)}`"] for k, v in model_cfg.items()]]), "",
             f"Phenotypes ({len(phenotypes)}): " + (", ".join(f"`{p}`" for p in phenotypes) or "none"), "",
             "## Preprocessing", "", *_table([["key", "value"], *[[k, f"`{json.dumps(v)}`"] for k, v in preprocess.items()]]), "",
             "## Training", "", *_table([["key", "value"], *[[k, f"`{json.dumps(v)}`"] for k, v in train_params.items()]]), ""]
    lines += ["## Data provenance", ""]
    if summary:
        lines += ["Curation summary (`summary.json`):", "", "```json", json.dumps(summary, indent=2, sort_keys=True)[:4000], "```", ""]
    for title in ("sources", "licences"):
        for item in notes.get(title, ()):
            lines.append(f"- {title[:-1]}: {item}")
    lines.append("")
    lines += ["## Evaluation (held-out test split)", ""]
    if metrics:
        rows = [["task/metric", "base", "adapted", "delta"]]
        for task, values in metrics.get("adapted", {}).items():
            for k, v in values.items():
                rows.append([f"{task}/{k}", _num(metrics.get("base", {}).get(task, {}).get(k)), _num(v),
                             _num(metrics.get("delta", {}).get(task, {}).get(k))])
        lines += ["\"base\" is the untrained initial model (same seed); phenotype AUROC intervals are 95% bootstrap.", "",
                  *_table(rows), ""]
    else:
        lines += ["No evaluation metrics were given.", ""]
    lines += ["## Limitations", "", "- Research use only; not a medical device.",
              "- Phenotype labels come from EHR codes in a time window around the study and are noisy.",
              *[f"- {x}" for x in notes.get("limitations", ())], ""]
    return "\n".join(lines)


def _card_notes() -> dict[str, Any]:
    try:
        from pipelines.domain import get

        return dict(get("ct").card_notes)
    except Exception:  # noqa: BLE001 - the domain registration is optional for a card
        return {}


def export_ct(model_dir: Path, out: Path, metrics: Optional[Path] = None, data: Optional[Path] = None,
              params: Optional[dict[str, Any]] = None) -> Path:
    """Copy the model files, write preprocess.json and the card; EXPORT replaced atomically."""
    model_dir, params = Path(model_dir), params or {}
    config = json.loads((model_dir / M.CONFIG_FILE).read_text())
    missing = [f for f in MODEL_FILES if not (model_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a trained CT model folder (missing {', '.join(missing)})")
    metrics_json = Path(metrics) / "metrics.json" if metrics is not None else None
    metrics_doc = json.loads(metrics_json.read_text()) if metrics_json and metrics_json.is_file() else None
    summary_path = Path(data) / "summary.json" if data is not None else None
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else None
    preprocess = preprocess_config(params, data, config["model"]["input_size"])
    train_params = config.get("train") or section(params, "ct", "train")
    with atomic_dir(Path(out)) as tmp:
        for name in MODEL_FILES:
            src = model_dir / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
        (tmp / PREPROCESS_FILE).write_text(json.dumps(preprocess, indent=2))
        (tmp / CARD_FILE).write_text(render_card(config, metrics_doc, summary, train_params, preprocess, _card_notes()))
    return Path(out)


def export_command(model: Path, out: Path, metrics: Optional[Path] = None, data: Optional[Path] = None,
                   params: Path = Path("params.yaml")) -> Path:
    """`domainfm export ct`."""
    result = export_ct(model, out, metrics, data, load_params(params) if params is not None and Path(params).is_file() else {})
    print(f"exported ct to {out}")
    return result
