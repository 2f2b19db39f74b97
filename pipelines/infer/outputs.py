"""What every analyst command shares around the model: class names, prompt templates, the export, the output folder.

Domains wrap these with their own defaults (`domains/<name>/analyst.py`: their CLASSNAMES and
TEMPLATES, and any domain check on the export).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from pipelines.errors import InputError
from pipelines.infer.device import Precision, resolve_device
from pipelines.io.atomic import atomic_write_bytes, json_default
from pipelines.io.text import read_text

if TYPE_CHECKING:  # open_clip is imported when a model loads: the CT command uses these checks without it
    from pipelines.infer.clip import ClipEncoder

Input = TypeVar("Input")
SKIPPED_FILE = "skipped.tsv"  # OUT/skipped.tsv: the inputs a run with --skip-unreadable left out, and why
SKIP_HINT = "--skip-unreadable leaves such inputs out, lists them in OUT/skipped.tsv and goes on"


def read_classnames(classes: str | Sequence[str] | None, classes_file: Path | None, default: Sequence[str]) -> list[str]:
    """Class names from "a,b,c" (or a list), or from a file with one per line; `default` when neither is given.

    Raises InputError when both are given, when they hold no class name (naming the file), or when names repeat.
    """
    if classes is not None and classes_file is not None:
        raise InputError("give either --classes or --classes-file, not both")
    if classes_file is not None:
        names = [line.strip() for line in read_text(classes_file).text.splitlines() if line.strip()]
        if not names:
            raise InputError(f"{classes_file}: no class names (one per line expected)")
    elif classes is None:
        names = list(default)
    else:
        names = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes) if c.strip()]
        if not names:
            raise InputError(f"no class names given (--classes {classes!r}): pass --classes a,b,c or --classes-file")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise InputError(f"class names repeat{f' in {classes_file}' if classes_file else ''}: {', '.join(repeated)}")
    return names


def read_templates(templates_file: Path | None, default: Sequence[str]) -> list[str]:
    """Prompt templates ("{c}" stands for the class name), one per line; `default` when no file is given."""
    if templates_file is None:
        return list(default)
    lines = [line.strip() for line in read_text(templates_file).text.splitlines()]
    templates = [t for t in lines if t]
    if not templates:
        raise InputError(f"{templates_file}: no prompt templates (one per line, with {{c}} for the class name)")
    for number, line in enumerate(lines, start=1):
        if line and "{c}" not in line:
            raise InputError(f"{templates_file} line {number}: template {line!r} has no {{c}} for the class name")
    return templates


def checked_templates(templates: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """The prompt templates given (`default` when None), each with "{c}" for the class name; InputError otherwise."""
    templates = list(templates) if templates is not None else list(default)
    if not templates or any("{c}" not in t for t in templates):
        raise InputError(f"prompt templates must be given and each hold {{c}} for the class name: {templates!r}")
    return templates


def each_once(inputs: Sequence[Input]) -> list[Input]:
    """`inputs` in order, each file once however it was written (`a.tif`, `x/../a.tif`, a symbolic link to it).

    The first spelling is kept. Anything not a `Path` (a URL) is compared as written.
    """
    seen: set[Any] = set()
    kept = []
    for item in inputs:
        identity = item.resolve() if isinstance(item, Path) else item
        if identity not in seen:
            seen.add(identity)
            kept.append(item)
    return kept


def check_output_names(inputs: Sequence[Input], name_of: Callable[[Input], str], files: str, outputs: str, verb: str) -> None:
    """InputError naming the first two `inputs` whose outputs would have the same file names in one --out folder.

    `name_of` gives the name an input's outputs take, `files` shows that name's files ("{0}.*"),
    `outputs` says what they are ("maps") and `verb` what the command does ("map").
    """
    first: dict[str, Input] = {}
    for item in inputs:
        name = name_of(item)
        if name in first:
            raise InputError(f"{first[name]} and {item}: their {outputs} would have the same file names ({files.format(name)}); "
                             f"{verb} them into different --out folders")
        first[name] = item


def run_each(inputs: Sequence[Input], run: Callable[[Input], None], out: Path, skip_unreadable: bool,
             echo: Callable[[str], None], name_of: Callable[[Input], str] = str) -> list[tuple[str, str]]:
    """`run(input)` for each input in turn: how the analyst commands that take many inputs treat one that fails.

    An InputError stops the run there; the inputs before keep their outputs, and with several inputs
    the message says what `--skip-unreadable` does. With `skip_unreadable`, the input is left out
    instead, `echo`ed as skipped, and the run goes on; at the end OUT/skipped.tsv lists the inputs
    left out (`input`, `reason`), a header alone when none was, so the file always speaks for the last
    run. Errors other than InputError (a bug, not a bad input) still stop the run. `name_of` names an
    input in those rows (default `str`).

    Returns the (input, reason) rows skipped. Raises InputError when every input was skipped.
    """
    skipped: list[tuple[str, str]] = []
    for item in inputs:
        try:
            run(item)
        except InputError as exc:
            if not skip_unreadable and len(inputs) == 1:
                raise
            if not skip_unreadable:
                raise InputError(f"{exc} ({SKIP_HINT})") from None
            name, reason = name_of(item), str(exc)
            reason = reason.removeprefix(f"{name}: ")  # the messages name their input first
            skipped.append((name, reason))
            echo(f"skipped {name}: {reason}")
    if skip_unreadable:
        text = io.StringIO()
        writer = csv.writer(text, dialect="excel-tab", lineterminator="\n")
        writer.writerows([("input", "reason"), *skipped])
        atomic_write_bytes(Path(out) / SKIPPED_FILE, text.getvalue().encode("utf-8"))
    if skipped and len(skipped) == len(inputs):
        raise InputError(f"none of the {len(inputs)} inputs could be used (listed in {Path(out) / SKIPPED_FILE}): "
                         + "; ".join(f"{name}: {reason}" for name, reason in skipped[:3]))
    return skipped


def export_folder(model: str | Path, device: str) -> Path:
    """The export folder `model`, after checking it exists and `device` can be used; InputError otherwise."""
    try:
        resolve_device(device)
    except RuntimeError as exc:
        raise InputError(f"--device {device}: {exc}") from None
    folder = Path(model)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder (an export written by `domainfm export`)")
    return folder


def load_encoder(model: str | Path | ClipEncoder, device: str = "auto", precision: Precision = "auto") -> ClipEncoder:
    """An exported open_clip model as an encoder; InputError naming the folder when it is not one (e.g. the CT volume model).

    A loaded encoder is returned as it is (its device and precision kept).
    """
    from pipelines.infer.clip import ClipEncoder

    if isinstance(model, ClipEncoder):
        return model
    return ClipEncoder.load(export_folder(model, device), device, precision)


def publish(out: Path, write: Callable[[Path], None]) -> None:
    """Run `write(staging)` in a temp folder beside `out`, then move each file it wrote into `out`.

    Nothing lands in `out` unless `write` finishes: a failure leaves `out` as it was (and no folder
    when it did not exist). Files of other runs in `out` (other inputs' maps) stay.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        write(staging)
        out.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def json_bytes(obj: Any, compact: bool = False) -> bytes:
    """UTF-8 JSON; `compact` for large GeoJSON (a map holds thousands of features), else indented."""
    if compact:
        return json.dumps(obj, separators=(",", ":"), default=json_default, ensure_ascii=False).encode("utf-8")
    return (json.dumps(obj, indent=2, default=json_default, ensure_ascii=False) + "\n").encode("utf-8")
