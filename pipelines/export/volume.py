"""Export of the volume family: the trained model folder as a self-contained release.

EXPORT/ holds config.json, model.safetensors, tokenizer/, text_config/ (all that
`domains.ct.loader.load_ct_model` needs, offline), preprocess.json (the curation's MONAI
preprocessing, so `embed_image` on a NIfTI matches what the model was trained on),
prompt_embeddings.safetensors (the domain's finding prompts embedded, so a prediction with them
builds no text encoder: about 1.5 s of a first `domainfm predict ct`) and README.md (a model card:
provenance, training settings, evaluation tables). Written into a temp folder that
replaces EXPORT in one rename (pipelines.io.atomic.atomic_dir): a crash never leaves half an export.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from pipelines.io.atomic import atomic_dir
from pipelines.io.volume_shards import split_index
from pipelines.models import volume as M

PREPROCESS_FILE = "preprocess.json"
CARD_FILE = "README.md"
MODEL_FILES = (M.CONFIG_FILE, M.WEIGHTS_FILE, M.TOKENIZER_DIR, M.TEXT_CONFIG_DIR)


def preprocess_config(data: Optional[Path], input_size: list[int]) -> dict[str, Any]:
    """The preprocessing the curated volumes went through, from a curated sample's provenance."""
    if data is not None:
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
    """Markdown model card: usage, model and preprocessing settings, training, provenance, metrics, limitations.

    `config` is the model folder's config.json; `metrics` the evaluation's metrics.json (base, adapted,
    delta); `summary` the curation's summary.json; `notes` may list "sources", "licences" and "limitations".
    """
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


def export_volume(model_dir: Path, out: Path, metrics: Optional[Path] = None, data: Optional[Path] = None,
                  notes: Optional[dict[str, Any]] = None, prompts: Optional[dict[str, dict[str, list[str]]]] = None) -> Path:
    """Copy the model files; write preprocess.json, the card and the `prompts`' embeddings; EXPORT replaced atomically.

    `prompts` are the domain's finding prompts (what a prediction uses by default); None embeds none.
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / M.CONFIG_FILE).read_text())
    missing = [f for f in MODEL_FILES if not (model_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a trained CT model folder (missing {', '.join(missing)})")
    metrics_json = Path(metrics) / "metrics.json" if metrics is not None else None
    metrics_doc = json.loads(metrics_json.read_text()) if metrics_json and metrics_json.is_file() else None
    summary_path = Path(data) / "summary.json" if data is not None else None
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else None
    preprocess = preprocess_config(data, config["model"]["input_size"])
    train_params = config.get("train") or {}
    with atomic_dir(Path(out)) as tmp:
        for name in MODEL_FILES:
            src = model_dir / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
        (tmp / PREPROCESS_FILE).write_text(json.dumps(preprocess, indent=2))
        if prompts:
            net, tokenizer, _ = M.load_model_dir(tmp)
            texts = list(dict.fromkeys(M.prompt_texts(prompts)))
            M.save_prompt_embeddings(tmp, texts, M.embed_texts(net, tokenizer, texts))
        (tmp / CARD_FILE).write_text(render_card(config, metrics_doc, summary, train_params, preprocess, notes or {}))
    return Path(out)
