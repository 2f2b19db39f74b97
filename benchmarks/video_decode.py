"""Frames decoded by the pathology curation's seeking sampler versus decoding every frame.

Writes a lecture-like H.264 video (default 640x360, 30 fps, 120 s, a keyframe every 2 s, content
changing every 5 s), then, in one process, reads frames at `--sample-fps` three ways:

- seek:      domains.pathology.curation.video.sample_frames (seek to the keyframe before each target);
- all+rgb:   decode every frame and convert every frame to RGB (the naive reader);
- all:       decode every frame, convert only the sampled ones (decoding alone).

Reports frames decoded, wall seconds and sampled frames delivered per second, with ratios
against `all`. Usage: python benchmarks/video_decode.py [--seconds 120] [--gop 60] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from domains.pathology.curation.video import DecodeStats, sample_frames


def write_video(path: Path, seconds: float, fps: int, width: int, height: int, gop: int) -> None:
    rng = np.random.default_rng(0)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "crf": "23", "preset": "veryfast"} if codec == "libx264" else {"g": str(gop)}
        base = None
        for i in range(int(seconds * fps)):
            if i % (5 * fps) == 0:  # a new "slide" every 5 s
                base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            frame = np.roll(base, i % (5 * fps), axis=1)  # slow pan
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def run_seek(path: Path, fps: float) -> tuple[int, int]:
    stats = DecodeStats()
    n = sum(1 for _ in sample_frames(path, fps, stats))
    return n, stats.frames_decoded


def run_all(path: Path, fps: float, convert_all: bool) -> tuple[int, int]:
    n_decoded, n_out, next_t = 0, 0, 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            n_decoded += 1
            t = float(frame.pts * stream.time_base)
            if convert_all:
                frame.to_ndarray(format="rgb24")
            if t >= next_t - 1e-6:
                frame.to_ndarray(format="rgb24")
                n_out += 1
                next_t += 1.0 / fps
    return n_out, n_decoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--gop", type=int, default=60, help="keyframe interval in frames")
    ap.add_argument("--sample-fps", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lecture.mp4"
        write_video(path, args.seconds, args.fps, width, height, args.gop)
        methods = {"seek": lambda: run_seek(path, args.sample_fps),
                   "all": lambda: run_all(path, args.sample_fps, convert_all=False),
                   "all+rgb": lambda: run_all(path, args.sample_fps, convert_all=True)}
        times: dict[str, list[float]] = {m: [] for m in methods}
        counts: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every method alike
            for name, fn in methods.items():
                t0 = time.perf_counter()
                counts[name] = fn()
                times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["all"]))
    result = {"video": {"seconds": args.seconds, "fps": args.fps, "size": args.size, "gop_frames": args.gop},
              "sample_fps": args.sample_fps}
    for name in methods:
        t = float(np.median(times[name]))
        sampled, decoded = counts[name]
        result[name] = {"frames_decoded": decoded, "frames_sampled": sampled, "median_s": round(t, 3),
                        "sampled_frames_per_s": round(sampled / t, 1), "speedup_vs_all": round(base / t, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
