"""The curated pair format every domain writes, and the machinery that writes it.

A domain turns its inputs into `WorkUnit`s (a raster scene, a video, a volume) and gives a
module-level function `process(unit) -> UnitResult`. `run_curation` then:

1. maps units over an executor (pipelines/curation/executor.py: a unit that kills its worker is
   retried, then becomes a rejects row). Each finished unit is staged in the unit cache, a folder
   beside OUT (`.<OUT name>.units/`), under a name hashing the unit's key, its input files' content
   and the curation code's version (pipelines/curation/fingerprint.py), samples tar first and the
   JSON record that marks it done last. A rerun reuses a unit only when none of these changed; a
   unit that failed is never cached, so it is retried;
2. assigns splits by group (never by row), optionally applies a quality filter;
3. writes the whole output, `shards/{split}-{NNNNNN}.tar`, `manifest.parquet` (one row per pair),
   `rejects.csv` (input, stage, reason) and `summary.json` (counts per step), into a new folder that
   replaces OUT in one rename: a kill at any point leaves the previous output whole. A run that
   curates no pair does not replace an output that has pairs unless asked (`allow_empty`).

The output depends on the inputs and the parameters only: how a run got there (units reused from
the unit cache, a domain's own cache hits, `UnitResult.run_counts`) is logged and returned under
"run", never written, so a rerun writes the same bytes and DVC does not retrain downstream.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipelines.curation.executor import Executor, ExecutorName, make_executor
from pipelines.curation.fingerprint import code_version, unit_cache_name
from pipelines.curation.quality import QualityScorer
from pipelines.curation.splits import SPLITS, GroupSplitter, Splitter
from pipelines.errors import InputError
from pipelines.io.atomic import atomic_dir, atomic_write_json, json_default
from pipelines.io.digests import Fingerprints
from pipelines.io.manifest import write_manifest, write_rejects
from pipelines.io.png import encode_png
from pipelines.io.shards import SampleTarWriter, add_member, sample_key

log = logging.getLogger(__name__)


@dataclass
class Pair:
    """One curated image-text pair (image: HxWx3 uint8, HxW uint8, or a volume for npy)."""

    id: str
    group: str  # split unit: pairs sharing a group always land in the same split
    image: np.ndarray
    caption: str
    source: str  # input file the pair came from
    caption_variants: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable
    footprint: dict[str, Any] | None = None  # ground covered, GeoJSON geometry in lon/lat (imagery; see splits.py)


@dataclass
class Reject:
    """One input a curation step refused, and why (a row of rejects.csv)."""

    input: str  # what was rejected: a file, a file plus an object id, a tile...
    stage: str  # the curation step that rejected it
    reason: str  # a short, stable phrase (details belong in `input`)


@dataclass
class UnitResult:
    """What `process` returns for one work unit: its pairs, its rejects and its step counts."""

    pairs: list[Pair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # step name -> count, e.g. objects_seen
    warnings: list[str] = field(default_factory=list)  # inputs used with a caveat, naming the input (e.g. decoded as Latin-1)
    run_counts: Counter = field(default_factory=Counter)  # how this run got there (e.g. cache hits): returned, not written


@dataclass
class WorkUnit:
    """One independent piece of curation work (a scene, a video, a volume) handed to `process`."""

    key: str  # identity within a run, carrying the parameters that affect the unit (e.g. path + params digest)
    payload: Any  # picklable: whatever `process` needs
    inputs: Sequence[str] = ()  # the files (or folders) whose content the result depends on

    @property
    def label(self) -> str:
        """How rejects name the unit: its input files, else its key."""
        return ", ".join(map(str, self.inputs)) or self.key


ImageFormat = Literal["png", "jpg", "npy"]  # how a pair's image is stored in the shards (npy: CT volumes, any dtype)


@dataclass
class CurationConfig:
    """Settings every curation shares; a domain's config subclasses it and adds its own fields."""

    workers: int = 0
    shard_size: int = 1000
    image_format: ImageFormat = "png"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    allow_empty: bool = False  # let a run that curates no pair replace an output that has pairs
    executor: ExecutorName = "local"  # local: processes on this machine; ray: Ray tasks (RAY_ADDRESS, else a local Ray)

    def curation(self) -> "CurationConfig":
        """Just the shared settings (what run_curation takes), from a domain's config."""
        return CurationConfig(**{f.name: getattr(self, f.name) for f in fields(CurationConfig)})


