"""`domainfm evaluate <domain>`: base and adapted side by side, for the domain's model family."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipelines import params
from pipelines.domain import classes_and_templates, get
from pipelines.evaluate.wise import WISE_FILE, write_wise


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
        write_wise(out / WISE_FILE, [])  # weight interpolation of an open_clip base and its adaptation only
        return result

    from pipelines.evaluate.clip import ClipEvaluateConfig, evaluate, load_benchmark_zeroshot_set, load_zeroshot_set, zeroshot_shards
    from pipelines.evaluate.wise import wise_curve
    from pipelines.infer.device import resolve_device
    from pipelines.io.shards import shard_paths
    from pipelines.models.adapt import load_trained, read_adapt_spec
    from pipelines.models.clip import load_model
    from pipelines.models.wise import wise_clip

    cfg = params.read(params_path, ClipEvaluateConfig, domain, "evaluate")
    adapted, loaded = load_trained(model)
    base = load_model(loaded.spec)
    adapt_cfg = read_adapt_spec(model)[1]
    device = resolve_device(cfg.device)
    general = Path(cfg.general) if cfg.general else None
    classnames, templates = classes_and_templates(d, zeroshot, cfg.classnames, cfg.templates)
    models = {
        "base": (base.model.eval(), base.preprocess_val, base.tokenizer),
        "adapted": (adapted.eval(), loaded.preprocess_val, loaded.tokenizer),
    }
    if cfg.wise.export_alpha is not None:  # the model export writes, scored for its card
        wise = wise_clip(adapted, adapt_cfg, base.model, cfg.wise.export_alpha).eval()
        models["wise"] = (wise, loaded.preprocess_val, loaded.tokenizer)
    summary = evaluate(
        models,
        zeroshot_dir=zeroshot,
        retrieval_shards=shard_paths(data, cfg.retrieval_split) if data else [],
        classnames=classnames,
        templates=templates,
        out_dir=out,
        plots_dir=plots,
        dataset_name=domain,
        model_names={"base": loaded.spec.name, "adapted": str(model)},
        device=device,
        batch_size=cfg.batch_size,
        hubness=cfg.hubness,
        linear_probe=cfg.linear_probe,
        bank_shards=shard_paths(data, "train") if data else [],
        per_example_dir=per_example_dir,
        general_dir=general,
    )
    sets = {}
    if zeroshot is not None and Path(zeroshot).is_dir() and zeroshot_shards(Path(zeroshot)):
        sets["zeroshot"] = load_zeroshot_set(Path(zeroshot), classnames, templates)
    if general is not None:
        sets["general"] = load_benchmark_zeroshot_set(general)
    rows = wise_curve(lambda alpha: wise_clip(adapted, adapt_cfg, base.model, alpha), cfg.wise.alphas if sets else [],
                      loaded.preprocess_val, loaded.tokenizer, sets, device, cfg.batch_size)
    write_wise(Path(out) / WISE_FILE, rows)
    return summary
