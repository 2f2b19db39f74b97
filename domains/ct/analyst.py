"""`domainfm predict ct`: phenotypes and zero-shot findings of one CT volume, with a picture to check them.

```python
from domains.ct.analyst import predict_ct

result = predict_ct("exports/ct", "scan.nii.gz", "predictions/")   # or a DICOM series folder
result.json_path, result.png_path      # predictions/scan.json, predictions/scan.png
result.findings[0]                     # {"finding": ..., "probability": ..., "present": ...}, most probable first
```

The input goes through the curation's own loading, checks and preprocessing (domains/ct/curation,
via `CTModel.prepare`): an MR or other non-CT volume, a truncated file, a DICOM folder holding
several series (unless one is picked with `series=`) are refused with an InputError naming the
input, and nothing is written. Outputs are named after the input file (or DICOM folder), never
after a DICOM header; the only header values written are the modality, the voxel spacing and the
size.

Two kinds of prediction, both thresholded at `threshold` (0.5 by default):
- phenotypes: the model's phenotype head, one sigmoid probability per phenotype of the model
  (names from the phecode table the CT domain ships, else the code itself); `predicted` when the
  probability is above the threshold;
- findings: Merlin's zero-shot rule with the domain's FINDING_PROMPTS (domains/ct/prompts.py) or a
  prompts file. The thresholded quantity is
  probability = softmax(logit_scale * [mean cosine similarity to the positive prompts,
  mean cosine similarity to the negative prompts])[0], with the model's learned logit scale
  (clamped at 100); `present` when it is above the threshold. At 0.5 this is exactly Merlin's
  "positive similarity > negative similarity".
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer

from domains.ct.analyst_render import TOP_SHOWN, render_prediction
from pipelines.errors import InputError
from pipelines.infer.cache import CACHE_HELP
from pipelines.infer.device import PRECISION_HELP, Precision
from pipelines.infer.outputs import SKIPPED_FILE, run_each
from pipelines.io.atomic import atomic_write_bytes, json_default

if TYPE_CHECKING:  # the model (torch) is imported when a prediction runs, not for --help
    from domains.ct.loader import CTModel, FindingScore

FindingPrompts = dict[str, dict[str, list[str]]]

DEFAULT_THRESHOLD = 0.5
FINDING_RULE = ("probability = softmax(logit_scale * [mean cosine similarity of the image to the positive prompts, "
                "mean cosine similarity to the negative prompts])[0] = sigmoid(logit_scale * (positive - negative)); "
                "present when probability > threshold (at 0.5: Merlin's rule, positive > negative)")
PHENOTYPE_RULE = "probability = sigmoid of the phenotype head's logit; predicted when probability > threshold"
RESEARCH_NOTE = "Research use only, not a medical device: these scores are not a diagnosis."
DEMO_NOTE = ("This is a demo model (demo text encoder) trained on synthetic phantoms at {size} voxels: its predictions on a "
             "real CT are a plumbing check, not a diagnosis. Research use only, not a medical device.")


@dataclass
class CTPrediction:
    """What `predict_ct` wrote and found."""

    json_path: Path  # OUT/<name>.json
    png_path: Path  # OUT/<name>.png
    phenotypes: list[dict[str, Any]]  # every phenotype of the model: code, name, probability, predicted; most probable first
    findings: list[dict[str, Any]]  # every finding: finding, probability, present, mean similarities; most probable first
    preprocess_s: float  # loading, checks and preprocessing of the input
    model_s: float  # the forward pass and the prompt scores


def read_finding_prompts(path: str | Path) -> FindingPrompts:
    """Finding prompts from a JSON file shaped like FINDING_PROMPTS: {finding: {"positive": [...], "negative": [...]}}.

    InputError naming the file when it is missing, not JSON, empty, or a finding lacks non-empty
    lists of positive and negative phrasings.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON prompts file ({exc})") from None
    return check_finding_prompts(doc, str(path))


def check_finding_prompts(doc: Any, where: str = "prompts") -> FindingPrompts:
    """`doc` as finding prompts, or an InputError naming `where` saying what is wrong with it."""
    if not isinstance(doc, dict) or not doc:
        raise InputError(f'{where}: expected a JSON object {{finding: {{"positive": [...], "negative": [...]}}}} '
                         "with at least one finding")
    for finding, prompts in doc.items():
        for side in ("positive", "negative"):
            texts = prompts.get(side) if isinstance(prompts, dict) else None
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise InputError(f"{where}: finding {finding!r} needs a non-empty list of {side} prompts (strings)")
    return {str(f): {"positive": list(p["positive"]), "negative": list(p["negative"])} for f, p in doc.items()}


def phenotype_names(codes: list[str]) -> dict[str, str]:
    """{code: name} from the phecode names table the CT domain ships; a code not in it is its own name."""
    from domains.ct.curation.ehr import normalise_phecode, phecode_names

    table = phecode_names()
    return {code: table.get(normalise_phecode(code), code) for code in codes}


