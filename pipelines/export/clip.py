"""Export a trained adaptation as a stock open_clip model folder plus a model card.

The folder is open_clip's own `local-dir:` format (open_clip_config.json + open_clip_model.safetensors),
so consumers need nothing from domainfm:

    open_clip.create_model_and_transforms('local-dir:exports/<domain>')

In lora mode the LoRA weights are folded into the exported weights; the peft adapter is also kept
under `adapter/` for people who want to stack or inspect it.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.evaluate.analyses import Bank
from pipelines.evaluate.clip import encode_images, encode_texts
from pipelines.evaluate.hubness import HubnessConfig
from pipelines.infer.hubness import BANK_FILE, HubnessBank, write_bank
from pipelines.io.atomic import atomic_dir
from pipelines.models.adapt import ADAPT_SPEC_FILE, TRAINABLE_FILE, AdaptConfig, load_trained, merged_clip, read_adapt_spec
from pipelines.models.clip import ModelSpec, load_model, model_config_of, preprocess_config_of, write_open_clip_files
from pipelines.models.wise import wise_clip

ADAPTER_DIR = "adapter"
GENERAL_TASK = "general"  # evaluate's task on the generic held-out set
CARD_FILE = "README.md"


# --------------------------------------------------------------------------------------------
# Model card


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, (dict, list)):
        return f"`{json.dumps(v, sort_keys=True)}`"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _kv_table(d: dict[str, Any], header: tuple[str, str] = ("Key", "Value")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in _flatten(d).items()]
    return lines


def _metrics_table(base: dict[str, Any], adapted: dict[str, Any]) -> list[str]:
    """Base vs adapted vs delta, one row per (flattened) metric name."""
    fb, fa = _flatten(base or {}), _flatten(adapted or {})
    lines = ["| Metric | Base | Adapted | Δ |", "|---|---:|---:|---:|"]
    for key in list(dict.fromkeys([*fb, *fa])):
        b, a = fb.get(key), fa.get(key)
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        delta = f"{a - b:+.4f}" if numeric else "–"
        lines.append(f"| {_fmt(key)} | {_fmt(b) if b is not None else '–'} | {_fmt(a) if a is not None else '–'} | {delta} |")
    return lines


def _bullets(items: Any) -> list[str]:
    if isinstance(items, str):
        return [items]
    return [f"- {_fmt(x) if not isinstance(x, str) else x}" for x in items]


def _general_section(metrics: dict[str, Any], general_set: Any) -> list[str]:
    """"What adaptation cost in general ability": base and adapted on the generic held-out set."""
    base, adapted = (metrics.get(m, {}).get(GENERAL_TASK) for m in ("base", "adapted"))
    if not isinstance(base, dict) or not isinstance(adapted, dict):
        return []
    where = f" (`{general_set}`)" if general_set else ""
    return ["## What adaptation cost in general ability", "",
            f"Base and adapted scored zero-shot on a generic, out-of-domain held-out set{where}. "
            "A negative Δ is forgetting: general ability the adaptation gave up for the domain.", "",
            *_metrics_table(base, adapted), ""]


def _wise_section(metrics: dict[str, Any], alpha: Any) -> list[str]:
    """The exported WiSE-FT interpolation's scores beside base and adapted (evaluate scores it as `wise`)."""
    if alpha is None:
        return []
    lines = ["## Exported weights: WiSE-FT interpolation", "",
             f"These weights are (1 - a) * base + a * adapted with a = {alpha:g} (Wortsman et al., 2022), "
             "exported instead of the adapted model (params `<domain>.evaluate.wise.export_alpha`); "
             "the alpha sweep is in the evaluation's `wise.json`.", ""]
    wise = metrics.get("wise")
    if not isinstance(wise, dict):
        return [*lines, "_The evaluation did not score this alpha._", ""]
    lines += ["| Metric | Base | Adapted | Exported (WiSE) |", "|---|---:|---:|---:|"]
    fb, fa, fw = (_flatten(metrics.get(m) or {}) for m in ("base", "adapted", "wise"))
    for key in fw:
        lines.append(f"| {_fmt(key)} | {_fmt(fb[key]) if key in fb else '–'} | {_fmt(fa[key]) if key in fa else '–'} "
                     f"| {_fmt(fw[key])} |")
    return [*lines, ""]


