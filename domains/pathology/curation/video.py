"""Image-text pairs from narrated pathology videos: Quilt-1M's video curation, reimplemented.

Per video (one work unit):

1. sample frames at `sample_fps` with PyAV, decoding only the groups of pictures that hold a picked
   frame, up to it, several at once, and skipping unreferenced frames, rather than decoding every frame
   (`sample_frames`; `sample_frames_seeking` and `decode_all_frames` for comparison); with
   `frame_choice: nearest_keyframe` a target takes the nearest keyframe within
   `max_keyframe_offset_s` instead of its exact frame (sample times, hence window bounds, move by
   up to that offset; far fewer frames decoded);
2. cut scenes where the mean absolute difference of consecutive downsampled grey samples exceeds
   `scene_threshold`; classify each sample as histology or not (stain.py rules, or a learned
   classifier from `classifier_checkpoint`); non-histology runs become reject rows with the reason;
3. group consecutive histology samples of one scene whose SSIM stays >= `ssim_threshold` into stable
   windows; windows shorter than `min_window_s` are dropped; the image of a window is the per-pixel
   median of its frames (noise, cursor and compression artefacts fade), resized on the shorter side
   and centre-cropped to `image_size`;
4. drop near-duplicate windows within the video (perceptual hash, Hamming <= `phash_max_distance`);
   across videos, `cross_video_duplicates` / `dedupe_across_videos` run after all units finish;
5. caption = the cleaned narration of the cues overlapping [start - text_margin_s, end + text_margin_s]
   (text.py); windows with no medical sentence are rejected.

Pairs: `caption` = cleaned text; `caption_variants` = {"terms": "term, term, ..."} when terms were
found (a keyword caption for training and retrieval); `group` = the video id (no video spans splits).

The video id (hence pair ids, groups and splits) comes from the video's path relative to the
`--videos` folder, never from how that folder was spelled on the command line: the same videos
curated through a relative or an absolute path give the same manifest.

Planning (`plan_video_units`) pairs each video with the transcript of the same stem in the same
folder (subfolders included) and names every file it cannot pair in a rejects row: a video without
a transcript, a transcript without a video, a second transcript of a video, videos sharing a stem
(which one the transcript narrates is ambiguous). A video that cannot be used (empty file, not a
video, no video stream, no frames) or whose transcript has no usable cue is one rejects row with
the reason; a video that stops decoding midway keeps the pairs of its decodable part.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Iterator, Literal, Optional, Sequence

import av
import imagehash
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image
from skimage.metrics import structural_similarity

from domains.pathology.curation import CORES, THREADS
from domains.pathology.curation.stain import DetectorConfig, FrameDetector, load_classifier, make_detector
from domains.pathology.curation.text import clean_text, load_vocabulary
from domains.pathology.curation.transcript import STAGE as STAGE_TRANSCRIPT
from domains.pathology.curation.transcript import TRANSCRIPT_SUFFIXES, Cue, TranscriptError, cues_in_window, parse_transcript
from pipelines.curation import Pair, Reject, UnitResult, WorkUnit

VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".mkv", ".avi", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")
STAGE_VIDEO = "video"
STAGE_FRAME = "frame"
STAGE_WINDOW = "window"
STAGE_TEXT = "text"
STAGE_DEDUPE = "dedupe"

REASON_EMPTY_FILE = "empty video file"
REASON_CANNOT_OPEN = "cannot open as a video (corrupt, truncated or not a video)"
REASON_NO_STREAM = "no video stream"
REASON_NO_FRAMES = "no video frames decoded"
REASON_DECODE_MIDWAY = "decode failed midway"
REASON_NO_TRANSCRIPT = "no transcript"
REASON_NO_VIDEO = "transcript without a video"
REASON_SECOND_TRANSCRIPT = "unused: another transcript of this video is used"
REASON_SAME_STEM = "another video has the same stem (which one the transcript narrates is ambiguous)"
_ANALYSIS = 64  # side of the grey thumbnails used for scene cuts and SSIM
FrameChoice = Literal["exact", "nearest_keyframe"]
# Groups of pictures sample_frames decodes at once (a decoder each), and how many picked frames of each may wait
# for the caller
DECODE_THREADS = THREADS
_FRAMES_AHEAD_PER_GOP = 2


@dataclass
class VideoConfig:
    """params.yaml section pathology.curate.video."""

    sample_fps: float = 1.0  # frames examined per second of video
    # "exact": the frame at each target time (decode-all's frame); "nearest_keyframe": the nearest
    # keyframe when one lies within max_keyframe_offset_s of the target (no decoding up to a frame
    # mid-GOP), else the exact frame. Sample times, hence window bounds, move by up to that offset.
    frame_choice: FrameChoice = "exact"
    max_keyframe_offset_s: float = 1.0  # used by frame_choice "nearest_keyframe" only
    scene_threshold: float = 0.12  # mean |diff| of 64x64 grey thumbnails (0..1) that cuts a scene
    ssim_threshold: float = 0.8  # consecutive histology samples with SSIM >= this share a window
    min_window_s: float = 2.0  # shorter stable windows are dropped (Quilt: brief glimpses are noise)
    text_margin_s: float = 2.0  # narration often lags or leads the picture
    image_size: int = 224  # shorter side resized to this, then centre-cropped square
    max_median_frames: int = 15  # frames (evenly spread over the window) in the per-pixel median
    phash_max_distance: int = 8  # Hamming distance (of 64) at or below which windows are duplicates
    # Histology detector (stain.DetectorConfig)
    min_std: float = 6.0
    min_tissue_fraction: float = 0.05
    min_he_fraction: float = 0.4
    max_skin_fraction: float = 0.25
    text_background_fraction: float = 0.8
    classifier_checkpoint: Optional[str] = None  # safetensors logistic regression, see stain.LogisticClassifier
    extra_vocabulary: list[str] = field(default_factory=list)

    def detector(self) -> DetectorConfig:
        """The histology detector's settings (the rest keep DetectorConfig's defaults)."""
        return DetectorConfig(
            min_std=self.min_std,
            min_tissue_fraction=self.min_tissue_fraction,
            min_he_fraction=self.min_he_fraction,
            max_skin_fraction=self.max_skin_fraction,
            text_background_fraction=self.text_background_fraction,
        )


@dataclass
class VideoJob:
    """The payload of one video's work unit: the video, its transcript and the settings."""

    video: str
    transcript: str
    config: dict[str, Any]  # VideoConfig as a dict
    video_id: str = ""  # from the path relative to the --videos folder (see `video_id`); "" = from the file name
    group: str = ""  # split group from the --video-groups table (e.g. a course or lecturer); "" = the video itself


