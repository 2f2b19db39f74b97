"""`domainfm export <domain>`: the trained model as a release, with a model card."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pipelines import params
from pipelines.domain import Domain, get


def _read_json(path: Optional[Path]) -> Optional[dict[str, Any]]:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def card_notes(d: Domain) -> dict[str, list[str]]:
    """The domain's card.py facts as {sources, licences, limitations}."""
    card = d.card()
    return {"sources": list(card.SOURCES), "licences": list(card.LICENCES), "limitations": list(card.LIMITATIONS)}


def export_domain(domain: str, model: Path, out: Path, metrics: Optional[Path], data: Optional[Path],
                  params_path: Optional[Path]) -> Path:
    """Write EXPORT for `domain`'s trained model; metrics and curated data fill the model card."""
    d = get(domain)
    notes = card_notes(d)
    if d.modality == "volume":
        from pipelines.export.volume import export_volume

        return export_volume(model, out, metrics, data, notes, d.prompts().FINDING_PROMPTS)  # what `predict` uses by default

    from pipelines.export.clip import export
    from pipelines.models.wise import WiseConfig

    raw = params.load_params(params_path)
    evaluate = params.section(raw, domain, "evaluate")
    wise = params.build(WiseConfig, params.section(raw, domain, "evaluate", "wise"), f"{domain}.evaluate.wise")
    templates = list(evaluate.get("templates") or d.prompts().TEMPLATES)
    card = {
        "domain": d.name,
        "description": d.description,
        "data": {
            "summary": _read_json(Path(data) / "summary.json") if data else None,
            "sources": notes["sources"],
            "licences": notes["licences"],
        },
        # the settings as the user wrote them in params.yaml
        "training": {
            **{f"curate.{k}": v for k, v in params.section(raw, domain, "curate").items()},
            **{f"train.{k}": v for k, v in params.section(raw, domain, "train").items()},
        },
        "metrics": _read_json(Path(metrics) / "metrics.json") if metrics else None,
        "general_set": evaluate.get("general"),
        "prompt_templates": templates,
        "limitations": notes["limitations"],
    }
    hubness, bank = _hubness_bank(evaluate, data)
    card["hubness_bank"] = len(bank.images) if bank else 0
    export(model, out, card, wise.export_alpha, bank, hubness)
    return Path(out)


def _hubness_bank(evaluate: dict[str, Any], data: Optional[Path]) -> tuple[Any, Any]:
    """`evaluate.hubness` typed, and the training pairs of the search commands' hubness bank (drawn as evaluation draws them)."""
    from pipelines.evaluate.analyses import sample_bank
    from pipelines.evaluate.hubness import HubnessConfig
    from pipelines.io.shards import shard_paths

    hubness = params.build(HubnessConfig, evaluate.get("hubness") or {}, "evaluate.hubness")
    if data is None or not hubness.enabled or not hubness.bank_size:
        return hubness, None
    shards = shard_paths(Path(data), "train")
    return hubness, (sample_bank(shards, hubness.bank_size, hubness.seed) if shards else None)