# ---------------------------------------------------------------- staging one unit


class CurationRefused(InputError):
    """A run that would replace good output with nothing; the previous output is kept."""


def _encode_image(image: np.ndarray, fmt: ImageFormat) -> tuple[str, bytes]:
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return "npy", buf.getvalue()
    if image.dtype != np.uint8:
        raise ValueError(f"{fmt} images must be uint8, got {image.dtype}")
    if fmt == "png":
        return "png", encode_png(image)  # 10-25x Pillow's encoder, the same pixels (pipelines/io/png.py)
    if fmt == "jpg":
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
        return "jpg", buf.getvalue()
    raise ValueError(f"unknown image format {fmt!r}")


def failed_record(unit: WorkUnit, name: str, reason: str) -> dict[str, Any]:
    """The record of a unit that produced nothing: one rejects row naming its inputs."""
    return {"key": unit.key, "name": name, "failed": True, "pairs": [], "counts": {"units_failed": 1},
            "rejects": [{"input": unit.label, "stage": "unit", "reason": reason}]}


def stage_unit(process: Callable[[WorkUnit], UnitResult], staging: Path, image_format: ImageFormat, named: tuple[str, WorkUnit]) -> dict:
    """Run one unit and stage its samples under its cache name; returns the unit record.

    The record is also written as JSON, which marks the unit done for later runs; a unit whose
    `process` raised is returned as failed and not marked, so the next run tries it again.
    """
    name, unit = named
    record: dict[str, Any] = {"key": unit.key, "name": name, "pairs": [], "rejects": [], "counts": {}}
    try:
        result = process(unit)
    except Exception as exc:  # a broken input must not sink the run: it becomes a rejects row
        return failed_record(unit, name, f"{type(exc).__name__}: {exc}")

    tar_path = staging / f"{name}.tar"
    tmp = tar_path.with_name(f".{tar_path.name}.tmp-{os.getpid()}")
    seen: set[str] = set()
    with tarfile.open(tmp, "w") as tar:
        for pair in result.pairs:
            key = sample_key(pair.id)
            if key in seen:
                raise ValueError(f"duplicate pair id {pair.id!r} in unit {unit.key!r}")
            seen.add(key)
            ext, data = _encode_image(pair.image, image_format)
            add_member(tar, f"{key}.{ext}", data)
            record["pairs"].append(
                {
                    "id": pair.id,
                    "key": key,
                    "ext": ext,
                    "group": pair.group,
                    "caption": pair.caption,
                    "caption_variants": pair.caption_variants,
                    "source": pair.source,
                    "provenance": pair.provenance,
                    "footprint": pair.footprint,
                }
            )
    os.replace(tmp, tar_path)
    record["rejects"] = [r.__dict__ for r in result.rejects]
    record["counts"] = dict(result.counts)
    record["run_counts"] = dict(result.run_counts)
    record["warnings"] = list(result.warnings)
    atomic_write_json(staging / f"{name}.json", record, indent=None)  # written last: marks the unit done
    return record


def _read_unit_images(staging: Path, name: str) -> Iterator[tuple[str, bytes]]:
    path = staging / f"{name}.tar"
    if not path.exists():
        return
    with tarfile.open(path) as tar:
        for member in tar:
            f = tar.extractfile(member)
            if f is not None:
                yield member.name, f.read()


# ---------------------------------------------------------------- the run


# Decisions that need every unit's pairs at once (e.g. near-duplicates across videos): given the
# pair records (id, group, caption, provenance, ...), return the ids to drop with their Reject.
RowFilter = Callable[[list[dict[str, Any]]], dict[str, Reject]]


def unit_cache_dir(out: Path) -> Path:
    """Where run_curation keeps finished units for OUT: a hidden folder beside it, outside the output."""
    out = Path(out)
    return out.parent / f".{out.name}.units"