# ---------------------------------------------------------------- decoding


class DecodeError(RuntimeError):
    """Decoding stopped before the end of the video; frames yielded before it are good."""


class NoVideoStream(DecodeError):
    """The file opens but holds no video stream (an audio-only file)."""


@dataclass
class DecodeStats:
    """What sample_frames did: frames decoded, seeks, the stream's duration and the last frame time."""

    frames_decoded: int = 0  # every frame the decoder produced, sampled or not
    seeks: int = 0
    duration_s: Optional[float] = None
    last_t: Optional[float] = None


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise NoVideoStream("no video stream")
    return container.streams.video[0]


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float:
    start = stream.start_time or 0
    return float((frame.pts - start) * stream.time_base) if frame.pts is not None else float(frame.time or 0.0)


class RgbConverter:
    """Decoded frames to HxWx3 uint8 arrays, all through one swscale context.

    PyAV's `frame.to_ndarray(format="rgb24")` sets up a reformatter, hence a swscale context, for
    every frame: 4x the conversion's cost (0.53 ms against 0.13 ms a 640x360 frame). The pixels are
    the same (tests/test_pathology_video.py compares them). One converter per thread.
    """

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        """The frame's pixels as RGB."""
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()


@contextlib.contextmanager
def _open_video(path: str | Path, stats: DecodeStats) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream, threaded decoding on; the stated duration goes to `stats`."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise DecodeError(f"cannot open: {exc}") from exc
    with container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"  # frame and slice threads: the fastest measured (benchmarks/video_decode.py)
        # one thread a core: FFmpeg's default (cores + 1) decoded 13% slower on 2 cores
        stream.thread_count = CORES
        stats.duration_s = _duration(container, stream)
        yield container, stream


def _frame_interval(stream: av.video.stream.VideoStream) -> float:
    """Seconds between frames at the stream's average rate; 0 when it states none."""
    return float(1 / stream.average_rate) if stream.average_rate else 0.0


def video_duration(path: str | Path) -> Optional[float]:
    """Seconds of the first video stream (else of the container); None when neither states it."""
    with av.open(str(path)) as container:
        return _duration(container, _video_stream(container))


def sample_frames_seeking(
    path: str | Path, fps: float = 1.0, stats: Optional[DecodeStats] = None, first_target: int = 0
) -> Iterator[tuple[float, np.ndarray]]:
    """(t_seconds, HxWx3 uint8) at t = first_target/fps, (first_target+1)/fps, ... by seeking.

    The previous sampler, kept as `sample_frames`' fallback for streams it cannot plan (packets
    without timestamps, open GOPs) and as the benchmark's "before".

    For each target the decoder seeks to the keyframe at or before it (backward seek on the
    stream) and decodes forward to the first frame at the target; when the target is closer
    than one observed keyframe interval it just keeps decoding forward (a seek would land on the
    same keyframe and decode the same frames again). Raises DecodeError when decoding fails
    midway or the stream ends before its stated duration; the frames already yielded stand.
    """
    stats = stats if stats is not None else DecodeStats()
    step = 1.0 / fps
    with _open_video(path, stats) as (container, stream):
        duration = stats.duration_s
        frame_dt = _frame_interval(stream)
        start = stream.start_time or 0
        frames: Optional[Iterator[av.VideoFrame]] = None
        rgb = RgbConverter()
        cur_t = -np.inf  # time of the last decoded frame
        gop = 0.0  # keyframe interval estimate: seek only when a keyframe is expected past cur_t
        last_key = -np.inf
        k = first_target
        try:
            while duration is None or k * step < duration - 1e-6:
                target = k * step
                k += 1
                if cur_t >= target - frame_dt / 2:
                    continue  # sparse frames: the last decoded one already lies past this target
                if frames is None or (target - cur_t > 2 * frame_dt and last_key + gop <= target + 1e-6):
                    container.seek(start + int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                    stats.seeks += 1
                    frames = container.decode(stream)
                    landed_before = cur_t
                else:
                    landed_before = None
                frame = None
                for frame in frames:
                    t = _frame_time(frame, stream)
                    stats.frames_decoded += 1
                    if landed_before is not None:
                        if t <= landed_before:  # landed on a keyframe already passed: the GOP is long
                            gop = max(2 * gop, target - t + step)
                        landed_before = None
                    if frame.key_frame:
                        if t > last_key > -np.inf:
                            gop = max(gop, t - last_key)
                        last_key = max(last_key, t)
                    cur_t = t
                    if t >= target - frame_dt / 2:
                        break
                else:
                    frame = None
                if frame is None:  # stream ended
                    if duration is not None and target < duration - max(step, 1.0):
                        raise DecodeError(f"stream ended at {max(cur_t, 0):.2f}s of {duration:.2f}s")
                    return
                stats.last_t = cur_t
                yield cur_t, rgb(frame)
        except av.FFmpegError as exc:
            raise DecodeError(f"decode failed after {stats.last_t}s: {exc}") from exc


@dataclass
class _GopEnd:
    """The end of one group of pictures' frames: how many the decoder output, and why it stopped early, if it did."""

    decoded: int  # every frame the decoder output (reference frames on the way included)
    error: Optional[str] = None  # FFmpeg's error, when decoding failed in this GOP
    crash: Optional[BaseException] = None  # anything else that went wrong in the decoder's thread


@dataclass
class _GopJob:
    """One group of pictures to decode: the pts of its picked frames, and the queue they come out of, then a _GopEnd."""

    picks: list[int]  # ascending
    out: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=_FRAMES_AHEAD_PER_GOP))


