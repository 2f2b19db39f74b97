"""Bad pathology inputs: lecture videos with their transcripts, whole-slide images with their captions.

A video case writes two good lectures (64 px still H&E-like frames, 2 fps, 3 s per tissue, a cue
per segment) and one odd lecture, `odd.*`, with the bad file; `used=True` cases also require the
odd lecture's usable part to be curated. A slide case writes two small pyramidal slides (512 px,
0.5 um/px, two levels) with their captions table, and one bad slide or caption row.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bad_inputs import Case

PARAMS = {
    "video": {"sample_fps": 1.0, "image_size": 32, "min_window_s": 2.0, "max_median_frames": 3},
    "slides": {"target_mpp": 1.0, "tile_size": 32, "stride": 32, "max_tiles_per_slide": 4, "mask_level_max_dim": 256},
}
SEGMENT_S, FPS, SIZE = 3, 2, 64
NARRATION = {
    0: "Here we see adipose tissue with large empty fat cells.",
    1: "This lymph node is packed with lymphocytes.",
    2: "Pale mucus with very few cells.",
    3: "The stroma shows wavy collagen fibres.",
    4: "An adenocarcinoma with irregular glands.",
}
GOOD_LECTURES = {"lecture_a": ((0, 3), 1), "lecture_b": ((1, 4), 2)}  # name -> (tissue classes, seed)
BAD_CLASSES = (4, 0, 1, 3)  # the odd lecture's segments: other tissues than the good ones at the same times


# ---------------------------------------------------------------- lectures


def write_video(path: Path, classes: tuple[int, ...], seed: int, audio_only: bool = False) -> Path:
    """An H.264 lecture of SEGMENT_S seconds per tissue class (one still H&E frame each), or an audio-only file."""
    import av

    from domains.pathology.demo.demo_data import render_tissue

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        if audio_only:
            stream = out.add_stream("aac", rate=8000)
            samples = 1024 * 8
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode()]:
                out.mux(packet)
            return path
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "ultrafast"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for cls in classes:
            image = render_tissue(cls, SIZE, rng)
            for _ in range(SEGMENT_S * FPS):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def lecture_cues(classes: tuple[int, ...]) -> list[tuple[float, float, str]]:
    """One cue per segment, inside it: (start, end, text)."""
    return [(i * SEGMENT_S + 0.5, (i + 1) * SEGMENT_S - 0.5, NARRATION[c]) for i, c in enumerate(classes)]


def _stamp(t: float, sep: str) -> str:
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d}{sep}{int(round(t % 1 * 1000)):03d}"


def transcript_text(cues: list[tuple[float | str, float | str, str]], fmt: str) -> str:
    """A transcript in `fmt` (vtt, srt or json); a str start/end is written verbatim (a broken timestamp)."""
    if fmt == "json":
        return json.dumps({"text": " ".join(c[2] for c in cues), "segments": [{"start": a, "end": b, "text": t} for a, b, t in cues]})
    sep = "." if fmt == "vtt" else ","
    blocks = ["WEBVTT\n"] if fmt == "vtt" else []
    for i, (a, b, text) in enumerate(cues, 1):
        a, b = (x if isinstance(x, str) else _stamp(x, sep) for x in (a, b))
        blocks.append(f"{i}\n{a} --> {b}\n{text}\n")
    return "\n".join(blocks)


def write_lecture(folder: Path, name: str, classes: tuple[int, ...] = BAD_CLASSES, seed: int = 7, fmt: str = "vtt",
                  cues: list | None = None, encoding: str = "utf-8", suffix: str = ".mp4") -> tuple[Path, Path]:
    """A video and its transcript (cues narrating each segment unless given)."""
    video = write_video(folder / f"{name}{suffix}", classes, seed)
    transcript = folder / f"{name}.{fmt}"
    transcript.write_bytes(transcript_text(lecture_cues(classes) if cues is None else cues, fmt).encode(encoding))
    return video, transcript


def good_lectures(folder: Path) -> Path:
    """The good lectures in folder/videos."""
    videos = folder / "videos"
    for name, (classes, seed) in GOOD_LECTURES.items():
        write_lecture(videos, name, classes, seed)
    return videos


GOOD_VIDEOS = [f"{name}.mp4" for name in GOOD_LECTURES]


def _captions_contain(text: str):
    def check(out: Path) -> str | None:
        import pandas as pd

        captions = list(pd.read_parquet(out / "manifest.parquet")["caption"])
        return None if any(text in c for c in captions) else f"{text!r} not in any caption: {captions}"
    return check


def video_case(name: str, bad_lecture, bad: str, reason: str, expect: str = "reject", used: bool = False, check=None) -> Case:
    """A case of the good lectures plus `bad_lecture(videos)`; `used`: the odd lecture's pairs must be curated too."""
    def build(folder: Path) -> list[str]:
        videos = good_lectures(folder)
        bad_lecture(videos)
        return ["--videos", str(videos)]
    good = GOOD_VIDEOS + (["odd.mp4" if "odd.mkv" not in bad else "odd.mkv"] if used else [])
    return Case(name, "pathology", build, bad=bad, reason=reason, good=good, expect=expect, params=PARAMS, check=check)


