"""Export a trained adaptation as a stock open_clip model folder plus a model card.

The folder is open_clip's own `local-dir:` format (open_clip_config.json + open_clip_model.safetensors),
so consumers need nothing from domainfm:

    open_clip.create_model_and_transforms('local-dir:exports/<domain>')

In lora mode the LoRA weights are folded into the exported weights; the peft adapter is also kept
under `adapter/` for people who want to stack or inspect it.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import open_clip
from open_clip.transform import PreprocessCfg
from safetensors.torch import save_file
from torch import nn

from .adapt import ADAPT_SPEC_FILE, TRAINABLE_FILE, AdaptConfig, clip_of, load_trained, merged_clip, read_adapt_spec
from .models import ModelSpec

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
ADAPTER_DIR = "adapter"
CARD_FILE = "README.md"
_PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temp folder next to `out_dir`; on success it replaces `out_dir` in one rename.

    A crash leaves the previous export (or nothing) in place, never a half-written folder.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            # Directories cannot be os.replace'd over non-empty ones: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_config_of(spec: ModelSpec) -> dict[str, Any]:
    """The open_clip model_cfg dict a spec builds (named/shipped config, or a local-dir's JSON)."""
    if spec.name.startswith("local-dir:"):
        path = Path(spec.name[len("local-dir:"):]) / CONFIG_FILE
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if "model_cfg" not in cfg:
            raise ValueError(f"{path} has no 'model_cfg'")
        return cfg["model_cfg"]
    cfg = open_clip.get_model_config(spec.name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model config {spec.name!r}")
    return cfg


def preprocess_config_of(model: nn.Module) -> dict[str, Any]:
    """Image preprocessing config of a model (set by open_clip's factory), else open_clip defaults."""
    defaults = asdict(PreprocessCfg())
    visual = getattr(clip_of(model), "visual", None)
    found = dict(getattr(visual, "preprocess_cfg", None) or {})
    if "size" not in found and visual is not None and hasattr(visual, "image_size"):
        found["size"] = visual.image_size
    cfg = {k: found.get(k, defaults[k]) for k in _PREPROCESS_KEYS}
    # JSON has no tuples; lists round-trip through open_clip's loader the same way.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _write_open_clip_files(model: nn.Module, model_cfg: dict, out_dir: Path, preprocess_cfg: dict) -> None:
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # Clone so tied/shared storage cannot trip safetensors, and keep it on CPU.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def save_open_clip_dir(
        model: open_clip.CLIP,
        model_cfg: dict,
        out_dir: Path,
        preprocess_cfg: dict | None = None,
) -> None:
    """Write `model` in open_clip's local-dir format, atomically."""
    preprocess_cfg = preprocess_cfg if preprocess_cfg is not None else preprocess_config_of(model)
    with atomic_dir(Path(out_dir)) as tmp:
        _write_open_clip_files(model, model_cfg, tmp, preprocess_cfg)


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


def render_card(card: dict[str, Any], base: ModelSpec, cfg: AdaptConfig, export_name: str) -> str:
    """Markdown model card. Known `card` keys: domain, description, data {summary, sources, licences},
    training, metrics {base, adapted} (each e.g. {zero_shot: {...}, retrieval: {...}}),
    prompt_templates, limitations. Missing keys are rendered as 'not provided'."""
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

    metrics = card.get("metrics", {})
    lines += ["## Evaluation", ""]
    base_m, adapted_m = metrics.get("base", {}), metrics.get("adapted", {})
    groups = list(dict.fromkeys([*base_m, *adapted_m]))
    if not groups:
        lines += ["_not provided_", ""]
    for group in groups:
        b, a = base_m.get(group, {}), adapted_m.get(group, {})
        if isinstance(b, dict) or isinstance(a, dict):
            lines += [f"### {group.replace('_', ' ').title()}", ""]
            lines += _metrics_table(b if isinstance(b, dict) else {}, a if isinstance(a, dict) else {}) + [""]
        else:
            lines += _metrics_table({group: b}, {group: a}) + [""]

    lines += ["## Prompt templates", ""]
    templates = card.get("prompt_templates") or []
    lines += ([f"- `{t}`" for t in templates] if templates else ["_not provided_"]) + [""]

    lines += ["## Limitations", ""]
    lines += (_bullets(card["limitations"]) if card.get("limitations") else ["_not provided_"]) + [""]

    lines += [
        "## How to load", "",
        "The weights are a stock open_clip model (LoRA, if any, merged in):", "",
        "```python",
        "import open_clip",
        f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:exports/{export_name}')",
        f"tokenizer = open_clip.get_tokenizer('local-dir:exports/{export_name}')",
        "```", "",
    ]
    if cfg.mode == "lora":
        lines += [f"The unmerged LoRA adapter (peft format, on top of open_clip attention rewritten into "
                  f"explicit q/k/v/out linears by `pipelines.adapt.explicit_attention`) is in `{ADAPTER_DIR}/`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def export(trained_dir: Path, out_dir: Path, card: dict) -> None:
    """Write out_dir/ = merged model (local-dir format) + adapter/ (lora only) + README.md, atomically."""
    trained_dir, out_dir = Path(trained_dir), Path(out_dir)
    base, cfg = read_adapt_spec(trained_dir)
    model, _ = load_trained(trained_dir, device="cpu")
    merged = merged_clip(model, cfg).eval()
    with atomic_dir(out_dir) as tmp:
        _write_open_clip_files(merged, model_config_of(base), tmp, preprocess_config_of(merged))
        if cfg.mode == "lora":
            adapter = tmp / ADAPTER_DIR
            model.save_pretrained(str(adapter))
            # peft's adapter lacks non-LoRA trainables (logit_scale); keep the full training output too.
            shutil.copy2(trained_dir / ADAPT_SPEC_FILE, adapter / ADAPT_SPEC_FILE)
            shutil.copy2(trained_dir / TRAINABLE_FILE, adapter / TRAINABLE_FILE)
        (tmp / CARD_FILE).write_text(render_card(card, base, cfg, out_dir.name), encoding="utf-8")