class _GopDecoders:
    """Groups of pictures decoded `threads` at a time, each thread with its own decoder; frames out in order.

    A GOP (keyframe to next keyframe) of a closed-GOP stream decodes without the frames before it, so
    GOPs are independent work: each thread's decoder is opened on the same file (its own container,
    the stream's parameters) and reset after each GOP. Decoding lets go of the GIL, and one decoder's
    frame threads cannot run ahead along a chain of reference frames, so two GOPs at once beat one
    decoder with two threads (benchmarks/video_decode.py). At most `2 * threads` GOPs are decoded
    ahead of the caller, each up to `_FRAMES_AHEAD_PER_GOP` picked frames ahead (bounded memory,
    whatever the length of a GOP).
    """

    def __init__(self, path: str | Path, threads: int) -> None:
        self.path, self.threads = str(path), threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gop-decoder")
        self._pending: deque[_GopJob] = deque()
        self._futures: list[Future[None]] = []
        self._stop = threading.Event()
        self._own = threading.local()
        self._containers: list[av.container.InputContainer] = []
        self._lock = threading.Lock()

    def _decoder(self) -> tuple[av.codec.context.CodecContext, RgbConverter]:
        """This thread's decoder and frame converter (made on its first GOP)."""
        if not hasattr(self._own, "ctx"):
            container = av.open(self.path)
            with self._lock:
                self._containers.append(container)
            self._own.ctx = _video_stream(container).codec_context
            # slice threads only: the GOPs are the frame-level parallelism (frame threads measured slower beside them)
            self._own.ctx.thread_type = "SLICE"
            self._own.rgb = RgbConverter()
        return self._own.ctx, self._own.rgb

    def _put(self, job: _GopJob, item: Any) -> bool:
        """Hand an item to the caller, waiting while the GOP's queue is full; False once the caller has stopped."""
        while not self._stop.is_set():
            try:
                job.out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self, job: _GopJob, gop: list[av.Packet]) -> None:
        """Decode only what the picked frames need, handing them on as they come, then a _GopEnd.

        Packets after the last picked one (in decode order) are never sent; before it, frames that
        nothing references (B-frames mostly) are skipped unless picked (`skip_frame` is read per packet).
        """
        end = _GopEnd(0)
        wanted = set(job.picks)
        last = max(i for i, p in enumerate(gop) if p.pts in wanted)
        ctx = None
        try:
            ctx, rgb = self._decoder()
            for packet in [*gop[: last + 1], None]:  # None: the frames the decoder still holds (reordering delay)
                ctx.skip_frame = "DEFAULT" if packet is None or packet.pts in wanted else "NONREF"
                for frame in ctx.decode(packet):
                    end.decoded += 1
                    if frame.pts in wanted and not self._put(job, (frame.pts, rgb(frame))):
                        return
        except av.FFmpegError as exc:
            end.error = str(exc)
        except Exception as exc:  # the caller re-raises it in its own thread
            end.crash = exc
        finally:
            if ctx is not None:
                ctx.flush_buffers()  # ready for a GOP from any other part of the stream
            self._put(job, end)

    def submit(self, gop: list[av.Packet], picks: list[int]) -> None:
        """Start decoding a GOP's picked frames (pts in `picks`, ascending)."""
        job = _GopJob(picks)
        self._futures.append(self._pool.submit(self._decode, job, gop))
        self._pending.append(job)

    def done(self, everything: bool = False) -> Iterator[_GopJob]:
        """The oldest GOPs, to read their frames from, while too many are ahead (all of them when `everything`)."""
        while self._pending and (everything or len(self._pending) >= 2 * self.threads):
            yield self._pending.popleft()

    def close(self) -> None:
        """Stop: GOPs not started are dropped, threads waiting on the caller let go, their containers closed."""
        self._stop.set()
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)
        for container in self._containers:
            container.close()