def render_card(card: dict[str, Any], base: ModelSpec, cfg: AdaptConfig, export_name: str) -> str:
    """Markdown model card.

    Known `card` keys: domain, description, data {summary, sources, licences}, training,
    metrics {base, adapted[, wise]} (each e.g. {zero_shot: {...}, retrieval: {...}, general: {...}}),
    general_set (where the generic set came from), wise_alpha (the exported interpolation, None: the
    adapted model), prompt_templates, limitations. Missing keys are rendered as 'not provided'.
    """
    domain = card.get("domain", export_name)
    lines = [f"# domainfm: {domain}", ""]
    lines += [card.get("description", "_No description provided._"), ""]

    lines += ["## Model", ""]
    lines += _kv_table({"base model": base.name, "base weights": base.pretrained or "none (random init / local-dir)",
                        "adaptation": asdict(cfg)})
    lines.append("")

    data = card.get("data", {})
    lines += ["## Training data", ""]
    if data.get("summary"):
        lines += ["### Curated data summary", ""] + _kv_table(data["summary"]) + [""]
    for title, key in (("Sources", "sources"), ("Licences", "licences")):
        lines += [f"### {title}", ""] + (_bullets(data[key]) if data.get(key) else ["_not provided_"]) + [""]

    lines += ["## Training parameters", ""]
    lines += (_kv_table(card["training"], ("Parameter", "Value")) if card.get("training") else ["_not provided_"]) + [""]

    metrics = card.get("metrics") or {}
    lines += ["## Evaluation", ""]
    base_m, adapted_m = metrics.get("base", {}), metrics.get("adapted", {})
    groups = [g for g in dict.fromkeys([*base_m, *adapted_m]) if g != GENERAL_TASK]
    if not groups:
        lines += ["_not provided_", ""]
    for group in groups:
        b, a = base_m.get(group, {}), adapted_m.get(group, {})
        if isinstance(b, dict) or isinstance(a, dict):
            lines += [f"### {group.replace('_', ' ').title()}", ""]
            lines += _metrics_table(b if isinstance(b, dict) else {}, a if isinstance(a, dict) else {}) + [""]
        else:
            lines += _metrics_table({group: b}, {group: a}) + [""]

    lines += _general_section(metrics, card.get("general_set"))
    lines += _wise_section(metrics, card.get("wise_alpha"))

    lines += ["## Prompt templates", ""]
    templates = card.get("prompt_templates") or []
    lines += ([f"- `{t}`" for t in templates] if templates else ["_not provided_"]) + [""]

    lines += ["## Limitations", ""]
    lines += (_bullets(card["limitations"]) if card.get("limitations") else ["_not provided_"]) + [""]

    lines += [
        "## How to load", "",
        ("The weights are a stock open_clip model (LoRA, if any, merged in):" if card.get("wise_alpha") is None else
         f"The weights are a stock open_clip model, the WiSE-FT interpolation at alpha = {card['wise_alpha']:g} "
         "(LoRA, if any, merged in scaled by alpha):"), "",
        "```python",
        "import open_clip",
        f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:exports/{export_name}')",
        f"tokenizer = open_clip.get_tokenizer('local-dir:exports/{export_name}')",
        "```", "",
    ]
    if card.get("hubness_bank"):
        lines += [f"`{BANK_FILE}` holds {card['hubness_bank']} training captions and images embedded by these weights: "
                  "`domainfm search <domain> --correction qb_norm|db_norm` ranks with it (hubness correction).", ""]
    if cfg.mode == "lora":
        lines += [f"The unmerged LoRA adapter (peft format, on top of open_clip attention rewritten into "
                  f"explicit q/k/v/out linears by `pipelines.models.adapt.explicit_attention`) is in `{ADAPTER_DIR}/`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def _sort_target_modules(config_path: Path) -> None:
    """Sort the `target_modules` of peft's adapter config, which peft writes from a set.

    A set of strings iterates in an order seeded per process, so the same adapter came out with its
    modules in another order on each run and DVC saw a new export. The file is otherwise peft's own
    (sorted keys, indent 2), which peft and any JSON reader load as before.
    """
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def export(trained_dir: Path, out_dir: Path, card: dict, wise_alpha: float | None = None, bank: Bank | None = None,
           hubness: HubnessConfig | None = None) -> None:
    """Write out_dir/ = merged model (local-dir format) + adapter/ (lora only) + README.md, atomically.

    With `wise_alpha`, the weights are the WiSE-FT interpolation of base and adapted at that alpha
    (pipelines/models/wise.py); the adapter/ folder still holds the unscaled adaptation. With a `bank`
    of training pairs, also hubness_bank.safetensors: their embeddings under the exported weights, with
    `hubness`'s betas, for the search commands' `--correction` (pipelines/infer/hubness.py).
    """
    trained_dir, out_dir = Path(trained_dir), Path(out_dir)
    base, cfg = read_adapt_spec(trained_dir)
    model, loaded = load_trained(trained_dir, device="cpu")
    if wise_alpha is None:
        merged = merged_clip(model, cfg).eval()
    else:
        merged = wise_clip(model, cfg, load_model(base).model, wise_alpha).eval()
    card = {**card, "wise_alpha": wise_alpha}
    with atomic_dir(out_dir) as tmp:
        write_open_clip_files(merged, model_config_of(base), tmp, preprocess_config_of(merged))
        if bank is not None and bank.images:
            hubness = hubness or HubnessConfig()
            write_bank(tmp, HubnessBank(
                text=encode_texts(merged, loaded.tokenizer, bank.texts, "cpu", 64).numpy(),
                image=encode_images(merged, loaded.preprocess_val, bank.images, "cpu", 64).numpy(),
                beta=hubness.beta, beta_gallery=hubness.beta_gallery or hubness.beta))
        if cfg.mode == "lora":
            adapter = tmp / ADAPTER_DIR
            model.save_pretrained(str(adapter))
            _sort_target_modules(adapter / "adapter_config.json")
            # peft's adapter lacks non-LoRA trainables (logit_scale); keep the full training output too.
            shutil.copy2(trained_dir / ADAPT_SPEC_FILE, adapter / ADAPT_SPEC_FILE)
            shutil.copy2(trained_dir / TRAINABLE_FILE, adapter / TRAINABLE_FILE)
        (tmp / CARD_FILE).write_text(render_card(card, base, cfg, out_dir.name), encoding="utf-8")
