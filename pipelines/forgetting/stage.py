"""`domainfm forgetting <domain>`: base, LoRA and full fine-tuning on in-domain and general zero-shot sets.

Base and LoRA come from the evaluate stage's outputs (metrics.json, wise.json), so the table quotes the
very numbers of the model card; the full fine-tuning twin is scored here on the same sets with the same
code (pipelines/evaluate), and its WiSE-FT curve swept over the same alphas. Outputs, atomically:
OUT/forgetting.json (scalars, for `dvc metrics`), OUT/wise_full.json (the twin's curve, for `dvc plots`)
and REPORT (markdown: the table and both curves).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from safetensors import safe_open

from pipelines import params
from pipelines.domain import classes_and_templates, get
from pipelines.errors import InputError
from pipelines.io.atomic import atomic_write_json, atomic_write_text

FORGETTING_FILE = "forgetting.json"
WISE_FULL_FILE = "wise_full.json"
SETS = ("zeroshot", "general")  # in-domain, then the generic held-out set
METRICS = ("acc1", "mean_per_class_recall")


@dataclass
class ForgettingConfig:
    """params.yaml `forgetting`: the open_clip domains trained a second time with full fine-tuning."""

    domains: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: not found; {what}")
    return json.loads(path.read_text(encoding="utf-8"))


def _trainable_count(model_dir: Path) -> int:
    """Trained parameters of a training output (its trainable.safetensors), without loading the model."""
    from pipelines.models.adapt import TRAINABLE_FILE

    with safe_open(str(model_dir / TRAINABLE_FILE), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _scores(summary_of_model: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {s: {m: summary_of_model[s][m] for m in METRICS if m in summary_of_model.get(s, {})}
            for s in SETS if s in summary_of_model}


def _delta(model: dict[str, dict[str, float]], base: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {s: {m: v - base[s][m] for m, v in values.items() if m in base.get(s, {})} for s, values in model.items() if s in base}


def forgetting_domain(domain: str, model: Path, full: Path, metrics_dir: Path, zeroshot: Optional[Path], out: Path,
                      report: Path, params_path: Optional[Path]) -> str:
    """Score `full` beside the evaluation of `model`; write OUT/forgetting.json, OUT/wise_full.json, REPORT.

    Returns the report's markdown. Raises InputError when the models are not a LoRA model and its full
    fine-tuning twin on the same base, or when the evaluation outputs are missing.
    """
    from pipelines.evaluate.clip import ClipEvaluateConfig, load_benchmark_zeroshot_set, load_zeroshot_set, score_zeroshot, zeroshot_shards
    from pipelines.evaluate.wise import WISE_FILE, wise_curve, write_wise
    from pipelines.infer.device import resolve_device
    from pipelines.models.adapt import load_trained, read_adapt_spec
    from pipelines.models.clip import load_model
    from pipelines.models.wise import wise_clip

    d = get(domain)
    if d.modality != "image":
        raise InputError(f"forgetting: {domain} is a {d.modality} domain; the study compares open_clip adaptations")
    model, full, metrics_dir, out = Path(model), Path(full), Path(metrics_dir), Path(out)
    base_spec, lora_cfg = read_adapt_spec(model)
    full_base, full_cfg = read_adapt_spec(full)
    if full_cfg.mode != "full":
        raise InputError(f"{full}: trained with adapt.mode {full_cfg.mode!r}; the twin must be full fine-tuning "
                         f"(`domainfm train {domain} --adapt-mode full`)")
    if lora_cfg.mode == "full":
        raise InputError(f"{model}: {domain} already trains with adapt.mode 'full', so its twin is the same model; "
                         "take it out of params `forgetting.domains` or set its adapt.mode to lora")
    if full_base != base_spec:
        raise InputError(f"{full} was adapted from {full_base} but {model} from {base_spec}: not the same base")
    summary = _read_json(metrics_dir / "metrics.json", f"run `domainfm evaluate {domain}` first")
    lora_curve = _read_json(metrics_dir / WISE_FILE, f"run `domainfm evaluate {domain}` first")

    cfg = params.read(params_path, ClipEvaluateConfig, domain, "evaluate")
    device = resolve_device(cfg.device)
    classnames, templates = classes_and_templates(d, zeroshot, cfg.classnames, cfg.templates)
    sets = {}
    if zeroshot is not None and Path(zeroshot).is_dir() and zeroshot_shards(Path(zeroshot)):
        sets["zeroshot"] = load_zeroshot_set(Path(zeroshot), classnames, templates)
    if cfg.general:
        sets["general"] = load_benchmark_zeroshot_set(Path(cfg.general))
    if not sets:
        raise InputError(f"forgetting {domain}: no zero-shot set ({zeroshot}) and no general set "
                         f"(params {domain}.evaluate.general): nothing to score")

    twin, loaded = load_trained(full, device=device)
    base = load_model(base_spec).model.eval()
    scores = {"base": _scores(summary.get("base", {})), lora_cfg.mode: _scores(summary.get("adapted", {}))}
    scores["full"] = {name: {m: float(v) for m, v in score_zeroshot(twin, loaded.preprocess_val, loaded.tokenizer, found,
                                                                     device, cfg.batch_size)[2].items() if m in METRICS}
                      for name, found in sets.items()}
    full_curve = wise_curve(lambda alpha: wise_clip(twin, full_cfg, base.to(device), alpha), cfg.wise.alphas,
                            loaded.preprocess_val, loaded.tokenizer, sets, device, cfg.batch_size)
    record = {
        **scores,
        **{f"delta_{name}": _delta(scores[name], scores["base"]) for name in (lora_cfg.mode, "full")},
        "trainable_parameters": {lora_cfg.mode: _trainable_count(model), "full": _trainable_count(full)},
    }
    atomic_write_json(out / FORGETTING_FILE, record)
    write_wise(out / WISE_FULL_FILE, full_curve)
    text = render_report(domain, record, lora_cfg.mode, {lora_cfg.mode: lora_curve, "full": full_curve}, cfg.general)
    atomic_write_text(Path(report), text)
    return text


def _cell(v: Any, signed: bool = False) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def render_report(domain: str, record: dict[str, Any], adapted: str, curves: dict[str, list[dict[str, float]]],
                  general_set: Optional[str]) -> str:
    """The forgetting report: base vs `adapted` (LoRA) vs full fine-tuning, then each WiSE-FT curve."""
    lines = [f"# {domain}: what adaptation costs in general ability", "",
             f"In-domain: the domain's held-out zero-shot set. General: a generic, out-of-domain zero-shot set "
             f"(`{general_set or 'none'}`). Δ is against the base model; a negative general Δ is forgetting. "
             f"Both adaptations trained on the same data with the same schedule and seed.", "",
             "| model | trained params | in-domain acc1 | in-domain mean recall | general acc1 | general mean recall "
             "| Δ in-domain acc1 | Δ general acc1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("base", adapted, "full"):
        s, delta = record[name], record.get(f"delta_{name}", {})
        count = record["trainable_parameters"].get(name)
        lines.append(
            f"| {name} | {count if count is not None else '–'} "
            f"| {_cell(s.get('zeroshot', {}).get('acc1'))} | {_cell(s.get('zeroshot', {}).get('mean_per_class_recall'))} "
            f"| {_cell(s.get('general', {}).get('acc1'))} | {_cell(s.get('general', {}).get('mean_per_class_recall'))} "
            f"| {_cell(delta.get('zeroshot', {}).get('acc1'), True)} | {_cell(delta.get('general', {}).get('acc1'), True)} |")
    for name, rows in curves.items():
        lines += ["", f"## WiSE-FT curve, {name}: (1 - a) * base + a * {name}", "",
                  "| alpha | in-domain acc1 | general acc1 |", "|---:|---:|---:|"]
        lines += [f"| {r['alpha']:g} | {_cell(r.get('zeroshot_acc1'))} | {_cell(r.get('general_acc1'))} |" for r in rows]
        if not rows:
            lines.append("| – | – | – |")
    return "\n".join(lines) + "\n"