def sample_frames(
    path: str | Path, fps: float = 1.0, stats: Optional[DecodeStats] = None, max_keyframe_offset_s: Optional[float] = None
) -> Iterator[tuple[float, np.ndarray]]:
    """(t_seconds, HxWx3 uint8) at t = 0, 1/fps, 2/fps, ...: the first frame at or after each target.

    The frame for target t is the first frame (in presentation order) whose time is at least
    t - half a frame; a target whose frame was already delivered for the previous target is
    skipped (sparse frames). One pass over the packets, one group of pictures (keyframe to next
    keyframe) at a time: from packet timestamps alone it knows which frames the targets pick, so a
    GOP without one is never decoded, decoding stops at the last picked frame of its GOP, and
    frames no other frame references are skipped. `DECODE_THREADS` GOPs are decoded at once, each
    by its own decoder, and their frames delivered in order. The frames are those `sample_frames_seeking`
    and `decode_all_frames` give at the same times (tests/test_pathology_video.py compares pts and
    pixels). Streams it cannot plan (packets without pts, open GOPs whose frames precede their
    keyframe) continue with `sample_frames_seeking` from the next target.

    With `max_keyframe_offset_s` (None: exact frames, as above) a target takes the keyframe nearest
    to it (the earlier on a tie) when that lies within the offset, else its exact frame: a keyframe
    costs one decode, a frame mid-GOP the reference frames before it. Every yielded frame is a
    real frame at its own time, within the offset of its target; a target whose keyframe was
    already yielded for the previous target is skipped (as sparse frames are), so with an offset of
    half the keyframe interval or more only keyframes are decoded. Streams it cannot plan fall back
    to exact frames.

    Raises DecodeError when decoding fails midway or the stream ends before its stated duration;
    the frames already yielded stand.
    """
    if not fps > 0:
        raise ValueError(f"sample fps must be > 0, got {fps}")
    if max_keyframe_offset_s is not None and not max_keyframe_offset_s >= 0:
        raise ValueError(f"max keyframe offset must be >= 0 s, got {max_keyframe_offset_s}")
    stats = stats if stats is not None else DecodeStats()
    step = 1.0 / fps
    with _open_video(path, stats) as (container, stream):
        duration = stats.duration_s
        frame_dt = _frame_interval(stream)
        start = stream.start_time or 0

        tb_num, tb_den = stream.time_base.numerator, stream.time_base.denominator

        def seconds(pts: int) -> float:
            # int / int is correctly rounded: the float of the Fraction (pts - start) * time_base, without building one per packet
            return (pts - start) * tb_num / tb_den

        k = 0  # next target index
        delivered = -np.inf  # time of the last yielded frame
        fallback = False

        def outputs(jobs: Iterable[_GopJob]) -> Iterator[tuple[float, np.ndarray]]:
            for job in jobs:
                expected = deque(job.picks)
                while not isinstance(item := job.out.get(), _GopEnd):
                    pts, rgb = item
                    if pts != expected[0]:
                        raise DecodeError(f"the frame at {seconds(expected[0]):.2f}s did not decode")
                    expected.popleft()
                    stats.last_t = seconds(pts)
                    yield stats.last_t, rgb
                stats.frames_decoded += item.decoded
                if item.crash is not None:
                    raise item.crash
                if item.error is not None:
                    raise DecodeError(f"decode failed after {stats.last_t}s: {item.error}")
                if expected:
                    raise DecodeError(f"the frame at {seconds(expected[0]):.2f}s did not decode")

        def plan(times: list[tuple[float, int]], next_key: float, key: Optional[tuple[float, int]]) -> list[int]:
            """Pts of the GOP's frames the targets pick (advances k); `times` sorted (seconds, pts), `key` its keyframe."""
            nonlocal k, delivered
            picks: list[int] = []
            while duration is None or k * step < duration - 1e-6:
                target = k * step
                if max_keyframe_offset_s is not None:
                    keys = (key[0] if key else None, next_key)
                    near = [kt for kt in keys if kt is not None and abs(kt - target) <= max_keyframe_offset_s]
                    if near:
                        nearest = min(near, key=lambda kt: (abs(kt - target), kt))
                        if key is None or nearest != key[0]:
                            break  # the next GOP's keyframe: planned with that GOP
                        if key[0] > delivered:
                            picks.append(key[1])
                            delivered = key[0]
                        k += 1  # else already yielded for the previous target
                        continue
                threshold = target - frame_dt / 2
                if delivered >= threshold:
                    k += 1  # sparse frames: the last delivered one already lies past this target
                    continue
                pick = next(((t, pts) for t, pts in times if t >= threshold), None)
                if pick is None or pick[0] >= next_key:
                    break  # this target's frame lies in a later GOP
                picks.append(pick[1])
                delivered = pick[0]
                k += 1
            return picks

        def keyframe(gop: list[av.Packet]) -> Optional[tuple[float, int]]:
            """(seconds, pts) of the GOP's keyframe; None when the stream does not start with one."""
            return (seconds(gop[0].pts), gop[0].pts) if gop[0].is_keyframe else None

        gop: list[av.Packet] = []
        decoders = _GopDecoders(path, DECODE_THREADS)
        try:
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    if packet.pts is None:
                        fallback = True
                        break
                    if packet.is_keyframe and gop:
                        times = sorted((seconds(p.pts), p.pts) for p in gop)
                        if times[0][1] != gop[0].pts or seconds(packet.pts) <= times[-1][0]:
                            fallback = True  # frames shown before their keyframe: an open GOP
                            break
                        picks = plan(times, seconds(packet.pts), keyframe(gop))
                        if picks:
                            decoders.submit(gop, picks)
                            yield from outputs(decoders.done())
                        gop = []
                    gop.append(packet)
                if not fallback and gop:
                    times = sorted((seconds(p.pts), p.pts) for p in gop)
                    if times[0][1] != gop[0].pts:
                        fallback = True
                    else:
                        picks = plan(times, np.inf, keyframe(gop))
                        if picks:
                            decoders.submit(gop, picks)
            except av.FFmpegError as exc:  # the file stops demuxing: the GOPs before it stand
                yield from outputs(decoders.done(everything=True))
                raise DecodeError(f"decode failed after {stats.last_t}s: {exc}") from exc
            yield from outputs(decoders.done(everything=True))
        finally:
            decoders.close()
    if fallback:  # k is the first target not planned yet; every planned one was delivered above
        yield from sample_frames_seeking(path, fps, stats, first_target=k)
        return
    if duration is not None and k * step < duration - max(step, 1.0):
        raise DecodeError(f"stream ended at {max(delivered, 0):.2f}s of {duration:.2f}s")


