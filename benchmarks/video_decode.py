"""Frames sampled by the pathology curation's sampler versus decoding every frame, and versus the seeking sampler.

Writes a lecture-like H.264 video (default 640x360, 30 fps, 120 s, a keyframe every 2 s, content
changing every 5 s, a slow pan in between; x264 veryfast: B-frames, most of them unreferenced, and
keyframes that hold ~70% of the bits, as in lectures, where little changes between keyframes; one slice
a frame, x264's own threading, as screen recorders and ffmpeg write: PyAV's default slice threads would
cut every frame in slices that a decoder's slice threads split), then, in one process and interleaved,
reads frames at each `--sample-fps` these ways:

- ours:      domains.pathology.curation.video.sample_frames (one pass over the packets, decoding only
             the GOPs and frames the targets need, unreferenced frames skipped, `DECODE_THREADS` GOPs
             at once, each by its own decoder): exact frames;
- nearest keyframe: the same with `max_keyframe_offset_s` (`--max-keyframe-offset`, the curation's
             `frame_choice: nearest_keyframe`): a target within the offset of a keyframe takes it,
             so no decoding up to a frame mid-GOP; frames within the offset of their targets;
- seeking:   sample_frames_seeking, the sampler before it (seek to the keyframe before each target);
- all:       decode every frame, convert only the sampled ones to RGB (`frame.to_ndarray`), with each
             of PyAV's thread settings: its defaults (the plain `for frame in container.decode(...)`:
             slice threads, which a one-slice stream cannot use) and `thread_type` AUTO, FRAME and SLICE
             with a thread a core; the peer is the fastest of them (median), named in the rows;
- torchcodec: PyTorch's video decoder (`VideoDecoder.get_frames_played_at`, seek mode exact), the frames
             played at the same targets as one batch, with its thread settings (`num_ffmpeg_threads` 1, its
             default, and 0, FFmpeg's choice); the peer is the faster (median). It loads the system's FFmpeg
             libraries (Debian 12's 5.1, which `make bench-setup` installs where apt-get can; PyAV bundles its
             own FFmpeg), so its rows are left out, saying why, where it cannot load;
- keyframes: decode the keyframes only with one decoder, sending it only keyframe packets (what an
             exact sampler with one decoder pays at least once it needs a frame in every GOP, so
             `all / keyframes` bounds its ratio; decoding GOPs at once, ours can pass it) and, for
             comparison, all packets with `skip_frame = "NONKEY"` (slower: the skipped packets are
             still parsed and handed to the decoder threads).

Before timing, ours and torchcodec are checked against `all`: the same presentation times and identical pixels;
nearest keyframe is checked to deliver decode-all's frames, each within the offset of a target.
Rates are sampled frames per second (median of `--repeats`): the exact samplers' frame count over
each method's time, so the ratios are time ratios; nearest keyframe serves the same targets with
fewer distinct frames (a target whose keyframe was yielded for the previous target is skipped),
counted in the row's notes.

    python benchmarks/video_decode.py [--seconds 120] [--gop 60] [--sample-fps 0.5 1 2] [--max-keyframe-offset 1]
        [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
from contract import machine, write_json

from domains.pathology.curation.video import CORES, DECODE_THREADS, DecodeStats, decode_all_frames, sample_frames, sample_frames_seeking

# decode-all's thread settings: None is PyAV's defaults, the others run a thread a core
THREAD_SETTINGS = (None, "AUTO", "FRAME", "SLICE")
# torchcodec's num_ffmpeg_threads: its default (1) and FFmpeg's choice (0)
TORCHCODEC_THREADS = (1, 0)


def write_video(path: Path, seconds: float, fps: int, width: int, height: int, gop: int) -> None:
    """A lecture-like clip: a new random "slide" every 5 s, panning slowly, a keyframe every `gop` frames, one slice a frame."""
    rng = np.random.default_rng(0)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "crf": "23", "preset": "veryfast"} if codec == "libx264" else {"g": str(gop)}
        stream.thread_type = "FRAME"  # x264 then threads by frame and writes one slice a frame (PyAV's SLICE: several)
        base = None
        for i in range(int(seconds * fps)):
            if i % (5 * fps) == 0:  # a new "slide" every 5 s
                base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            frame = np.roll(base, i % (5 * fps), axis=1)  # slow pan
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def run_sampler(sampler: Callable[..., Any], path: Path, fps: float, **options: Any) -> tuple[int, int]:
    """(frames sampled, frames decoded) by one of the curation's samplers."""
    stats = DecodeStats()
    n = sum(1 for _ in sampler(path, fps, stats, **options))
    return n, stats.frames_decoded