def _cues(**changes: tuple) -> list:
    """The odd lecture's cues with some replaced (cue number -> (start, end, text))."""
    cues = [list(c) for c in lecture_cues(BAD_CLASSES)]
    for key, value in changes.items():
        cues[int(key[3:]) - 1] = list(value)
    return [tuple(c) for c in cues]


def _truncated(suffix: str):
    def write(videos: Path) -> None:
        video, _ = write_lecture(videos, "odd", suffix=suffix)
        data = video.read_bytes()
        video.write_bytes(data[: len(data) // 2])
    return write


def _frameless(videos: Path) -> None:
    import av

    with av.open(str(videos / "odd.mkv"), "w") as out:  # Matroska keeps a track without frames (MP4 drops it)
        stream = out.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        out.start_encoding()
    (videos / "odd.vtt").write_text(transcript_text(lecture_cues(BAD_CLASSES), "vtt"))


def _audio_only(videos: Path) -> None:
    write_video(videos / "odd.mkv", BAD_CLASSES, 7, audio_only=True)
    (videos / "odd.vtt").write_text(transcript_text(lecture_cues(BAD_CLASSES), "vtt"))


def _text(videos: Path, name: str, text: str | bytes) -> None:
    (videos / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def _odd(fmt: str = "vtt", transcript: str | bytes | None = None, **lecture):
    """Writes the odd lecture (a `fmt` transcript), then replaces the transcript's content when given."""
    def write(videos: Path) -> None:
        write_lecture(videos, "odd", fmt=fmt, **lecture)
        if transcript is not None:
            _text(videos, f"odd.{fmt}", transcript)
    return write


ACCENTED = "Dr. M\u00fcller's appendix shows neutrophils in the muscularis propria."
CURLY = "The appendix \u2013 so-called \u201cacute\u201d appendicitis \u2013 with neutrophils\u2019 infiltrate."
NARRATED = lecture_cues(BAD_CLASSES)

VIDEO_CASES = [
    video_case("path-latin1-srt", _odd("srt", encoding="latin-1", cues=[(0.5, 2.5, ACCENTED), *NARRATED[1:]]),
               bad="odd.srt", reason=r"not UTF-8.*(cp1252|latin)", expect="warning", used=True, check=_captions_contain("M\u00fcller")),
    video_case("path-cp1252-vtt", _odd(encoding="cp1252", cues=[(0.5, 2.5, CURLY), *NARRATED[1:]]),
               bad="odd.vtt", reason=r"not UTF-8.*cp1252", expect="warning", used=True, check=_captions_contain("\u201cacute\u201d")),
    video_case("path-cue-bad-timestamp", _odd(cues=_cues(cue2=("00:00:0x.500", "00:00:05.500", "oops"))),
               bad="odd.vtt#cue2", reason=r"transcript: .*(timestamp|malformed)", used=True),
    video_case("path-overlapping-cues", _odd("srt", cues=_cues(cue2=(2.0, 5.5, NARRATION[0]))),
               bad="odd.srt#cue2", reason=r"overlap", used=True),
    video_case("path-cue-end-before-start", _odd(cues=_cues(cue3=(8.5, 6.5, NARRATION[1]))),
               bad="odd.vtt#cue3", reason=r"end before start", used=True),
    video_case("path-cue-after-video-end", _odd(cues=[*NARRATED, (60.0, 62.0, NARRATION[2])]),
               bad="odd.vtt#cue5", reason=r"beyond .*duration", used=True),
    video_case("path-json-segment-without-times", _odd("json", cues=_cues(cue2=(None, 5.5, "x"))),
               bad="odd.json#cue2", reason=r"transcript: .*(malformed|timestamp|missing)", used=True),
    video_case("path-empty-transcript", _odd(transcript=""), bad="odd.vtt", reason=r"transcript: empty"),
    video_case("path-header-only-vtt", _odd(transcript="WEBVTT\n\n"), bad="odd.vtt", reason=r"transcript: (empty|no cue)"),
    video_case("path-invalid-json-transcript", _odd("json", '{"segments": [{"start": 0.5,'), bad="odd.json",
               reason=r"transcript: invalid JSON"),
    video_case("path-whisper-json-without-segments", _odd("json", json.dumps({"text": NARRATION[0], "language": "en"})),
               bad="odd.json", reason=r"transcript: .*segments"),
    video_case("path-transcript-without-usable-cue", _odd("srt", cues=[("0:0:x", "1", "a"), (9.0, 8.0, "b")]),
               bad="odd.srt", reason=r"transcript: no usable cue"),
    video_case("path-binary-transcript", _odd(transcript=b"\x00\x01\x02WEBVTT\x00" * 20), bad="odd.vtt",
               reason=r"transcript: not a text file"),
    video_case("path-truncated-mkv", _truncated(".mkv"), bad="odd.mkv", reason=r"video: .*(decode failed|truncated)", used=True),
    video_case("path-truncated-mp4", _truncated(".mp4"), bad="odd.mp4", reason=r"video: .*(cannot open|truncated|not a video)"),
    video_case("path-not-a-video", lambda v: (_text(v, "odd.mp4", "this is a text file, not a video\n" * 50),
                                              _text(v, "odd.vtt", transcript_text(NARRATED, "vtt"))),
               bad="odd.mp4", reason=r"video: .*(cannot open|not a video)"),
    video_case("path-zero-byte-video", lambda v: (_text(v, "odd.mp4", b""), _text(v, "odd.vtt", transcript_text(NARRATED, "vtt"))),
               bad="odd.mp4", reason=r"video: empty"),
    video_case("path-video-without-frames", _frameless, bad="odd.mkv", reason=r"video: .*no (video )?frames"),
    video_case("path-audio-only-video", _audio_only, bad="odd.mkv", reason=r"video: no video stream"),
    video_case("path-video-without-transcript", lambda v: write_video(v / "odd.mp4", BAD_CLASSES, 7),
               bad="odd.mp4", reason=r"transcript: no transcript"),
    video_case("path-transcript-without-video", lambda v: _text(v, "odd.vtt", transcript_text(NARRATED, "vtt")),
               bad="odd.vtt", reason=r"transcript: .*without (a )?video"),
    video_case("path-second-transcript-unused", lambda v: (write_lecture(v, "odd"), _text(v, "odd.srt", transcript_text(NARRATED, "srt"))),
               bad="odd.srt", reason=r"transcript: .*(unused|another transcript)", used=True),
    video_case("path-same-stem-videos", lambda v: (write_lecture(v, "odd"), write_video(v / "odd.mkv", BAD_CLASSES, 8)),
               bad="odd.mkv", reason=r"video: .*same (stem|name)"),
]


# ---------------------------------------------------------------- slides

SLIDE_MPP, SLIDE_SIZE = 0.5, 512
GOOD_SLIDES = {"slide_00": "H&E section of colon with adenocarcinoma.", "slide_01": "H&E section showing stroma and mucus."}


def slide_image(seed: int) -> np.ndarray:
    """Level-0 RGB of a small slide: tissue regions on glass and a pen stroke (the demo's renderer)."""
    from domains.pathology.demo.demo_data import PathologyDemoConfig, render_slide

    return render_slide(PathologyDemoConfig(slide_size=SLIDE_SIZE), seed)[0]


def write_slide(path: Path, image: np.ndarray, mpp: float | None = SLIDE_MPP, levels: int = 2) -> Path:
    """A tiled pyramidal TIFF openslide reads (MPP from its resolution tags; none when `mpp` is None)."""
    from domains.pathology.demo.demo_data import write_slide as write_demo_slide

    path.parent.mkdir(parents=True, exist_ok=True)
    if mpp is not None:
        write_demo_slide(path, image, mpp, levels)
        return path
    import tifffile

    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="zlib")
    return path


def write_captions(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("slide_id", "caption", "label"),
                   sep: str = ",", encoding: str = "utf-8") -> Path:
    """The captions table (no quoting: keep separators out of the cells)."""
    lines = [sep.join(header), *(sep.join(r) for r in rows)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def good_slides(folder: Path) -> tuple[Path, list[tuple[str, ...]]]:
    """The good slides in folder/slides, and their caption rows."""
    slides = folder / "slides"
    for i, sid in enumerate(GOOD_SLIDES):
        write_slide(slides / f"{sid}.tiff", slide_image(17 + i))
    return slides, [(sid, caption, "tumour") for sid, caption in GOOD_SLIDES.items()]


def slide_case(name: str, bad_slide, bad: str, reason: str, expect: str = "reject", good: list[str] | None = None, check=None,
               params: dict | None = None) -> Case:
    """A case of the good slides plus what `bad_slide(slides, rows)` adds; it returns the captions table's path or None."""
    def build(folder: Path) -> list[str]:
        slides, rows = good_slides(folder)
        captions = bad_slide(slides, rows) or write_captions(slides / "captions.csv", rows)
        return ["--slides", str(slides), "--slide-captions", str(captions)]
    return Case(name, "pathology", build, bad=bad, reason=reason, expect=expect, params={**PARAMS, **(params or {})}, check=check,
                good=["slide_00.tiff", "slide_01.tiff"] if good is None else good)


def _add_slide(name: str, image: np.ndarray | None = None, mpp: float | None = SLIDE_MPP, raw: bytes | None = None):
    """Adds a slide `name` (an image written as a slide, or raw bytes) and a caption row for it."""
    def add(slides: Path, rows: list) -> None:
        path = slides / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            write_slide(path, slide_image(30) if image is None else image, mpp)
        rows.append((Path(name).stem, "H&E section of the appendix.", "odd"))
    return add


def _truncated_slide(slides: Path, rows: list) -> None:
    path = write_slide(slides / "odd.tiff", slide_image(30))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    rows.append(("odd", "H&E section of the appendix.", "odd"))


def _corrupt_tiles(slides: Path, rows: list) -> None:
    """A slide that opens, and whose level-0 tiles fail to decode (garbage after each zlib header)."""
    import tifffile

    path = write_slide(slides / "odd.tiff", slide_image(30))
    with tifffile.TiffFile(path) as tif:
        tiles = list(zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts))
    data = bytearray(path.read_bytes())
    for offset, count in tiles:
        data[offset + 2 : offset + count] = b"\xff" * (count - 2)
    path.write_bytes(bytes(data))
    rows.append(("odd", "H&E section of the appendix.", "odd"))


def _rows(change):
    """A captions table written from the good rows after `change(rows)`."""
    def add(slides: Path, rows: list) -> Path:
        return write_captions(slides / "captions.csv", change(list(rows)))
    return add


def _copy_slide(slides: Path, rows: list) -> None:
    shutil.copy(slides / "slide_01.tiff", slides / "slide_01.svs")


ACCENTED_CAPTION = "Coupe H&E : ad\u00e9nocarcinome du c\u00f4lon"
SLIDE_CASES = [
    slide_case("path-slide-unreadable", _add_slide("odd.svs", raw=b"II*\x00" + b"\x00" * 200), bad="odd.svs",
               reason=r"slide: openslide cannot (open|read)"),
    slide_case("path-slide-zero-bytes", _add_slide("odd.tiff", raw=b""), bad="odd.tiff", reason=r"slide: (empty|openslide cannot open)"),
    slide_case("path-slide-truncated", _truncated_slide, bad="odd.tiff", reason=r"slide: openslide cannot (open|read)|truncat"),
    slide_case("path-slide-corrupt-tiles", _corrupt_tiles, bad="odd.tiff", reason=r"slide: openslide cannot read",
               params={"slides": {**PARAMS["slides"], "target_mpp": 0.5}}),  # tiles read at level 0, the corrupt one
    slide_case("path-slide-without-mpp", _add_slide("odd.tiff", mpp=None), bad="odd.tiff", reason=r"slide: .*resolution unknown"),
    slide_case("path-slide-too-coarse", _add_slide("odd.tiff", mpp=4.0), bad="odd.tiff", reason=r"slide: .*coarser"),
    slide_case("path-slide-without-tissue", _add_slide("odd.tiff", np.full((SLIDE_SIZE, SLIDE_SIZE, 3), 243, np.uint8)),
               bad="odd.tiff", reason=r"slide: no tissue"),
    slide_case("path-caption-for-missing-slide", _rows(lambda r: [*r, ("odd", "H&E section of the appendix.", "odd")]),
               bad="captions.csv#odd", reason=r"caption: .*without a slide"),
    slide_case("path-slide-without-caption", _rows(lambda r: r[:1]), bad="slide_01.tiff", reason=r"slide: no caption",
               good=["slide_00.tiff"]),
    slide_case("path-captions-missing-column", lambda s, r: write_captions(s / "captions.csv", r, header=("slide", "caption", "label")),
               bad="captions.csv", reason=r"slide_id", expect="error"),
    slide_case("path-captions-latin1-semicolons",
               lambda s, r: write_captions(s / "captions.csv", [r[0], (r[1][0], ACCENTED_CAPTION, "tumeur")], sep=";", encoding="latin-1"),
               bad="captions.csv", reason=r"not UTF-8.*(cp1252|latin)", expect="warning",
               # the accents, not the whole caption: the scrubber takes "Coupe" for a surname (philter's dictionary)
               check=_captions_contain("ad\u00e9nocarcinome du c\u00f4lon")),
    slide_case("path-duplicate-slide-id", _copy_slide, bad="slide_01.svs", reason=r"slide: duplicate slide id", good=["slide_00.tiff"]),
    slide_case("path-captions-conflicting-rows", _rows(lambda r: [*r, (r[1][0], "H&E section of normal liver.", "liver")]),
               bad="captions.csv#slide_01", reason=r"caption: .*(conflicting|duplicate)", good=["slide_00.tiff"]),
    slide_case("path-captions-empty-caption", _rows(lambda r: [r[0], (r[1][0], "", "tumour")]), bad="captions.csv#slide_01",
               reason=r"caption: empty caption", good=["slide_00.tiff"]),
]

CASES: list[Case] = [*VIDEO_CASES, *SLIDE_CASES]