def decode_all_frames(path: str | Path, stats: Optional[DecodeStats] = None) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame, decoded sequentially: the baseline `sample_frames` is compared with."""
    stats = stats if stats is not None else DecodeStats()
    rgb = RgbConverter()
    with _open_video(path, stats) as (container, stream):
        for frame in container.decode(stream):
            stats.frames_decoded += 1
            t = _frame_time(frame, stream)
            stats.last_t = t
            yield t, rgb(frame)


# ---------------------------------------------------------------- images


def _thumb(picture: Image.Image) -> np.ndarray:
    grey = picture.convert("L").resize((_ANALYSIS, _ANALYSIS), Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def resize_crop(rgb: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic), then a centre square crop; of an RGB array or picture."""
    picture = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    w, h = picture.size
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = picture.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def phash_hex(rgb: np.ndarray) -> str:
    """The 64-bit perceptual hash of an image, as 16 hex digits."""
    return str(imagehash.phash(Image.fromarray(rgb)))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


# ---------------------------------------------------------------- one video


@dataclass
class _Sample:
    t: float
    thumb: Optional[np.ndarray]  # let go once the next sample is compared with it (_StableWindows)
    image: Optional[np.ndarray]  # resized/cropped, histology frames only; _StableWindows moves it into its window's pictures
    histology: bool
    reason: str
    scores: dict[str, float]
    scene: int


def video_id(relative: str | Path) -> str:
    """Stem plus a short hash of the video's path relative to the --videos folder (POSIX form).

    Unique in a corpus, and the same however the folder is spelled (relative, absolute, `./x`) and
    in any checkout: splits follow the video id, so they must not follow the spelling.
    """
    rel = PurePosixPath(*Path(relative).parts).as_posix()
    tag = hashlib.sha256(rel.encode()).hexdigest()[:6]
    return f"{Path(relative).stem}-{tag}"


def _slug(reason: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in reason.lower()).strip("_")


def _reject_runs(samples: Sequence[_Sample], video: str, result: UnitResult) -> None:
    """One reject row per run of consecutive non-histology samples with the same reason."""
    run: list[_Sample] = []
    for s in [*samples, None]:
        if run and (s is None or s.histology or s.reason != run[0].reason):
            result.rejects.append(Reject(f"{video}@{run[0].t:.1f}-{run[-1].t:.1f}s", STAGE_FRAME, run[0].reason))
            run = []
        if s is not None and not s.histology:
            run.append(s)


# Bytes of the open stable window's pictures held in memory; more go to a temporary file. A window's median takes
# frames spread over the whole window, known only once it closes, so a long static view keeps every picture
# (a 30-minute view sampled twice a second: 540 MB of 224 px tiles), and the file bounds that.
WINDOW_PICTURES_IN_MEMORY = 32 * 2**20