def decode_all(path: Path, fps: float, keep: list | None = None, thread_type: str | None = "AUTO") -> tuple[int, int]:
    """Decode every frame; convert the first frame at or after each target (the sampler's rule) to RGB.

    `thread_type`: PyAV's, with a thread a core; None keeps PyAV's default settings.
    """
    n_decoded, n_out, k = 0, 0, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if thread_type is not None:
            stream.thread_type, stream.thread_count = thread_type, CORES
        frame_dt = float(1 / stream.average_rate)
        start = stream.start_time or 0
        for frame in container.decode(stream):
            n_decoded += 1
            t = float((frame.pts - start) * stream.time_base)
            if t >= k / fps - frame_dt / 2:
                rgb = frame.to_ndarray(format="rgb24")
                if keep is not None:
                    keep.append((t, rgb))
                n_out += 1
                while k / fps - frame_dt / 2 <= t:
                    k += 1
    return n_out, n_decoded


def load_torchcodec() -> tuple[Any, str] | None:
    """The VideoDecoder class of torchcodec and its name (torchcodec's and FFmpeg's versions), or None where it cannot load."""
    try:
        import torchcodec
        from torchcodec import _core
        from torchcodec.decoders import VideoDecoder

        ffmpeg = _core.get_ffmpeg_library_versions().get("ffmpeg_version", "?")  # loads the FFmpeg libraries
    except ImportError as err:
        print(f"video_decode: torchcodec rows left out ({err}: `make bench-setup` installs it)", file=sys.stderr)
        return None
    except (OSError, RuntimeError):  # its libraries did not load: the system lacks FFmpeg's
        print("video_decode: torchcodec rows left out (it does not load here: it needs FFmpeg 4 to 9's shared libraries, "
              "which `make bench-setup` installs from Debian's packages)", file=sys.stderr)
        return None
    return VideoDecoder, f"torchcodec {torchcodec.__version__.split('+')[0]} on the system's FFmpeg {ffmpeg}"