def _curation_code(process: Callable[[WorkUnit], UnitResult]) -> str:
    """The version of the code a unit's result depends on: the domain's curation package and ours."""
    module = sys.modules[process.__module__]
    package = Path(module.__file__).resolve().parent
    return code_version([package, Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "io"])


def _pairs_in(out: Path) -> int:
    """Pairs in an existing curated folder (0 when there is none)."""
    summary = out / "summary.json"
    if not summary.is_file():
        return 0
    try:
        return int(json.loads(summary.read_text())["pairs"]["kept"])
    except (ValueError, KeyError, TypeError):
        return 0


def run_curation(
    units: Sequence[WorkUnit],
    process: Callable[[WorkUnit], UnitResult],
    out: Path,
    config: CurationConfig,
    executor: Executor | None = None,
    pre_rejects: Sequence[Reject] = (),
    pre_counts: dict[str, int] | None = None,
    pre_warnings: Sequence[str] = (),
    quality_scorer: QualityScorer | None = None,
    quality_keep_fraction: float = 1.0,
    row_filter: RowFilter | None = None,
    splitter: Splitter | None = None,
) -> dict[str, Any]:
    """Curate `units` into OUT; returns the summary written, plus "run" (units reused, run counts).

    `pre_rejects`, `pre_counts` and `pre_warnings` come from reading inputs before any unit ran.

    `splitter` assigns the splits (default: by group, pipelines/curation/splits.py). The quality
    filter drops train pairs only: evaluation splits keep every pair, each with its score.
    Raises CurationRefused, keeping OUT as it was, when the run curates no pair while OUT holds
    some, unless `config.allow_empty`.
    """
    out = Path(out)
    staging = unit_cache_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    executor = executor or make_executor(config.executor, config.workers)
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError("work unit keys must be unique")

    fingerprints = Fingerprints(staging / "fingerprints.json")
    code = _curation_code(process)
    names = {u.key: unit_cache_name(u.key, u.inputs, fingerprints, code) for u in units}
    fingerprints.save()
    records: dict[str, dict] = {}
    todo: list[tuple[str, WorkUnit]] = []
    for unit in units:
        done = staging / f"{names[unit.key]}.json"
        if done.exists():
            records[unit.key] = json.loads(done.read_text())
        else:
            todo.append((names[unit.key], unit))
    cached = len(records)
    run = partial(stage_unit, process, staging, config.image_format)

    def crashed(named: tuple[str, WorkUnit], reason: str) -> dict[str, Any]:
        return failed_record(named[1], named[0], reason)

    progress = tqdm(executor.map_unordered(run, todo, crashed), total=len(todo), desc="curate", unit="unit", disable=None)
    run_counts: Counter = Counter()
    for record in progress:
        records[record["key"]] = record
        run_counts.update(record.get("run_counts", {}))

    # Deterministic order whatever the order units finished in.
    ordered = [records[k] for k in keys]
    rejects = [dict(r.__dict__) for r in pre_rejects]
    counts: Counter = Counter(pre_counts or {})
    warnings = list(pre_warnings)
    rows: list[dict[str, Any]] = []
    for record in ordered:
        rejects.extend(record["rejects"])
        counts.update(record["counts"])
        warnings.extend(record.get("warnings", []))
        rows.extend({**p, "unit": record["name"]} for p in record["pairs"])
    splitter = splitter or GroupSplitter(config.val_fraction, config.test_fraction, config.split_seed)
    rows, split_rejects, split_counts = splitter.assign(rows)
    rejects.extend(split_rejects)
    counts.update(split_counts)

    if row_filter is not None and rows:
        dropped_rows = row_filter(rows)
        rows = [r for r in rows if r["id"] not in dropped_rows]
        rejects.extend(dict(r.__dict__) for r in dropped_rows.values())
        counts["row_filter_dropped"] += len(dropped_rows)

    if quality_scorer is not None and quality_keep_fraction < 1.0 and rows:
        rows, dropped = _quality_filter(rows, staging, quality_scorer, quality_keep_fraction)
        rejects.extend({"input": r["id"], "stage": "quality", "reason": "image-caption score below keep threshold"} for r in dropped)
        counts["quality_dropped"] += len(dropped)

    failed = sum(bool(r.get("failed")) for r in ordered)
    summary = {
        "units": {"total": len(units), "failed": failed},
        "steps": dict(sorted(counts.items())),
        "pairs": {"kept": len(rows), "per_split": {s: sum(r["split"] == s for r in rows) for s in SPLITS}},
        "rejected": dict(sorted(Counter(f"{r['stage']}: {r['reason']}" for r in rejects).items())),
        "warnings": list(dict.fromkeys(warnings)),
    }
    previous = _pairs_in(out)
    if not rows and previous and not config.allow_empty:
        shown = "; ".join(f"{r['input']}: {r['reason']}" for r in rejects[:10]) or "no inputs"
        raise CurationRefused(
            f"this run curated no pair, so {out} (with {previous} pairs) was left as it was; pass --allow-empty "
            f"to replace it. {len(rejects)} reject(s): {shown}"
        )
    for warning in summary["warnings"]:
        log.warning(warning)
    with atomic_dir(out) as fresh:
        _write_shards(rows, staging, fresh, config.shard_size)
        write_manifest(rows, fresh)
        write_rejects(rejects, fresh)
        atomic_write_json(fresh / "summary.json", summary)
    run_state = {"units_cached": cached, "units_processed": len(todo) - failed, **dict(sorted(run_counts.items()))}
    log.info("curation run: %s", ", ".join(f"{k} {v}" for k, v in run_state.items()))
    return {**summary, "run": run_state}