class _WindowPictures:
    """The pictures of one stable window in order: in memory up to `budget` bytes, past it all in an unnamed temporary file.

    `take(indices)` gives the pictures at `indices`, the same arrays' values as were added, and lets
    all of them go (`release`; the file is deleted as it closes). Every picture has the first one's
    shape and dtype (resize_crop's tiles do).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held: list[np.ndarray] = []
        self.file: Optional[IO[bytes]] = None
        self.layout: Optional[tuple[tuple[int, ...], np.dtype]] = None

    def add(self, picture: np.ndarray) -> None:
        """Append `picture`; the first that brings the held ones past the budget moves them all to the file."""
        if self.layout is None:
            self.layout = (picture.shape, picture.dtype)
        elif (picture.shape, picture.dtype) != self.layout:
            raise ValueError(f"a window's pictures share one shape and dtype: {picture.shape} {picture.dtype} after {self.layout}")
        if self.file is None and (len(self.held) + 1) * picture.nbytes > self.budget:
            self.file = tempfile.TemporaryFile()
            for held in self.held:
                self.file.write(np.ascontiguousarray(held).data)  # the array's own bytes, not a copy
            self.held = []
        if self.file is not None:
            self.file.write(np.ascontiguousarray(picture).data)
        else:
            self.held.append(picture)

    def take(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The pictures at `indices` (0-based, in the order added); the window's pictures are let go."""
        if self.file is None:
            pictures = [self.held[i] for i in indices]
        else:
            assert self.layout is not None
            shape, dtype = self.layout
            size = int(np.prod(shape)) * dtype.itemsize
            pictures = []
            for i in indices:
                self.file.seek(int(i) * size)
                pictures.append(np.frombuffer(self.file.read(size), dtype=dtype).reshape(shape))
        self.release()
        return pictures

    def release(self) -> None:
        """Let every picture go (the temporary file, if any, is deleted as it closes)."""
        if self.file is not None:
            self.file.close()
        self.held, self.file = [], None


@dataclass
class _Window:
    """One stable window: its samples (pictures moved out) and their pictures, in the same order."""

    samples: list[_Sample]
    pictures: _WindowPictures


class _StableWindows:
    """Runs of consecutive histology samples of one scene whose neighbours' thumbnails have SSIM >= `ssim_threshold`.

    Built as the samples arrive, so a long video's pictures need not all wait in memory: `add` takes
    the next sample and returns the window it closes (at most one), `close` the last one. A
    sample's thumbnail is let go once the next sample is compared with it (nothing else reads it);
    its picture moves into the open window's `_WindowPictures`, which holds at most
    `WINDOW_PICTURES_IN_MEMORY` bytes of them in memory however long the window.
    """

    def __init__(self, ssim_threshold: float) -> None:
        self.ssim_threshold = ssim_threshold
        self.current: list[_Sample] = []
        self.pictures = _WindowPictures(WINDOW_PICTURES_IN_MEMORY)
        self.prev: Optional[_Sample] = None

    def add(self, sample: _Sample) -> list[_Window]:
        """The window `sample` closes ([] or [window]); `sample` joins the open window or starts the next."""
        prev, closed = self.prev, []
        if (self.current and sample.histology and prev is not None and sample.scene == prev.scene
                and structural_similarity(prev.thumb, sample.thumb, data_range=1.0) >= self.ssim_threshold):
            self.current.append(sample)
        else:
            closed = self.close()
            self.current = [sample] if sample.histology else []
        if sample.histology and sample.image is not None:
            self.pictures.add(sample.image)
            sample.image = None
        if prev is not None:
            prev.thumb = None
        self.prev = sample
        return closed

    def close(self) -> list[_Window]:
        """The open window ([] or [window]), closed."""
        closed = [_Window(self.current, self.pictures)] if self.current else []
        self.current, self.pictures = [], _WindowPictures(WINDOW_PICTURES_IN_MEMORY)
        return closed


class _WindowPairs:
    """A video's pairs from its stable windows, made as each window closes (`add`), with the windows' rejects and counts.

    A window shorter than `min_window_s` is rejected; else its picture is the per-pixel median of up
    to `max_median_frames` of its frames, evenly spread; a picture within `phash_max_distance` of an
    earlier window's is a duplicate; its caption is the cleaned narration within `text_margin_s`,
    and a window without medical text is rejected. Its samples' pictures are let go once used.
    """

    def __init__(self, job: VideoJob, cfg: VideoConfig, vid: str, cues: Sequence[Cue]) -> None:
        self.job, self.cfg, self.vid, self.cues = job, cfg, vid, cues
        self.vocab = load_vocabulary(cfg.extra_vocabulary)
        self.kept_hashes: list[tuple[str, str]] = []  # (phash, pair id)
        self.result = UnitResult()

    def add(self, closed: _Window) -> None:
        """The pair of one window, or its reject."""
        cfg, result = self.cfg, self.result
        window = closed.samples
        start, end = window[0].t, window[-1].t + 1.0 / cfg.sample_fps
        where = f"{self.job.video}@{start:.1f}-{end:.1f}s"
        result.counts["windows"] += 1
        if end - start < cfg.min_window_s:
            result.counts["windows_too_short"] += 1
            result.rejects.append(Reject(where, STAGE_WINDOW, "stable window too short"))
            closed.pictures.release()
            return
        picks = np.unique(np.linspace(0, len(window) - 1, min(len(window), cfg.max_median_frames)).round().astype(int))
        image = np.median(np.stack(closed.pictures.take(picks)), axis=0).round().astype(np.uint8)
        phash = phash_hex(image)
        pair_id = f"{self.vid}-{int(round(start * 1000)):09d}"
        dup = next((pid for h, pid in self.kept_hashes if hamming(h, phash) <= cfg.phash_max_distance), None)
        if dup is not None:
            result.counts["duplicates_within_video"] += 1
            result.rejects.append(Reject(f"{where} (duplicate of {dup})", STAGE_DEDUPE, "near-duplicate within video"))
            return

        noisy = _join_cues(cues_in_window(self.cues, start, end, cfg.text_margin_s))
        cleaned = clean_text(noisy, self.vocab)
        if not cleaned.text:
            result.counts["windows_without_medical_text"] += 1
            result.rejects.append(Reject(where, STAGE_TEXT, "no medical text in window"))
            return
        self.kept_hashes.append((phash, pair_id))
        scores = {k: round(float(np.median([s.scores[k] for s in window])), 4) for k in window[0].scores}
        result.pairs.append(
            Pair(
                id=pair_id,
                group=self.job.group or self.vid,
                image=image,
                caption=cleaned.text,
                source=self.job.video,
                caption_variants={"terms": ", ".join(cleaned.terms)} if cleaned.terms else {},
                provenance={
                    "video_id": self.vid,
                    "start_s": round(start, 3),
                    "end_s": round(end, 3),
                    "noisy_text": noisy,
                    "terms": cleaned.terms,
                    "magnification": cleaned.magnification,
                    "phash": phash,
                    "frames_in_window": len(window),
                    "frames_in_median": int(len(picks)),
                    "representative": "median" if len(picks) > 1 else "single frame",
                    "detector_scores": scores,
                },
            )
        )
        result.counts["pairs"] += 1


