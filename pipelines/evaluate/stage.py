"""`domainfm evaluate <domain>`: base and adapted side by side, for the domain's model family."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipelines import params
from pipelines.domain import classes_and_templates, get


def evaluate_domain(domain: str, model: Path, zeroshot: Optional[Path], data: Optional[Path], out: Path, plots: Path,
                    params_path: Optional[Path], per_example_dir: Optional[Path] = None) -> dict[str, Any]:
    """Score `domain`'s base and trained model; write OUT (metrics, CLIP_benchmark JSON) and PLOTS.

    With `per_example_dir`, each model's per-example outcomes go there as CSV files (what they hold
    depends on the model family: see pipelines/evaluate/clip.py and volume.py).
    """
    d = get(domain)
    if d.modality == "volume":
        from pipelines.evaluate.analyses import write_skipped
        from pipelines.evaluate.volume import VolumeEvaluateConfig, evaluate_volume

        vcfg = params.read(params_path, VolumeEvaluateConfig, domain, "evaluate")
        result = evaluate_volume(model, data, zeroshot, out, plots, vcfg, vcfg.prompts or d.prompts().FINDING_PROMPTS, domain,
                                 per_example_dir)
        write_skipped(out, ["base", "adapted"], "hubness and linear probes are computed for open_clip domains only")
        return result

    from pipelines.evaluate.clip import ClipEvaluateConfig, evaluate
    from pipelines.infer.device import resolve_device
    from pipelines.io.shards import shard_paths
    from pipelines.models.adapt import load_trained
    from pipelines.models.clip import load_model

    cfg = params.read(params_path, ClipEvaluateConfig, domain, "evaluate")
    adapted, loaded = load_trained(model)
    base = load_model(loaded.spec)
    classnames, templates = classes_and_templates(d, zeroshot, cfg.classnames, cfg.templates)
    return evaluate(
        {
            "base": (base.model.eval(), base.preprocess_val, base.tokenizer),
            "adapted": (adapted.eval(), loaded.preprocess_val, loaded.tokenizer),
        },
        zeroshot_dir=zeroshot,
        retrieval_shards=shard_paths(data, cfg.retrieval_split) if data else [],
        classnames=classnames,
        templates=templates,
        out_dir=out,
        plots_dir=plots,
        dataset_name=domain,
        model_names={"base": loaded.spec.name, "adapted": str(model)},
        device=resolve_device(cfg.device),
        batch_size=cfg.batch_size,
        hubness=cfg.hubness,
        linear_probe=cfg.linear_probe,
        bank_shards=shard_paths(data, "train") if data else [],
        per_example_dir=per_example_dir,
    )