def decode_torchcodec(decoder_class: Any, path: Path, fps: float, targets: int, threads: int,
                      keep: list | None = None) -> tuple[int, int]:
    """The frames played at t = 0, 1/fps, ... (`targets` of them) by torchcodec in exact seek mode, as one batch.

    (frames out, frames out): torchcodec does not say how many it decoded.
    """
    decoder = decoder_class(str(path), seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC")
    batch = decoder.get_frames_played_at(seconds=[k / fps for k in range(targets)])
    if keep is not None:
        keep.extend(zip(batch.pts_seconds.tolist(), batch.data.numpy()))
    return len(batch.data), len(batch.data)


def decode_keyframes(path: Path) -> tuple[int, int]:
    """Decode the keyframes only (the decoder skips every other frame)."""
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = "NONKEY"
        for _ in container.decode(stream):
            n += 1
    return n, n


def decode_keyframe_packets(path: Path) -> tuple[int, int]:
    """Decode the keyframes only, sending the decoder nothing else (as the samplers do)."""
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        for packet in container.demux(stream):
            if packet.size and packet.is_keyframe:
                n += len(ctx.decode(packet))
        n += len(ctx.decode(None))
    return n, n


def within_offset(frames: list[tuple[float, np.ndarray]], path: Path, targets: list[float], offset: float) -> bool:
    """Every frame is decode-all's frame at its time, each once and in order, every target served within the offset."""
    times = [t for t, _ in frames]
    wanted = dict(frames)
    matched = 0
    for t, rgb in decode_all_frames(path):
        if t in wanted:
            matched += np.array_equal(rgb, wanted[t])
    return (times == sorted(set(times)) and matched == len(frames)
            and all(min(abs(t - target) for t in times) <= offset + 1e-9 for target in targets))


def main() -> None:
    """Time the samplers at every --sample-fps, interleaved; print (and write with --json) the rows."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--gop", type=int, default=60, help="keyframe interval in frames")
    ap.add_argument("--sample-fps", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--max-keyframe-offset", type=float, default=1.0,
                    help="seconds: the nearest-keyframe rows' max_keyframe_offset_s (the curation's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark JSON here")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    offset = args.max_keyframe_offset
    rows = []
    torchcodec = load_torchcodec()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lecture.mp4"
        write_video(path, args.seconds, args.fps, width, height, args.gop)
        for sample_fps in args.sample_fps:
            reference: list = []
            decode_all(path, sample_fps, reference)
            ours_frames = list(sample_frames(path, sample_fps))
            identical = len(ours_frames) == len(reference) and all(
                a == c and np.array_equal(b, d) for (a, b), (c, d) in zip(ours_frames, reference))
            targets = len(ours_frames)  # the targets k / fps the sampler serves (every one: a frame each here)
            tc_identical = None
            if torchcodec is not None:
                tc_frames: list = []
                decode_torchcodec(torchcodec[0], path, sample_fps, targets, 1, tc_frames)
                tc_identical = len(tc_frames) == len(reference) and all(
                    abs(a - c) < 1e-6 and np.array_equal(b, d) for (a, b), (c, d) in zip(tc_frames, reference))
                del tc_frames
            nearest_frames = list(sample_frames(path, sample_fps, max_keyframe_offset_s=offset))
            nearest_ok = within_offset(nearest_frames, path, [t for t, _ in ours_frames], offset)
            del reference, ours_frames, nearest_frames
            methods: dict[str, Callable[[], tuple[int, int]]] = {
                "ours": lambda f=sample_fps: run_sampler(sample_frames, path, f),
                "nearest": lambda f=sample_fps: run_sampler(sample_frames, path, f, max_keyframe_offset_s=offset),
                "seeking": lambda f=sample_fps: run_sampler(sample_frames_seeking, path, f),
                **{f"all {setting or 'defaults'}": lambda f=sample_fps, t=setting: decode_all(path, f, thread_type=t)
                   for setting in THREAD_SETTINGS},
                **({f"torchcodec {threads}": lambda f=sample_fps, n=targets, t=threads: decode_torchcodec(torchcodec[0], path, f, n, t)
                    for threads in TORCHCODEC_THREADS} if torchcodec is not None else {}),
                "keyframes": lambda: decode_keyframe_packets(path),
                "keyframes_nonkey": lambda: decode_keyframes(path),
            }
            times: dict[str, list[float]] = {m: [] for m in methods}
            counts: dict[str, tuple[int, int]] = {}
            for _ in range(args.repeats):  # interleaved, so machine noise hits every method alike
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    counts[name] = fn()
                    times[name].append(time.perf_counter() - t0)
            med = {m: float(np.median(t)) for m, t in times.items()}
            settings = [m for m in methods if m.startswith("all ")]
            fastest = min(settings, key=med.get)
            med["all"], counts["all"] = med[fastest], counts[fastest]
            peer = f"decode every frame (PyAV {av.__version__}, its fastest thread setting here: {fastest[4:]})"
            by_setting = ("decode-all by PyAV thread setting (a thread a core; defaults: PyAV's): "
                          + ", ".join(f"{m[4:]} {med[m]:.3f} s" for m in settings))
            sampled = counts["ours"][0]
            rate = {m: sampled / med[m] for m in ("ours", "nearest", "seeking", "all", "all defaults")}
            video = f"{args.size} {args.fps} fps {args.seconds:g} s, keyframe every {args.gop} frames"
            decoded = (f"frames decoded: ours {counts['ours'][1]}, seeking {counts['seeking'][1]}, all {counts['all'][1]}; "
                       f"{counts['ours'][0]} frames sampled")
            ceiling = (f"keyframes-only decode {med['keyframes']:.3f} s = {med['all'] / med['keyframes']:.2f}x faster than all "
                       f"(with skip_frame NONKEY over every packet {med['keyframes_nonkey']:.3f} s): "
                       "the ceiling of a frame-exact sampler with one decoder that needs a frame in every GOP; "
                       f"ours decodes {DECODE_THREADS} GOPs at once")
            nearest = (f"nearest keyframe within {offset:g} s: {counts['nearest'][0]} distinct frames for the "
                       f"{sampled} targets, each a decode-all frame within {offset:g} s of its target: {nearest_ok}; "
                       f"frames decoded {counts['nearest'][1]}")
            check = f"identical to decode-all (pts and pixels): {identical}"
            rows.append({"figure": f"video frames sampled at {sample_fps:g} fps", "unit": "frames/s",
                         "ours": round(rate["ours"], 2), "peer": peer, "peer_value": round(rate["all"], 2),
                         "ratio": round(rate["ours"] / rate["all"], 2), "bar": 5.0 if sample_fps == 1.0 else None,
                         "repeats": args.repeats, "notes": f"{check}; {decoded}; {by_setting}; {ceiling}; {video}"})
            rows.append({"figure": f"video frames sampled at {sample_fps:g} fps, vs the previous sampler", "unit": "frames/s",
                         "ours": round(rate["ours"], 2), "peer": "sample_frames_seeking (the sampler before, this repo)",
                         "peer_value": round(rate["seeking"], 2), "ratio": round(rate["ours"] / rate["seeking"], 2),
                         "bar": None, "repeats": args.repeats, "notes": f"{decoded}; {video}"})
            rows.append({"figure": f"video frames sampled at {sample_fps:g} fps, nearest keyframe within {offset:g} s",
                         "unit": "frames/s", "ours": round(rate["nearest"], 2), "peer": peer,
                         "peer_value": round(rate["all"], 2), "ratio": round(rate["nearest"] / rate["all"], 2),
                         "bar": None, "repeats": args.repeats, "notes": f"{nearest}; {ceiling}; {video}"})
            rows.append({"figure": f"video frames sampled at {sample_fps:g} fps, vs PyAV's default reader", "unit": "frames/s",
                         "ours": round(rate["ours"], 2), "peer": f"decode every frame, PyAV {av.__version__} defaults (no thread_type)",
                         "peer_value": round(rate["all defaults"], 2), "ratio": round(rate["ours"] / rate["all defaults"], 2),
                         "bar": None, "repeats": args.repeats,
                         "notes": f"{decoded}; nearest keyframe within {offset:g} s: "
                                  f"{rate['nearest'] / rate['all defaults']:.2f}x; {video}"})
            if torchcodec is not None:
                tc_settings = [m for m in methods if m.startswith("torchcodec ")]
                tc_fastest = min(tc_settings, key=med.get)
                tc_rate = sampled / med[tc_fastest]
                tc_by_setting = "by num_ffmpeg_threads (0: FFmpeg's choice): " + ", ".join(
                    f"{m.split()[1]} {med[m]:.3f} s" for m in tc_settings)
                rows.append({"figure": f"video frames sampled at {sample_fps:g} fps, vs torchcodec", "unit": "frames/s",
                             "ours": round(rate["ours"], 2),
                             "peer": f"{torchcodec[1]}: get_frames_played_at, seek mode exact, "
                                     f"num_ffmpeg_threads {tc_fastest.split()[1]} (its faster here)",
                             "peer_value": round(tc_rate, 2), "ratio": round(rate["ours"] / tc_rate, 2), "bar": None,
                             "repeats": args.repeats,
                             "notes": f"torchcodec identical to decode-all (pts and pixels): {tc_identical}; {tc_by_setting}; "
                                      f"ours decodes with PyAV {av.__version__}'s FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}; "
                                      f"{decoded}; {video}"})
    payload = {"benchmark": Path(__file__).stem, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
               "machine": machine(), "rows": rows}
    print(json.dumps(payload, indent=2))
    if args.json is not None:
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