def _join_cues(cues: Iterable[Cue]) -> str:
    texts = [c.text.strip() for c in cues]
    if not any(t[-1:] in ".!?" for t in texts if t):
        return ". ".join(texts)  # raw ASR without punctuation: a cue is the best sentence proxy
    return " ".join(texts)


def process_video(unit: WorkUnit) -> UnitResult:
    """Pairs, rejects and counts for one video (module level: worker processes pickle it by name)."""
    job: VideoJob = unit.payload
    cfg = VideoConfig(**job.config)
    result = UnitResult()
    result.counts["videos_seen"] += 1
    vid = job.video_id or video_id(Path(job.video).name)

    def refuse(reason: str) -> UnitResult:
        result.rejects.append(Reject(job.video, STAGE_VIDEO, reason))
        result.counts[f"videos_rejected_{_slug(reason.split(' (')[0])}"] += 1
        return result

    try:
        if os.path.getsize(job.video) == 0:
            return refuse(REASON_EMPTY_FILE)
        duration = video_duration(job.video)
    except NoVideoStream:
        return refuse(REASON_NO_STREAM)
    except av.error.EOFError:  # the file ends before the first frame: a header and nothing else
        return refuse(REASON_NO_FRAMES)
    except (av.FFmpegError, OSError, DecodeError):
        return refuse(REASON_CANNOT_OPEN)
    try:
        transcript = parse_transcript(Path(job.transcript), duration)
    except TranscriptError as exc:
        result.rejects.extend(exc.rejects)
        result.rejects.append(Reject(exc.where, STAGE_TRANSCRIPT, exc.reason))
        result.counts[f"videos_rejected_transcript_{_slug(exc.reason)}"] += 1
        return result
    cues = transcript.cues
    result.warnings.extend(transcript.warnings)
    result.rejects.extend(transcript.rejects)
    result.counts["transcript_cues"] += len(cues)
    result.counts["transcript_cues_rejected"] += len(transcript.rejects)

    classifier = load_classifier(cfg.classifier_checkpoint) if cfg.classifier_checkpoint else None
    detect: FrameDetector = make_detector(cfg.detector(), classifier)
    # Every sample, for the reject runs and counts; windows are made into pairs as they close, so only the open
    # window's pictures and the last thumbnail are held: memory grows with the longest window, not with the video.
    samples: list[_Sample] = []
    windows = _StableWindows(cfg.ssim_threshold)
    made = _WindowPairs(job, cfg, vid, cues)
    stats = DecodeStats()
    scene, prev_thumb = 0, None
    keyframe_offset = cfg.max_keyframe_offset_s if cfg.frame_choice == "nearest_keyframe" else None
    try:
        for t, rgb in sample_frames(job.video, cfg.sample_fps, stats, keyframe_offset):
            picture = Image.fromarray(rgb)  # one conversion for the thumbnail, the detector's copy and the tile
            thumb = _thumb(picture)
            if prev_thumb is not None and float(np.abs(thumb - prev_thumb).mean()) > cfg.scene_threshold:
                scene += 1
            prev_thumb = thumb
            ok, reason, scores = detect(picture)
            samples.append(_Sample(t, thumb, resize_crop(picture, cfg.image_size) if ok else None, ok, reason, scores, scene))
            for window in windows.add(samples[-1]):
                made.add(window)
    except DecodeError:
        if not samples:  # nothing decoded at all: an empty stream or a damaged start
            return refuse(REASON_NO_FRAMES)
        # keep what decoded before the failure
        where = f"{job.video}@{stats.last_t:.1f}s" if stats.last_t is not None else job.video
        result.rejects.append(Reject(where, STAGE_VIDEO, REASON_DECODE_MIDWAY))
        result.counts["videos_decode_failed_midway"] += 1
    if not samples:  # a container with a video stream but no frame in it
        return refuse(REASON_NO_FRAMES)
    for window in windows.close():
        made.add(window)
    result.counts["frames_decoded"] += stats.frames_decoded
    result.counts["frames_sampled"] += len(samples)
    result.counts["scenes"] += scene + 1 if samples else 0
    for s in samples:
        result.counts["histology_frames" if s.histology else f"non_histology_{_slug(s.reason)}"] += 1
    _reject_runs(samples, job.video, result)
    # after the frames' rows and counts, as when the windows were made once every frame was in
    result.rejects.extend(made.result.rejects)
    result.counts.update(made.result.counts)
    result.pairs.extend(made.result.pairs)
    return result