def _finding_rows(scores: list[FindingScore], threshold: float) -> list[dict[str, Any]]:
    rows = [{"finding": s.finding, "probability": round(s.probability, 6), "present": s.probability > threshold,
             "mean_positive_similarity": round(s.mean_positive_similarity, 6),
             "mean_negative_similarity": round(s.mean_negative_similarity, 6)} for s in scores]
    return sorted(rows, key=lambda r: -r["probability"])


def _phenotype_rows(probabilities: dict[str, float], threshold: float) -> list[dict[str, Any]]:
    names = phenotype_names(list(probabilities))
    rows = [{"code": code, "name": names[code], "probability": round(p, 6), "predicted": p > threshold}
            for code, p in probabilities.items()]
    return sorted(rows, key=lambda r: -r["probability"])


def _note(model: CTModel) -> str:
    if model.is_demo:
        return DEMO_NOTE.format(size="x".join(str(s) for s in model.net.cfg.input_size))
    return RESEARCH_NOTE


# ---------------------------------------------------------------- prediction


def checked_settings(threshold: float, out: Path, prompts: str | Path | FindingPrompts | None) -> tuple[FindingPrompts, str]:
    """`predict_ct`'s checks of what is not the volume: (finding prompts, where they come from); InputError naming the setting."""
    from domains.ct.prompts import FINDING_PROMPTS

    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold {threshold}: must lie strictly between 0 and 1")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output must be a folder, and this is a file")
    if prompts is None:
        return FINDING_PROMPTS, "domains/ct/prompts.py FINDING_PROMPTS"
    if isinstance(prompts, dict):
        return check_finding_prompts(prompts, "the prompts given"), "given in Python"
    return read_finding_prompts(prompts), str(prompts)