def _quality_filter(
    rows: list[dict[str, Any]], staging: Path, scorer: QualityScorer, keep_fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    images: dict[tuple[str, str], bytes] = {}
    for unit in dict.fromkeys(r["unit"] for r in rows):
        for member, data in _read_unit_images(staging, unit):
            images[(unit, member)] = data
    scores = scorer([images[(r["unit"], f"{r['key']}.{r['ext']}")] for r in rows], [r["caption"] for r in rows])
    for row, score in zip(rows, scores):
        row["quality_score"] = float(score)
    # Only training data is filtered: an evaluation split keeps every pair (with its score), so
    # the filter cannot make the test set easier.
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    n_keep = max(1, int(round(keep_fraction * len(train)))) if train else 0
    order = sorted(train, key=lambda i: -rows[i]["quality_score"])  # stable: ties keep their order
    dropped = set(order[n_keep:])
    return [r for i, r in enumerate(rows) if i not in dropped], [r for i, r in enumerate(rows) if i in dropped]


def _write_shards(rows: list[dict], staging: Path, out: Path, shard_size: int) -> None:
    fresh = out / "shards"
    fresh.mkdir(parents=True)
    by_unit: dict[str, list[dict]] = {}
    for r in rows:
        by_unit.setdefault(r["unit"], []).append(r)
    writers: dict[str, tuple[SampleTarWriter, int, int]] = {}  # split -> (writer, shard index, count)

    def writer_for(split: str) -> SampleTarWriter:
        w, idx, n = writers.get(split, (None, -1, shard_size))
        if w is None or n >= shard_size:
            if w is not None:
                w.close()
            idx += 1
            w = SampleTarWriter(fresh / f"{split}-{idx:06d}.tar")  # fixed mtime: byte-identical reruns
            n = 0
        writers[split] = (w, idx, n + 1)
        return w

    for unit, unit_rows in by_unit.items():
        wanted = {f"{r['key']}.{r['ext']}": r for r in unit_rows}
        for member, data in _read_unit_images(staging, unit):
            r = wanted.get(member)
            if r is None:
                continue
            w = writer_for(r["split"])
            r["shard"] = f"{r['split']}-{writers[r['split']][1]:06d}.tar"
            meta = {
                "id": r["id"],
                "caption_variants": r["caption_variants"],
                "source": r["source"],
                "provenance": r["provenance"],
                "group": r["group"],
            }
            if "quality_score" in r:
                meta["quality_score"] = r["quality_score"]
            w.write(
                {
                    "__key__": r["key"],
                    r["ext"]: data,
                    "txt": r["caption"],
                    "json": json.dumps(meta, sort_keys=True, default=json_default).encode(),
                }
            )
    for w, _, _ in writers.values():
        w.close()