# ---------------------------------------------------------------- planning


def output_params(cfg: VideoConfig) -> dict[str, Any]:
    """The settings that determine a video's output (all of them), hashed into the unit key."""
    return asdict(cfg)


def _files_by_stem(videos_dir: Path) -> dict[tuple[Path, str], list[Path]]:
    """Every non-hidden file under `videos_dir` (subfolders included), grouped by (folder, stem), sorted by folder/stem."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for folder, dirs, files in os.walk(videos_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(folder) / name
                groups.setdefault((Path(folder), path.stem), []).append(path)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] / kv[0][1]).as_posix()))


def plan_video_units(videos_dir: Path, cfg: VideoConfig, groups: dict[str, str] | None = None) -> tuple[list[WorkUnit], list[Reject]]:
    """One unit per video paired with the transcript of its stem (sorted by path); rejects for files that cannot be paired.

    A video's transcript is the first of .vtt, .srt, .json found; a second one is a reject row. So is
    a video without a transcript, a transcript without a video and every video of a stem that
    several videos share. `groups` maps a video's path relative to `videos_dir` (or its file name,
    or stem) to its split group, so videos of one course or speaker share a split.
    """
    videos_dir = Path(videos_dir)
    params_hash = hashlib.sha256(json.dumps(output_params(cfg), sort_keys=True).encode()).hexdigest()[:12]
    units: list[WorkUnit] = []
    rejects: list[Reject] = []
    for files in _files_by_stem(videos_dir).values():
        videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
        transcripts = sorted((f for f in files if f.suffix.lower() in TRANSCRIPT_SUFFIXES),
                             key=lambda f: (TRANSCRIPT_SUFFIXES.index(f.suffix.lower()), f.name))
        if not videos:
            others = [f.name for f in files if f not in transcripts]
            hint = f" (not video files: {', '.join(others)})" if others else ""
            rejects += [Reject(f"{t}{hint}", STAGE_TRANSCRIPT, REASON_NO_VIDEO) for t in transcripts]
            continue
        if len(videos) > 1:
            rejects += [Reject(str(v), STAGE_VIDEO, REASON_SAME_STEM) for v in videos]
            continue
        video = videos[0]
        if not transcripts:
            rejects.append(Reject(str(video), STAGE_TRANSCRIPT, REASON_NO_TRANSCRIPT))
            continue
        transcript = transcripts[0]
        rejects += [Reject(f"{t} (using {transcript.name})", STAGE_TRANSCRIPT, REASON_SECOND_TRANSCRIPT) for t in transcripts[1:]]
        relative = video.relative_to(videos_dir).as_posix()
        group = next((groups[k] for k in (relative, video.name, video.stem) if groups and k in groups), "")
        job = VideoJob(str(video), str(transcript), asdict(cfg), video_id(relative), f"group:{group}" if group else "")
        units.append(WorkUnit(f"pathology-video:{video}:{relative}:{params_hash}", job, inputs=[str(video), str(transcript)]))
    return units, rejects


# ---------------------------------------------------------------- corpus-wide near-duplicates


def cross_video_duplicates(records: Sequence[tuple[str, str, str]], max_distance: int = 8) -> list[str]:
    """Ids to drop: (id, phash_hex, video_id) records near-identical to one from another video.

    Deterministic: records are visited sorted by (video_id, id) and the first of a near-duplicate
    set is kept. Candidates come from pigeonhole buckets (split the 64-bit hash into
    max_distance + 1 bands: two hashes within the distance agree exactly on at least one band),
    so the corpus is not compared pairwise.
    """
    bands = max_distance + 1
    kept: list[tuple[int, str]] = []  # (hash, video)
    buckets: dict[tuple[int, int], list[int]] = {}
    drop: list[str] = []
    for rid, hexhash, vid in sorted(records, key=lambda r: (r[2], r[0])):
        value, nbits = int(hexhash, 16), len(hexhash) * 4
        edges = [round(i * nbits / bands) for i in range(bands + 1)]
        keys = [(i, (value >> edges[i]) & ((1 << (edges[i + 1] - edges[i])) - 1)) for i in range(bands)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        if any(kept[j][1] != vid and bin(kept[j][0] ^ value).count("1") <= max_distance for j in candidates):
            drop.append(rid)
            continue
        kept.append((value, vid))
        for key in keys:
            buckets.setdefault(key, []).append(len(kept) - 1)
    return drop


def dedupe_across_videos(rows: Iterable[dict[str, Any]], max_distance: int = 8) -> set[str]:
    """Ids to drop from manifest-like rows ({"id", "provenance": dict or JSON} with phash, video_id)."""
    records = []
    for row in rows:
        prov = row["provenance"]
        prov = json.loads(prov) if isinstance(prov, str) else prov
        if prov.get("phash"):
            records.append((row["id"], prov["phash"], prov.get("video_id", row.get("group", ""))))
    return set(cross_video_duplicates(records, max_distance))