def predict_ct(model: str | Path | CTModel, volume: str | Path, out: str | Path, threshold: float = DEFAULT_THRESHOLD,
               series: Optional[str] = None, prompts: str | Path | FindingPrompts | None = None, device: str = "auto",
               top: int = TOP_SHOWN, cache: str | Path | None = None, precision: Precision = "auto") -> CTPrediction:
    """Predict the phenotypes and findings of one CT volume; write OUT/<name>.json and OUT/<name>.png.

    Args:
        model: a CT export folder (loaded on `device`), or a model already loaded with `load_ct_model`.
        volume: a NIfTI file (.nii, .nii.gz), a DICOM series folder or a .dcm file.
        out: the output folder (created; other files in it are left alone, the two outputs are replaced).
        threshold: probability above which a finding is present and a phenotype predicted (0 < T < 1).
        series: the SeriesInstanceUID to use when a DICOM folder holds several series.
        prompts: {finding: {"positive": [...], "negative": [...]}} or a JSON file of it; default the
            domain's FINDING_PROMPTS.
        device: "auto" (the GPU when there is one), "cpu" or "cuda"; ignored for a loaded model.
        top: how many findings and phenotypes the picture lists.
        cache: embedding cache folder for the prompts' embeddings (`load_ct_model`'s); ignored for a loaded model.
        precision: "auto" (bf16 where the device computes it natively), "bf16" or "fp32" for the volume's
            forward pass (pipelines.infer.device); ignored for a loaded model.

    Returns:
        The paths written, every phenotype and finding (most probable first) and the timings.

    Raises:
        InputError: naming the input: a missing or unreadable file, a volume curation refuses (MR,
            too few slices, truncated...), a DICOM folder with several series and no `series`, an
            export that is not a CT volume model, a bad prompts file or threshold. Nothing is written.
    """
    from domains.ct.loader import CTModel, load_ct_model

    out = Path(out)
    finding_prompts, prompts_source = checked_settings(threshold, out, prompts)
    if not Path(volume).exists():  # before the model loads: a typo is reported at once
        raise InputError(f"{volume}: no such file or folder")

    started = time.perf_counter()
    import domains.ct.curation.preprocess  # noqa: F401  (its imports are start-up time, not the volume's)

    ct_model = model if isinstance(model, CTModel) else load_ct_model(model, device, cache, precision)
    ct_model.embed_prompts(finding_prompts)  # start-up, not this volume's: once per model, none with the prompts cached
    loaded = time.perf_counter()
    prepared = ct_model.prepare(volume, series)
    preprocessed = time.perf_counter()
    embedding, probabilities = ct_model.predict_volume(prepared.tensor())
    scores = ct_model.finding_scores(embedding, finding_prompts)
    predicted = time.perf_counter()

    export_dir = ct_model.export_dir  # None for a model built in Python rather than loaded from a folder
    doc: dict[str, Any] = {
        "name": prepared.name,
        "note": _note(ct_model),
        "input": {"file": Path(volume).name, "kind": prepared.kind, "modality": prepared.modality,
                  "shape": prepared.input_shape, "spacing_mm": prepared.input_spacing_mm, "notes": prepared.notes},
        "preprocessing": {"shape": list(prepared.array.shape[1:]), "spacing_mm": prepared.output_spacing_mm,
                          "settings": ct_model.preprocess_settings,
                          "source": "domains/ct/curation/preprocess.py (the curation's checks and MONAI preprocessing)"},
        "model": {"path": str(export_dir.resolve()) if export_dir is not None else None,
                  "input_size": list(ct_model.net.cfg.input_size), "n_phenotypes": len(ct_model.phenotypes),
                  "logit_scale": round(ct_model.logit_scale, 6), "device": str(ct_model.device), "precision": ct_model.precision},
        "threshold": threshold,
        "phenotype_rule": PHENOTYPE_RULE,
        "phenotypes": _phenotype_rows(probabilities, threshold),
        "finding_rule": FINDING_RULE,
        "prompts": prompts_source,
        "findings": _finding_rows(scores, threshold),
        "slices": {"through": "volume centre", "axial": prepared.array.shape[3] // 2,
                   "coronal": prepared.array.shape[2] // 2, "sagittal": prepared.array.shape[1] // 2},
        # load_model includes the imports of the model and preprocessing code and the prompts' embeddings; preprocess and
        # model are this volume's own.
        "timing_s": {"load_model": round(loaded - started, 3), "preprocess": round(preprocessed - loaded, 3),
                     "model": round(predicted - preprocessed, 3)},
    }
    png = render_prediction(prepared, doc, top)
    text = json.dumps(doc, indent=2, default=json_default) + "\n"
    # Only now, with everything computed, does anything land in OUT: each file whole (temp file + rename).
    json_path, png_path = out / f"{prepared.name}.json", out / f"{prepared.name}.png"
    atomic_write_bytes(png_path, png)
    atomic_write_bytes(json_path, text.encode("utf-8"))
    return CTPrediction(json_path, png_path, doc["phenotypes"], doc["findings"],
                        preprocess_s=preprocessed - loaded, model_s=predicted - preprocessed)


def predict_command(
    model: Annotated[Path, typer.Option("--model", help="CT export folder (`domainfm export` of the CT model).")],
    volume: Annotated[list[Path], typer.Option("--volume", help="NIfTI file (.nii/.nii.gz), DICOM series folder or .dcm file; "
                                               "repeat for more. One process predicts them all (the model loaded once).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: <name>.json and <name>.png per volume, named after the input.")],
    threshold: Annotated[float, typer.Option("--threshold", help="Present / predicted when the probability is above it.")
                         ] = DEFAULT_THRESHOLD,
    series: Annotated[Optional[str], typer.Option("--series", help="SeriesInstanceUID to use when the DICOM folder holds several.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(
        "--prompts-file", help='JSON {finding: {"positive": [...], "negative": [...]}}; default the domain\'s FINDING_PROMPTS.')] = None,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    cache: Annotated[Optional[Path], typer.Option(help=CACHE_HELP + " It keeps the prompts' embeddings.")] = None,
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out the volumes that cannot be read or used, listed in "
                                                  f"OUT/{SKIPPED_FILE}, instead of stopping at the first.")] = False,
) -> None:
    """Predict phenotypes and zero-shot findings of each CT volume, with three orthogonal slices to check them.

    Volumes are predicted in turn, each one's files written before the next starts; a volume that
    fails stops the run there, naming it (the volumes before it keep their predictions), unless
    --skip-unreadable (`pipelines.infer.outputs.run_each`).
    """
    from domains.ct.loader import load_ct_model

    def predict_one(path: Path) -> None:
        result = predict_ct(ct_model, path, out, threshold, series, prompts_file, device)
        present = [f["finding"] for f in result.findings if f["present"]]
        predicted = [p["code"] for p in result.phenotypes if p["predicted"]]
        typer.echo(f"ct: {path}: findings present: {', '.join(present) or 'none'}; phenotypes predicted: "
                   f"{', '.join(predicted) or 'none'} ({result.preprocess_s:.2f} s preprocessing, {result.model_s:.2f} s model)")
        typer.echo(f"  -> {result.json_path}, {result.png_path}")

    try:
        checked_settings(threshold, out, prompts_file)  # before the model loads: a typo is reported at once
        volumes = predicted_volumes(volume)
        ct_model = load_ct_model(model, device, cache, precision)  # once for all the volumes
        run_each(volumes, predict_one, out, skip_unreadable, typer.echo)
    except InputError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None


def predicted_volumes(given: Sequence[Path]) -> list[Path]:
    """The volumes `--volume` names, in order, each once.

    InputError, before any is read, naming a missing one, or two whose outputs would share a name
    (`study_id_of`: the file's or folder's name without its suffix).
    """
    from domains.ct.curation.volumes import study_id_of
    from pipelines.infer import outputs

    volumes = outputs.each_once([Path(v) for v in given])
    for path in volumes:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    outputs.check_output_names(volumes, study_id_of, "{0}.json, {0}.png", "predictions", "predict")
    return volumes
