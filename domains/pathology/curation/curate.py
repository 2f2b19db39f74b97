"""`domainfm curate pathology`: narrated lecture videos (Quilt-1M's method) and whole-slide images.

Videos and slides are independent work units of one run: video units go to
`video.process_video`, slide units to `slides.process_slide`. Near-duplicate images across videos
(which Quilt does not remove) are dropped after all units finish, by perceptual hash.

De-identification (pipelines/deid): transcript cues and slide captions are scrubbed before use;
patient ids and slide ids holding identifiers (the patient part of a TCGA barcode unless
`slides.tcga_keep` keeps it) become keyed pseudonyms (`--key-file` or $DOMAINFM_PSEUDONYM_KEY; an
error without one only when there is something to pseudonymise).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from domains.pathology.curation.slides import SlideConfig, plan_slide_units, process_slide
from domains.pathology.curation.video import (
    REASON_NO_TRANSCRIPT,
    REASON_NO_VIDEO,
    VIDEO_SUFFIXES,
    VideoConfig,
    dedupe_across_videos,
    plan_video_units,
    process_video,
)
from pipelines.curation import EXECUTOR_HELP, CurationConfig, ExecutorName, Reject, UnitResult, WorkUnit, run_curation
from pipelines.deid import PseudonymKey, load_key, warm_up
from pipelines.errors import InputError
from pipelines.io.text import read_table
from pipelines.params import read

VIDEO, SLIDE = "video", "slide"


@dataclass
class PathologyCurateConfig(CurationConfig):
    """params.yaml `pathology.curate`: the shared curation settings plus videos' and slides'."""

    video: VideoConfig = field(default_factory=VideoConfig)
    slides: SlideConfig = field(default_factory=SlideConfig)


def process(unit: WorkUnit) -> UnitResult:
    """Process one unit with the video or the slide curation, as its payload's kind says."""
    kind, payload = unit.payload
    inner = WorkUnit(unit.key, payload, unit.inputs)
    return process_video(inner) if kind == VIDEO else process_slide(inner)


def read_video_groups(path: Path) -> tuple[dict[str, str], list[Reject], list[str]]:
    """The --video-groups table: video (path relative to --videos, file name or stem) -> group."""
    table, warnings = read_table(path, ("video", "group"), "video groups")
    groups: dict[str, str] = {}
    rejects: list[Reject] = []
    for i, row in table.iterrows():
        video, group = row["video"].strip(), row["group"].strip()
        if not video or not group:
            rejects.append(Reject(f"{path}#row{i + 2}", "groups", "row without video or group"))
        elif groups.get(video, group) != group:
            rejects.append(Reject(f"{path}#row{i + 2}", "groups", f"{video} is given two groups"))
        else:
            groups[video] = group
    return groups, rejects, warnings


def curate(videos: Optional[Path], slides: Optional[Path], slide_captions: Optional[Path], out: Path, cfg: PathologyCurateConfig,
           video_groups: Optional[Path] = None, key: Optional[PseudonymKey] = None) -> dict:
    """Curate videos and/or captioned slides into OUT, dropping near-duplicate frames across videos; returns the summary.

    `slide_captions` is required when `slides` is given; `video_groups` optionally groups videos for splits.
    Transcripts and captions are de-identified (pipelines.deid); `key` (default: $DOMAINFM_PSEUDONYM_KEY,
    if set) pseudonymises patient ids and identifying slide ids, and is required only when there are some.
    """
    key = key or load_key(None, required=False)
    warm_up()  # load the de-identification filters once, before workers fork
    video_cfg = cfg.video
    units: list[WorkUnit] = []
    rejects: list[Reject] = []
    warnings: list[str] = []
    groups: dict[str, str] = {}
    if video_groups is not None:
        groups, group_rejects, group_warnings = read_video_groups(video_groups)
        rejects += group_rejects
        warnings += group_warnings
    if videos is not None:
        video_units, video_rejects = plan_video_units(videos, video_cfg, groups)
        units += [WorkUnit(u.key, (VIDEO, u.payload), u.inputs) for u in video_units]
        rejects += video_rejects
        if not video_units and not video_rejects:
            warnings.append(f"{videos}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
    if slides is not None:
        slide_units, slide_rejects, slide_warnings = plan_slide_units(slides, slide_captions, cfg.slides, key)
        units += [WorkUnit(u.key, (SLIDE, u.payload), u.inputs) for u in slide_units]
        rejects += slide_rejects
        warnings += slide_warnings

    def cross_video(rows: list[dict]) -> dict[str, Reject]:
        video_rows = [r for r in rows if "phash" in r["provenance"] and "video_id" in r["provenance"]]
        drop = dedupe_across_videos(video_rows, video_cfg.phash_max_distance)
        return {i: Reject(i, "dedupe", "near-duplicate across videos") for i in drop}

    pre_counts = Counter({"videos_without_transcript": sum(r.reason == REASON_NO_TRANSCRIPT for r in rejects),
                          "transcripts_without_video": sum(r.reason == REASON_NO_VIDEO for r in rejects)})
    return run_curation(units, process, out, cfg.curation(), pre_rejects=rejects, pre_counts=pre_counts, pre_warnings=warnings,
                        row_filter=cross_video)


def curate_command(
    videos: Optional[Path] = typer.Option(
        None, "--videos", help="Folder of lecture videos, each with a .vtt/.srt/.json transcript of the same stem."
    ),
    slides: Optional[Path] = typer.Option(None, "--slides", help="Folder of whole-slide images openslide reads."),
    slide_captions: Optional[Path] = typer.Option(
        None, "--slide-captions", help="CSV with slide_id (file stem) and caption columns [, patient_id: one split per patient]."
    ),
    video_groups: Annotated[Optional[Path], typer.Option(
        "--video-groups", help="CSV with video (path under --videos, or its name) and group columns: videos of a group share a split."
    )] = None,
    out: Path = typer.Option(..., "--out", help="Output folder for the curated pairs."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; section pathology.curate."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0: in process)."),
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Replace an output that has pairs even when this run curates none.")
    ] = False,
    key_file: Annotated[Optional[Path], typer.Option(
        "--key-file", help="File holding the secret pseudonym key (else $DOMAINFM_PSEUDONYM_KEY); needed for patient ids.")] = None,
    executor: Annotated[Optional[ExecutorName], typer.Option("--executor", help=EXECUTOR_HELP)] = None,
) -> dict:
    """Curate histopathology image-text pairs from narrated videos and/or captioned whole-slide images."""
    if videos is None and slides is None:
        raise typer.BadParameter("give --videos and/or --slides")
    for path, name in ((videos, "--videos"), (slides, "--slides")):
        if path is not None and not path.is_dir():
            raise typer.BadParameter(f"{name} folder not found: {path}")
    if slides is not None and (slide_captions is None or not slide_captions.is_file()):
        found = "" if slide_captions is None else f" ({slide_captions} not found)"
        raise typer.BadParameter(f"--slides needs --slide-captions, a CSV with slide_id and caption columns{found}")
    if slides is None and slide_captions is not None:
        raise typer.BadParameter("--slide-captions needs --slides, the folder of the slides it captions")
    try:
        cfg = read(params, PathologyCurateConfig, "pathology", "curate", workers=workers, allow_empty=allow_empty or None,
                   executor=executor)
        summary = curate(videos, slides, slide_captions, out, cfg, video_groups, load_key(key_file, required=False))
    except InputError as exc:
        # Said here: pipelines/cli.py turns InputError into a click.ClickException that typer's vendored
        # click does not catch (typer >= 0.2x), so there it ends in a traceback.
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"pathology: {summary['pairs']['kept']} pairs {json.dumps(summary['pairs']['per_split'])} -> {out}")
    return summary
