"""Pathology video curation on small real videos written with PyAV (no mocks)."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from bad_inputs.pathology import NARRATION, slide_image, transcript_text, write_captions, write_lecture, write_slide
from bad_inputs.pathology import write_video as write_bad_video
from PIL import Image, ImageDraw

from domains.pathology.curation import stain
from domains.pathology.curation import video as video_module
from domains.pathology.curation.curate import PathologyCurateConfig, curate
from domains.pathology.curation.slides import SlideConfig
from domains.pathology.curation.stain import (
    FEATURE_NAMES,
    DetectorConfig,
    detect_histology,
    hsv_planes,
    load_classifier,
    make_detector,
    stain_features,
)
from domains.pathology.curation.text import clean_text, load_vocabulary
from domains.pathology.curation.transcript import Cue, Transcript, TranscriptError, parse_transcript
from domains.pathology.curation.video import (
    REASON_CANNOT_OPEN,
    REASON_EMPTY_FILE,
    REASON_NO_STREAM,
    REASON_NO_VIDEO,
    REASON_SAME_STEM,
    REASON_SECOND_TRANSCRIPT,
    DecodeError,
    DecodeStats,
    VideoConfig,
    VideoJob,
    cross_video_duplicates,
    decode_all_frames,
    dedupe_across_videos,
    plan_video_units,
    process_video,
    resize_crop,
    sample_frames,
    sample_frames_seeking,
    video_id,
)
from pipelines.curation import WorkUnit

FPS = 5
SIZE = 128
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


# ---------------------------------------------------------------- synthetic frames


def he_texture(seed: int) -> np.ndarray:
    """Pink eosin background, purple haematoxylin nuclei, a few white lumina."""
    rng = np.random.default_rng(seed)
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = (236, 168, 206)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for colour, n, (rmin, rmax) in [((250, 245, 250), 12, (8, 18)), ((105, 55, 150), 45, (3, 9))]:
        for _ in range(n):
            cy, cx, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(rmin, rmax)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return img.astype(np.uint8)


def title_slide() -> np.ndarray:
    im = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(im)
    for i, line in enumerate(["Lecture 3", "Appendicitis", "Dr. Example", "www.site.com"]):
        d.text((8, 10 + 25 * i), line, fill="black")
    return np.asarray(im)


def presenter() -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = (60, 70, 90)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img[((yy - 64) / 50) ** 2 + ((xx - 64) / 38) ** 2 < 1] = (222, 170, 138)
    for cx in (50, 78):
        img[(yy - 50) ** 2 + (xx - cx) ** 2 < 16] = (40, 30, 30)
    return img


BLANK = np.full((SIZE, SIZE, 3), 8, np.uint8)
A, B, C, D = (he_texture(s) for s in (1, 2, 3, 4))
# (seconds, frame, per-frame noise sigma)
TIMELINE = [(6, title_slide(), 0), (8, A, 6), (2, BLANK, 0), (6, B, 0), (4, presenter(), 0), (4, A, 6), (1, C, 0), (2, BLANK, 0), (5, D, 0)]
DURATION = sum(s for s, _, _ in TIMELINE)

VTT = """WEBVTT

00:00:00.000 --> 00:00:05.000
Welcome back everyone. Don't forget to subscribe to the channel.

00:00:06.000 --> 00:00:13.000
Um, so here we see the the appendix at 40x. Uh, you know, neutrophils infiltrate the muscularis propria. Don't forget to subscribe!

00:00:16.000 --> 00:00:21.000
Okay, this is a lymph node with caseating granulomas and Langhans giant cells at high power.

00:00:22.000 --> 00:00:25.000
Let me grab my coffee.

00:00:26.000 --> 00:00:29.000
Again, the appendix with acute inflammation.

00:00:33.000 --> 00:00:37.000
And that is all for today, thanks for watching.
"""


def write_video(path: Path, timeline=TIMELINE, gop: int = FPS) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "12", "preset": "ultrafast"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop  # a keyframe a second, as streaming encoders do
        for seconds, frame, sigma in timeline:
            for _ in range(seconds * FPS):
                img = frame if not sigma else (frame + rng.normal(0, sigma, frame.shape)).clip(0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def run_unit(video: Path, transcript: Path, **overrides) -> "UnitResult":  # noqa: F821
    cfg = VideoConfig(**overrides)
    return process_video(WorkUnit(f"t:{video}", VideoJob(str(video), str(transcript), cfg.__dict__)))


@pytest.fixture(scope="module")
def lecture(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("videos")
    video = root / "lecture.mp4"
    write_video(video)
    (root / "lecture.vtt").write_text(VTT)
    return video, root / "lecture.vtt"


@pytest.fixture(scope="module")
def curated(lecture):
    return run_unit(*lecture)


# ---------------------------------------------------------------- detector


def test_stain_detector_reasons():
    assert detect_histology(A)[:2] == (True, "histology")
    assert detect_histology(title_slide())[1] == "text slide"
    assert detect_histology(presenter())[1] == "face or presenter"
    assert detect_histology(BLANK)[1] == "blank frame"
    scores = detect_histology(A)[2]
    assert scores["he_fraction"] > 0.9 and scores["skin_fraction"] == 0


def test_detector_and_tile_of_a_picture_are_those_of_its_array():
    frame = np.ascontiguousarray(np.concatenate([A, presenter()], axis=1)[:, 20:])  # not square: the crop's shorter side
    picture = Image.fromarray(frame)
    assert stain_features(picture) == stain_features(frame) and detect_histology(picture) == detect_histology(frame)
    assert stain._downsample(picture, 64).shape == (35, 64, 3)  # the detector's copy: the longer side to 64, the aspect kept
    assert np.array_equal(resize_crop(picture, 96), resize_crop(frame, 96))
    # 128 x 236: the shorter side to 96 (177 wide), then the centre square
    assert np.array_equal(resize_crop(frame, 96), np.asarray(picture.resize((177, 96), Image.BICUBIC).crop((40, 0, 136, 96))))
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])  # an array's alpha is dropped, as before
    assert stain_features(rgba) == stain_features(frame)


def test_detector_hsv_is_skimages_on_every_colour():
    from skimage.color import rgb2hsv

    every = np.arange(2 ** 24, dtype=np.uint32)
    colours = np.stack([(every >> 16) & 255, (every >> 8) & 255, every & 255], axis=-1).astype(np.uint8)
    for chunk in np.split(colours.reshape(256, 65536, 3), 16):  # 16 x 1M colours: bounded memory
        want = rgb2hsv(chunk)
        for got, plane in zip(hsv_planes(chunk), range(3)):
            assert np.array_equal(got, want[..., plane]), f"HSV plane {plane} differs from skimage's"


def test_learned_classifier_from_safetensors(tmp_path):
    from safetensors.numpy import save_file

    # A deliberately odd model: "histology" = much skin. Proves the checkpoint, not the rules, decides.
    weight = np.zeros(len(FEATURE_NAMES), np.float32)
    weight[FEATURE_NAMES.index("skin_fraction")] = 40.0
    save_file({"weight": weight, "bias": np.array([-4.0], np.float32)}, str(tmp_path / "clf.safetensors"))
    detect = make_detector(DetectorConfig(), load_classifier(tmp_path / "clf.safetensors"))
    assert detect(presenter())[:2] == (True, "histology")
    assert detect(A)[:2] == (False, "classifier: not histology")
    assert detect(BLANK)[1] == "blank frame"


# ---------------------------------------------------------------- decoding


def test_seeking_decodes_far_fewer_frames(lecture):
    video, _ = lecture
    seek, full = DecodeStats(), DecodeStats()
    sampled = list(sample_frames(video, 1.0, seek))
    all_frames = sum(1 for _ in decode_all_frames(video, full))
    assert [round(t, 2) for t, _ in sampled] == [float(k) for k in range(DURATION)]
    assert all_frames == DURATION * FPS
    assert seek.frames_decoded <= 1.5 * DURATION < all_frames / 3
    # the sampled frame really is the one at its timestamp: t=7 is texture A, t=17 texture B
    frames = dict((round(t), f) for t, f in sampled)
    assert np.abs(frames[17].astype(int) - B).mean() < 6
    assert np.abs(frames[7].astype(int) - A).mean() < 10


def write_panning_video(path: Path, frames: int, fps: int, gop: int, fmt: str | None = None) -> None:
    """Every frame different (a pan over noise), B-frames on (veryfast): reordering and skippable frames."""
    rng = np.random.default_rng(1)
    strip = rng.integers(0, 255, (48, 64 + frames, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps, options={"g": str(gop), "bf": "3", "crf": "20", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(frames):
            img = np.ascontiguousarray(strip[:, 2 * i: 2 * i + 128])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def expected_picks(all_frames: list[tuple[float, np.ndarray]], fps: float, frame_dt: float) -> list[int]:
    """Indices (presentation order) of the first frame at or after each target t - frame_dt/2, each once."""
    picks: list[int] = []
    duration = len(all_frames) * frame_dt
    k = 0
    while k / fps < duration - 1e-6:
        index = next((i for i, (t, _) in enumerate(all_frames) if t >= k / fps - frame_dt / 2), None)
        if index is None:
            break
        if not picks or index > picks[-1]:
            picks.append(index)
        k += 1
    return picks


@pytest.mark.parametrize("gop,fps", [(10, 0.5), (10, 1.0), (25, 1.0), (25, 2.0), (7, 3.0), (250, 2.0)])
def test_sampler_delivers_exactly_the_frames_at_the_requested_times(tmp_path, gop, fps):
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=80, fps=10, gop=gop)
    full = DecodeStats()
    all_frames = list(decode_all_frames(video, full))
    assert full.frames_decoded == 80 and len({t for t, _ in all_frames}) == 80
    picks = expected_picks(all_frames, fps, 0.1)
    stats, seek_stats = DecodeStats(), DecodeStats()
    sampled = list(sample_frames(video, fps, stats))
    seeking = list(sample_frames_seeking(video, fps, seek_stats))
    # the same presentation times (pts) and the same pixels as decoding everything, and as the seeking sampler
    assert [t for t, _ in sampled] == [all_frames[i][0] for i in picks] == [t for t, _ in seeking]
    for (_, got), i, (_, old) in zip(sampled, picks, seeking):
        assert np.array_equal(got, all_frames[i][1]) and np.array_equal(got, old)
    assert stats.frames_decoded <= seek_stats.frames_decoded and stats.frames_decoded < full.frames_decoded
    assert stats.last_t == sampled[-1][0]


def test_frames_convert_to_the_pixels_of_pyav_to_ndarray(tmp_path):
    # the samplers convert through one reformatter per thread: the pixels must be PyAV's own conversion's
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=40, fps=10, gop=10)
    with av.open(str(video)) as container:
        stock = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    ours = list(decode_all_frames(video))
    assert len(ours) == len(stock) == 40
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ours, stock))
    picked = list(sample_frames(video, 2.0)) + list(sample_frames_seeking(video, 2.0))
    by_time = {round(t, 3): rgb for t, rgb in ours}
    assert len(picked) == 16 and all(np.array_equal(rgb, by_time[round(t, 3)]) for t, rgb in picked)


def test_sampler_decodes_only_the_keyframes_it_needs(tmp_path):
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=80, fps=10, gop=10)  # a keyframe a second
    stats = DecodeStats()
    sampled = list(sample_frames(video, 0.5, stats))  # every other keyframe: the GOPs between are never decoded
    assert [t for t, _ in sampled] == [0.0, 2.0, 4.0, 6.0]
    assert stats.frames_decoded == 4 and stats.seeks == 0


@pytest.mark.parametrize("threads", [1, 3])
def test_groups_of_pictures_decoded_at_once_come_out_in_order(tmp_path, monkeypatch, threads):
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=80, fps=10, gop=7)  # 12 GOPs, several picked frames each
    all_frames = list(decode_all_frames(video))
    want = [all_frames[i] for i in expected_picks(all_frames, 3.0, 0.1)]
    monkeypatch.setattr(video_module, "DECODE_THREADS", threads)  # 3: GOPs finish out of order
    got = list(sample_frames(video, 3.0))
    assert [t for t, _ in got] == [t for t, _ in want]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want))


def test_a_long_group_of_pictures_is_decoded_a_few_frames_ahead_and_stops_with_the_caller(tmp_path, monkeypatch):
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=80, fps=10, gop=250)  # one GOP, and at 10 fps every frame is picked
    handed: list[object] = []
    put = video_module._GopDecoders._put
    monkeypatch.setattr(video_module._GopDecoders, "_put", lambda self, job, item: handed.append(item) or put(self, job, item))
    frames = sample_frames(video, 10.0)
    next(frames)
    time.sleep(0.5)  # time for a decoder that does not wait to decode the whole GOP
    # the frame taken, those waiting in the GOP's queue and the one its decoder holds: not all 80
    assert len(handed) <= 2 + video_module._FRAMES_AHEAD_PER_GOP
    closer = threading.Thread(target=frames.close)  # the caller stops: the decoder thread must not wait on it forever
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("gop-decoder")]


def keyframe_times(video: Path) -> list[float]:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return [float(p.pts * stream.time_base) for p in container.demux(stream) if p.size and p.is_keyframe]


@pytest.mark.parametrize("gop,fps,offset", [(20, 1.0, 1.0), (20, 1.0, 0.5), (10, 0.4, 0.5), (25, 2.0, 0.5), (7, 3.0, 0.3),
                                            (250, 2.0, 1.0), (10, 0.5, 0.0)])
def test_nearest_keyframe_sampling_stays_within_the_offset(tmp_path, gop, fps, offset):
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=80, fps=10, gop=gop)
    all_frames = dict(decode_all_frames(video))
    keys = keyframe_times(video)
    exact_stats, stats = DecodeStats(), DecodeStats()
    exact = list(sample_frames(video, fps, exact_stats))
    snapped = list(sample_frames(video, fps, stats, max_keyframe_offset_s=offset))
    times = [t for t, _ in snapped]
    targets = [k / fps for k in range(int(np.ceil(8.0 * fps)))]  # the 8 s video
    # real frames (decode-all's pixels at that time), each once, in order
    assert times == sorted(set(times))
    assert all(np.array_equal(rgb, all_frames[t]) for t, rgb in snapped)
    # every target has a frame within the offset (or its exact frame) and every frame serves a target
    assert all(min(abs(t - target) for t in times) <= max(offset, 0.05) + 1e-9 for target in targets)
    assert all(min(abs(t - target) for target in targets) <= max(offset, 0.05) + 1e-9 for t in times)
    # the rule itself: a target within the offset of a keyframe gets the nearest one (the earlier on a tie)
    # and one with none gets its exact frame
    exact_times = [t for t, _ in exact]
    for target in targets:
        near = [kt for kt in keys if abs(kt - target) <= offset]
        if near:
            assert min(near, key=lambda kt: (abs(kt - target), kt)) in times
        else:
            assert next(t for t in exact_times if t >= target - 0.05) in times
    assert stats.frames_decoded <= exact_stats.frames_decoded
    if offset >= gop / 10 / 2:  # every target within the offset of a keyframe: keyframes only, one decode each
        assert set(times) <= set(keys) and stats.frames_decoded == len(times)


def test_nearest_keyframe_off_gives_the_exact_frames(tmp_path):
    video = tmp_path / "pan.mp4"
    write_panning_video(video, frames=80, fps=10, gop=20)
    exact = list(sample_frames(video, 1.0))
    snapped = list(sample_frames(video, 1.0, max_keyframe_offset_s=1.0))
    assert [t for t, _ in exact] == [float(k) for k in range(8)] and [t for t, _ in snapped] == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="offset must be >= 0"):
        list(sample_frames(video, 1.0, max_keyframe_offset_s=-1.0))


def test_frame_choice_in_process_video(tmp_path, curated, lecture):
    # off: the offset is ignored, the output is the exact sampler's
    off = run_unit(*lecture, frame_choice="exact", max_keyframe_offset_s=3.0)
    assert [(p.id, p.caption, p.provenance) for p in off.pairs] == [(p.id, p.caption, p.provenance) for p in curated.pairs]
    assert [p.image.tobytes() for p in off.pairs] == [p.image.tobytes() for p in curated.pairs]
    assert off.counts == curated.counts
    # on, a keyframe every 2 s: only keyframes decoded; the same slides and captions, bounds within the offset
    video = tmp_path / "lecture.mp4"
    write_video(video, gop=2 * FPS)
    (tmp_path / "lecture.vtt").write_text(VTT)
    on = run_unit(video, tmp_path / "lecture.vtt", frame_choice="nearest_keyframe", max_keyframe_offset_s=1.0)
    assert on.counts["frames_decoded"] == len(keyframe_times(video)) < curated.counts["frames_decoded"]
    assert [p.caption for p in on.pairs] == [p.caption for p in curated.pairs]
    for got, want in zip(on.pairs, curated.pairs):
        assert abs(got.provenance["start_s"] - want.provenance["start_s"]) <= 1.0
        assert abs(got.provenance["end_s"] - want.provenance["end_s"]) <= 1.0


def test_sampler_on_the_demo_videos_matches_the_seeking_sampler(tmp_path):
    from domains.pathology.demo.demo_data import PathologyDemoConfig
    from domains.pathology.demo.demo_data import write_video as write_demo_video

    cfg = PathologyDemoConfig(video_seconds=20.0)
    write_demo_video(tmp_path / "demo.mp4", tmp_path / "demo.vtt", cfg, 0)
    for fps in (2.0, 1.0):  # the demo's sample_fps (params.yaml), and the default
        stats, seek_stats = DecodeStats(), DecodeStats()
        new = list(sample_frames(tmp_path / "demo.mp4", fps, stats))
        old = list(sample_frames_seeking(tmp_path / "demo.mp4", fps, seek_stats))
        assert len(new) == len(old) == int(20 * fps)
        assert all(a == c and np.array_equal(b, d) for (a, b), (c, d) in zip(new, old))
        assert stats.frames_decoded < seek_stats.frames_decoded


def test_sampler_without_packet_timestamps_falls_back_to_seeking(tmp_path):
    video = tmp_path / "pan.h264"  # a raw H.264 stream: packets carry no pts, so nothing can be planned
    write_panning_video(video, frames=30, fps=10, gop=10, fmt="h264")
    with pytest.raises(DecodeError) as new:
        list(sample_frames(video, 1.0))
    with pytest.raises(DecodeError) as old:
        list(sample_frames_seeking(video, 1.0))
    assert str(new.value) == str(old.value)  # the same path: the seeking sampler (raw streams cannot seek)
    with pytest.raises(ValueError, match="fps must be > 0"):
        list(sample_frames(video, 0.0))


# ---------------------------------------------------------------- one video end to end


def test_histology_windows_and_rejected_frames(curated):
    res = curated
    spans = [(p.provenance["start_s"], p.provenance["end_s"]) for p in res.pairs]
    assert spans == [(6.0, 14.0), (16.0, 22.0)]
    frame_rejects = {(r.input.rsplit("@", 1)[1], r.reason) for r in res.rejects if r.stage == "frame"}
    assert ("0.0-5.0s", "text slide") in frame_rejects
    assert ("14.0-15.0s", "blank frame") in frame_rejects
    assert ("22.0-25.0s", "face or presenter") in frame_rejects
    c = res.counts
    assert c["videos_seen"] == 1 and c["frames_sampled"] == DURATION
    assert c["non_histology_text_slide"] == 6 and c["non_histology_face_or_presenter"] == 4
    assert c["non_histology_blank_frame"] == 4 and c["histology_frames"] == DURATION - 14
    assert c["scenes"] >= 8
    # A (8 s), B, A again, C (1 s), D: five windows; C too short, A again a duplicate, D off-topic
    assert c["windows"] == 5 and c["windows_too_short"] == 1 and c["duplicates_within_video"] == 1
    assert c["pairs"] == 2
    reasons = {r.reason for r in res.rejects}
    assert {"stable window too short", "near-duplicate within video", "no medical text in window"} <= reasons


def test_median_frame_represents_long_window(curated, lecture):
    pair = curated.pairs[0]
    prov = pair.provenance
    assert prov["frames_in_window"] == 8 and prov["representative"] == "median"
    assert pair.image.shape == (224, 224, 3)
    clean = resize_crop(A, 224).astype(float)
    single = resize_crop(next(f for t, f in sample_frames(lecture[0], 1.0) if t >= 7), 224).astype(float)
    # the per-pixel median averages the per-frame noise away: closer to the clean texture than one frame
    assert np.abs(pair.image - clean).mean() < 0.8 * np.abs(single - clean).mean()


def windows_of_all(samples, ssim_threshold):
    """The stable windows of a whole list of samples at once (process_video's way before it made them as samples came)."""
    from skimage.metrics import structural_similarity

    windows, current = [], []
    for prev, s in zip([None, *samples[:-1]], samples):
        if (current and s.histology and prev is current[-1] and s.scene == prev.scene
                and structural_similarity(prev.thumb, s.thumb, data_range=1.0) >= ssim_threshold):
            current.append(s)
            continue
        if current:
            windows.append(current)
        current = [s] if s.histology else []
    if current:
        windows.append(current)
    return windows


@pytest.mark.parametrize("seed", range(6))
def test_windows_made_as_samples_arrive_are_those_of_all_samples_at_once(seed):
    rng = np.random.default_rng(seed)
    views = [rng.random((64, 64), dtype=np.float32) for _ in range(3)]
    records, scene = [], 0
    for i in range(60):  # views held for a while, noisy enough at times to break a window, scene cuts, non-histology runs
        scene += rng.random() < 0.05
        noise = rng.uniform(0.1, 0.25) if rng.random() < 0.4 else 0.02  # at times near the threshold's SSIM (0.8 at 0.15)
        thumb = (views[i // 7 % 3] + rng.normal(0, noise, (64, 64))).clip(0, 1).astype(np.float32)
        records.append((float(i), thumb, rng.random() < 0.9, scene))

    def samples():
        return [video_module._Sample(t, thumb, None, histology, "", {}, sc) for t, thumb, histology, sc in records]

    want = [[s.t for s in w] for w in windows_of_all(samples(), 0.8)]
    windows = video_module._StableWindows(0.8)
    got = [[s.t for s in w.samples] for sample in samples() for w in windows.add(sample)]
    got += [[s.t for s in w.samples] for w in windows.close()]
    assert got == want
    assert len(want) > 3 and max(map(len, want)) > 3 and any(len(w) == 1 for w in want)  # windows of every kind


class RecordedPictures(video_module._WindowPictures):
    """_WindowPictures that keep a list of every instance and the most pictures each held in memory."""

    made: list = []

    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        self.most_held, self.spilled = 0, False
        RecordedPictures.made.append(self)

    def add(self, picture) -> None:
        super().add(picture)
        self.most_held = max(self.most_held, len(self.held))
        self.spilled |= self.file is not None


def test_a_video_holds_the_pictures_of_its_open_window_only(lecture, monkeypatch):
    made: list = []

    class Recorded(video_module._Sample):
        def __init__(self, *fields) -> None:
            super().__init__(*fields)
            made.append(self)

    # at each window made into a pair: (pictures in memory, samples with a picture, with a thumbnail, window length)
    held: list[tuple[int, int, int, int]] = []
    add = video_module._WindowPairs.add

    def recording_add(self, window) -> None:
        in_memory = sum(len(p.held) for p in RecordedPictures.made)
        held.append((in_memory, sum(s.image is not None for s in made), sum(s.thumb is not None for s in made), len(window.samples)))
        add(self, window)

    monkeypatch.setattr(video_module, "_Sample", Recorded)
    monkeypatch.setattr(video_module, "_WindowPictures", RecordedPictures)
    monkeypatch.setattr(RecordedPictures, "made", [])
    monkeypatch.setattr(video_module._WindowPairs, "add", recording_add)
    res = run_unit(*lecture)
    assert len(held) == res.counts["windows"] == 5 and len(made) == DURATION
    # the window and the sample that closed it (which may open the next) hold pictures, in the windows' stores and
    # not in the samples; one thumbnail, the last sample's
    assert all(pictures <= length + 1 and in_samples == 0 and thumbs <= 1 for pictures, in_samples, thumbs, length in held)
    assert max(pictures for pictures, *_ in held) < res.counts["histology_frames"]
    assert not any(s.image is not None for s in made) and sum(s.thumb is not None for s in made) == 1
    assert sum(len(p.held) for p in RecordedPictures.made) == 0  # every window's pictures let go once made


def outcome(result) -> tuple:
    """Pairs (ids, pixels, captions, provenance), rejects and counts of a unit result, comparable."""
    pairs = [(p.id, p.image.tobytes(), p.caption, json.dumps(p.provenance, sort_keys=True)) for p in result.pairs]
    return pairs, [tuple(vars(r).values()) for r in result.rejects], dict(result.counts)


def test_a_long_window_keeps_three_pictures_in_memory_and_the_rest_in_a_file(lecture, curated, monkeypatch):
    size = 224 * 224 * 3  # the default image_size's tiles
    monkeypatch.setattr(video_module, "WINDOW_PICTURES_IN_MEMORY", 3 * size)
    monkeypatch.setattr(video_module, "_WindowPictures", RecordedPictures)
    monkeypatch.setattr(RecordedPictures, "made", [])
    res = run_unit(*lecture)
    assert outcome(res) == outcome(curated)  # the same medians, pixel for pixel, as with every picture in memory
    stores = RecordedPictures.made
    assert max(p.most_held for p in stores) == 3 and any(p.spilled for p in stores)
    assert all(p.file is None and not p.held for p in stores)  # files closed (deleted), nothing held


def test_window_pictures_give_back_what_was_added_from_memory_or_file():
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(9)]
    for budget in (10**6, 2 * pictures[0].nbytes + 1, 0):  # all in memory; two, then the file; the file from the first
        store = video_module._WindowPictures(budget)
        for picture in pictures:
            store.add(picture)
        assert (store.file is None) == (budget == 10**6) and len(store.held) <= (9 if budget == 10**6 else 0)
        picks = [8, 0, 4, 4, 7]
        assert all(np.array_equal(got, pictures[i]) for got, i in zip(store.take(picks), picks, strict=True))
        assert store.file is None and store.held == []
    store = video_module._WindowPictures(10**6)
    store.add(pictures[0])
    with pytest.raises(ValueError, match="one shape and dtype"):
        store.add(pictures[0][:4])


def test_captions_cleaned_with_terms_and_magnification(curated):
    first, second = curated.pairs
    assert first.caption == "Here we see the appendix at 40x. Neutrophils infiltrate the muscularis propria."
    assert "Um" in first.provenance["noisy_text"] and "subscribe" in first.provenance["noisy_text"]
    assert first.provenance["terms"] == ["appendix", "neutrophil", "infiltrate", "muscularis propria"]
    assert first.provenance["magnification"] == "40x"
    assert first.caption_variants == {"terms": "appendix, neutrophil, infiltrate, muscularis propria"}
    assert "coffee" not in second.caption and second.provenance["magnification"] == "high power"
    assert {"lymph node", "caseating granuloma", "langhans giant cell"} <= set(second.provenance["terms"])
    assert first.group == second.group == first.provenance["video_id"]
    assert len(first.provenance["phash"]) == 16


def test_truncated_video_keeps_first_half(tmp_path):
    video = tmp_path / "cut.mkv"  # matroska keeps its header in front, so half a file still opens
    write_video(video)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    (tmp_path / "cut.vtt").write_text(VTT)
    res = run_unit(video, tmp_path / "cut.vtt")
    assert [r.reason for r in res.rejects if r.stage == "video"] == ["decode failed midway"]
    assert 0 < res.counts["frames_sampled"] < DURATION
    assert [p.provenance["start_s"] for p in res.pairs] == [6.0]

    mp4 = tmp_path / "cut.mp4"  # mp4 keeps its index at the end: half a file does not open
    write_video(mp4)
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    res = run_unit(mp4, tmp_path / "cut.vtt")
    assert not res.pairs and [(r.stage, r.reason) for r in res.rejects] == [("video", REASON_CANNOT_OPEN)]


def test_plan_rejects_video_without_transcript(tmp_path, lecture):
    for name in ("a.mp4", "b.webm"):
        (tmp_path / name).write_bytes(lecture[0].read_bytes())
    (tmp_path / "a.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nthe appendix\n")
    units, rejects = plan_video_units(tmp_path, VideoConfig())
    assert [Path(u.payload.video).name for u in units] == ["a.mp4"]
    assert units[0].payload.transcript.endswith("a.srt")
    assert [(Path(r.input).name, r.stage, r.reason) for r in rejects] == [("b.webm", "transcript", "no transcript")]
    other, _ = plan_video_units(tmp_path, VideoConfig(min_window_s=3.0))
    assert other[0].key != units[0].key  # output-affecting params are part of the resume key
    assert units[0].inputs == [str(tmp_path / "a.mp4"), str(tmp_path / "a.srt")]  # a fixed transcript invalidates the unit


def test_video_groups_table_puts_a_course_in_one_split(tmp_path, lecture):
    from domains.pathology.curation.curate import read_video_groups

    (tmp_path / "course1").mkdir()
    for name in ("course1/a.mp4", "course1/b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(lecture[0].read_bytes())
        (tmp_path / name).with_suffix(".srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nthe appendix\n")
    table = tmp_path / "groups.csv"
    table.write_text("video,group\ncourse1/a.mp4,histo-101\nb,histo-101\nb,other\n,nothing\n")
    groups, rejects, _ = read_video_groups(table)
    assert groups == {"course1/a.mp4": "histo-101", "b": "histo-101"}
    assert [r.reason for r in rejects] == ["b is given two groups", "row without video or group"]
    units, _ = plan_video_units(tmp_path, VideoConfig(), groups)
    assert {Path(u.payload.video).name: u.payload.group for u in units} == {"a.mp4": "group:histo-101", "b.mp4": "group:histo-101",
                                                                           "c.mp4": ""}  # c: its own group (the video)


def test_plan_names_every_file_it_cannot_pair(tmp_path, lecture):
    video = lecture[0].read_bytes()
    for name in ("a.mp4", "twice.mp4", "twice.mkv", "course/b.mov", "loose.m4v"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(video)
    for name in ("a.vtt", "a.json", "twice.vtt", "course/b.srt", "orphan.srt", "loose.vtt", "orphan2.vtt", "orphan2.txt"):
        (tmp_path / name).write_text(VTT)
    units, rejects = plan_video_units(tmp_path, VideoConfig())
    assert [(u.payload.video, u.payload.transcript) for u in units] == [
        (str(tmp_path / "a.mp4"), str(tmp_path / "a.vtt")),
        (str(tmp_path / "course/b.mov"), str(tmp_path / "course/b.srt")),  # subfolders are not skipped
        (str(tmp_path / "loose.m4v"), str(tmp_path / "loose.vtt")),
    ]
    assert units[1].payload.video_id == video_id("course/b.mov") != video_id("b.mov")
    assert sorted((r.input.replace(str(tmp_path) + "/", ""), r.reason) for r in rejects) == [
        ("a.json (using a.vtt)", REASON_SECOND_TRANSCRIPT),
        ("orphan.srt", REASON_NO_VIDEO),
        ("orphan2.vtt (not video files: orphan2.txt)", REASON_NO_VIDEO),
        ("twice.mkv", REASON_SAME_STEM),
        ("twice.mp4", REASON_SAME_STEM),
    ]


def test_unusable_videos_are_refused_with_the_reason(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 40)
    write_bad_video(tmp_path / "audio.mkv", (0,), 1, audio_only=True)
    (tmp_path / "t.vtt").write_text(VTT)
    reasons = {name: [(r.stage, r.reason) for r in run_unit(tmp_path / name, tmp_path / "t.vtt").rejects]
               for name in ("empty.mp4", "text.mp4", "audio.mkv")}
    assert reasons == {"empty.mp4": [("video", REASON_EMPTY_FILE)], "text.mp4": [("video", REASON_CANNOT_OPEN)],
                       "audio.mkv": [("video", REASON_NO_STREAM)]}


# ---------------------------------------------------------------- the whole command

SMALL = PathologyCurateConfig(video=VideoConfig(sample_fps=1.0, image_size=32, min_window_s=2.0, max_median_frames=3, text_margin_s=0.0),
                              slides=SlideConfig(target_mpp=1.0, tile_size=32, stride=32, max_tiles_per_slide=3, mask_level_max_dim=256),
                              val_fraction=0.3, test_fraction=0.3)


def _manifest(out: Path) -> list[tuple]:
    import pandas as pd

    rows = pd.read_parquet(out / "manifest.parquet").sort_values("id")
    return list(zip(rows["id"], rows["group"], rows["split"], rows["caption"]))


def test_ids_and_splits_do_not_depend_on_how_the_folder_is_spelled(tmp_path, monkeypatch):
    videos = tmp_path / "data" / "videos"
    for i in range(6):
        write_lecture(videos, f"lecture_{i}", classes=((i % 5), (i + 2) % 5), seed=100 + i)
    slides = tmp_path / "data" / "slides"
    write_slide(slides / "slide_00.tiff", slide_image(17))
    write_captions(slides / "captions.csv", [("slide_00", "H&E section of colon with adenocarcinoma.", "tumour")])
    monkeypatch.chdir(tmp_path)
    curate(Path("data/videos"), Path("./data/slides"), Path("data/slides/captions.csv"), Path("relative"), SMALL)
    curate(videos.resolve(), slides.resolve(), (slides / "captions.csv").resolve(), tmp_path / "absolute", SMALL)
    relative, absolute = _manifest(Path("relative")), _manifest(tmp_path / "absolute")
    assert len(relative) >= 8 and {r[0].split("-")[0] for r in relative} >= {"lecture_0", "slide_00"}
    assert relative == absolute


def test_transcript_fixed_or_video_replaced_in_place_is_processed_again(tmp_path):
    videos = tmp_path / "videos"
    write_lecture(videos, "kept", classes=(1, 4), seed=3)
    write_lecture(videos, "edited", classes=(0, 3), seed=4, cues=[(0.5, 2.5, "Here is the appendix."), (3.5, 5.5, "Coffee first.")])
    first = curate(videos, None, None, tmp_path / "out", SMALL)
    before = {r[3] for r in _manifest(tmp_path / "out")}
    assert "Here is the appendix." in before and first["units"] == {"total": 2, "failed": 0}
    assert first["run"]["units_cached"] == 0 and first["run"]["units_processed"] == 2

    (videos / "edited.vtt").write_text(transcript_text([(0.5, 2.5, "Here is the lymph node."), (3.5, 5.5, NARRATION[3])], "vtt"))
    second = curate(videos, None, None, tmp_path / "out", SMALL)
    after = {r[3] for r in _manifest(tmp_path / "out")}
    assert second["units"] == {"total": 2, "failed": 0} and second["run"]["units_cached"] == 1 and second["run"]["units_processed"] == 1
    assert "Here is the appendix." not in after and {"Here is the lymph node.", NARRATION[3]} <= after

    phashes = _phashes(tmp_path / "out", "edited")
    write_bad_video(videos / "edited.mp4", (2, 1), 9)  # other tissue, same name
    third = curate(videos, None, None, tmp_path / "out", SMALL)
    assert third["units"] == {"total": 2, "failed": 0} and third["run"]["units_cached"] == 1 and third["run"]["units_processed"] == 1
    assert _phashes(tmp_path / "out", "edited").isdisjoint(phashes)


def _phashes(out: Path, stem: str) -> set[str]:
    import pandas as pd

    rows = pd.read_parquet(out / "manifest.parquet")
    return {json.loads(p)["phash"] for p, src in zip(rows["provenance"], rows["source"]) if Path(src).stem == stem}


# ---------------------------------------------------------------- transcripts


def _srt_time(s: float) -> str:
    return f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{int(s % 60):02d},{int(round(s % 1 * 1000)):03d}"


def test_srt_and_whisper_json_parse_like_vtt(tmp_path):
    (tmp_path / "t.vtt").write_text(VTT)
    parsed = parse_transcript(tmp_path / "t.vtt", DURATION)
    cues = parsed.cues
    assert len(cues) == 6 and not parsed.rejects and not parsed.warnings
    srt = "\n".join(f"{i}\n{_srt_time(c.start)} --> {_srt_time(c.end)}\n{c.text}\n" for i, c in enumerate(cues, 1))
    (tmp_path / "t.srt").write_text(srt)
    segments = [{"start": c.start, "end": c.end, "text": " " + c.text} for c in cues]
    (tmp_path / "a.json").write_text(json.dumps(segments))
    (tmp_path / "b.json").write_text(json.dumps({"text": "...", "segments": segments}))
    for name in ("t.srt", "a.json", "b.json"):
        assert parse_transcript(tmp_path / name, DURATION) == Transcript(cues, [], [])


def test_bad_cues_become_reject_rows(tmp_path):
    path = tmp_path / "bad.vtt"
    path.write_text(
        "WEBVTT\n\n"
        "00:00:01.000 --> 00:00:04.000\nthe appendix\n\n"
        "00:00:xx --> 00:00:05.000\nmalformed timing\n\n"
        "00:00:03.000 --> 00:00:06.000\noverlaps the first\n\n"
        "00:00:09.000 --> 00:00:07.000\nends before it starts\n\n"
        "00:00:10.000 --> 00:00:12.000\nfine again\n\n"
        "00:01:40.000 --> 00:01:45.000\nafter the end of the video\n"
    )
    parsed = parse_transcript(path, duration_s=30.0)
    assert [c.text for c in parsed.cues] == ["the appendix", "fine again"]
    assert [(r.input.rsplit("#", 1)[1], r.stage, r.reason) for r in parsed.rejects] == [
        ("cue2", "transcript", "unparseable timestamp"),
        ("cue3", "transcript", "overlapping cue"),
        ("cue4", "transcript", "end before start"),
        ("cue6", "transcript", "beyond video duration"),
    ]
    (tmp_path / "junk.srt").write_text("this is not a transcript at all")
    with pytest.raises(TranscriptError) as refused:
        parse_transcript(tmp_path / "junk.srt")
    assert refused.value.reason == "no usable cue"
    assert [(r.input.rsplit("#", 1)[1], r.reason) for r in refused.value.rejects] == [("cue1", "cue without timing")]



def test_out_of_range_timestamps_are_unparseable(tmp_path):
    path = tmp_path / "t.vtt"
    path.write_text("WEBVTT\n\n00:00:75.000 --> 00:01:20.000\nthe appendix\n\n01:75:00.000 --> 01:76:00.000\nthe colon\n\n"
                    "75:00.000 --> 75:04.000\nthe liver\n")
    parsed = parse_transcript(path)
    assert [(c.start, c.text) for c in parsed.cues] == [(4500.0, "the liver")]  # MM:SS may count past an hour
    assert [r.reason for r in parsed.rejects] == ["unparseable timestamp", "unparseable timestamp"]


@pytest.mark.parametrize("content,reason", [
    ("", "empty transcript"),
    ("WEBVTT\n\n", "empty transcript"),
    ('{"segments": [{"start": 0.5,', "invalid JSON"),
    ('{"text": "the appendix", "language": "en"}', "JSON transcript without segments"),
    (b"\x00\x01WEBVTT\x00" * 9, "not a text file"),
])
def test_transcripts_without_cues_say_why(tmp_path, content, reason):
    path = tmp_path / ("t.json" if "{" in str(content) else "t.vtt")
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TranscriptError) as refused:
        parse_transcript(path)
    assert refused.value.reason == reason and str(path) in refused.value.where


def test_json_segments_with_bad_fields_are_cue_rejects(tmp_path):
    segments = [{"start": 0, "end": 2, "text": "the appendix"}, {"start": None, "end": 3, "text": "x"}, {"end": 4, "text": "y"},
                "not a segment", {"start": "nan", "end": 5, "text": "z"}, {"start": 6, "end": 7, "text": "a lymph node"}]
    (tmp_path / "w.json").write_text(json.dumps({"segments": segments}))
    parsed = parse_transcript(tmp_path / "w.json")
    assert [c.text for c in parsed.cues] == ["the appendix", "a lymph node"]
    assert [(r.input.rsplit("#", 1)[1], r.reason) for r in parsed.rejects] == [
        ("cue2", "unparseable timestamp"), ("cue3", "malformed cue"), ("cue4", "malformed cue"), ("cue5", "unparseable timestamp")]


CAPTION = "Dr. M\u00fcller\u2019s appendix \u2013 neutrophils everywhere."


@pytest.mark.parametrize("encoding,warned", [("utf-8", False), ("utf-8-sig", False), ("utf-16", False), ("cp1252", True)])
def test_transcript_encodings_decode_right(tmp_path, encoding, warned):
    path = tmp_path / "t.srt"
    path.write_bytes(f"1\r\n00:00:01,000 --> 00:00:04,000\r\n{CAPTION}\r\n".encode(encoding))
    parsed = parse_transcript(path)
    assert [c.text for c in parsed.cues] == [CAPTION]
    assert bool(parsed.warnings) == warned
    if warned:
        assert parsed.warnings[0].startswith(f"{path}: not UTF-8") and "cp1252" in parsed.warnings[0]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_whisper_json_with_a_bom(tmp_path, encoding):
    path = tmp_path / "w.json"  # Windows tools write a BOM, which json.loads refuses on its own
    path.write_bytes(json.dumps({"segments": [{"start": 1, "end": 4, "text": CAPTION}]}, ensure_ascii=False).encode(encoding))
    assert parse_transcript(path) == Transcript([Cue(1.0, 4.0, CAPTION)], [], [])


def test_unparseable_transcript_rejects_the_video(tmp_path, lecture):
    (tmp_path / "lecture.json").write_text("{not json")
    res = run_unit(lecture[0], tmp_path / "lecture.json")
    assert not res.pairs and [(r.input, r.stage, r.reason) for r in res.rejects] == [
        (f"{tmp_path / 'lecture.json'}#line1", "transcript", "invalid JSON")]


def test_latin1_transcript_is_decoded_and_warned(tmp_path, lecture):
    (tmp_path / "lecture.vtt").write_bytes(VTT.replace("Um, so here we see", "Voil\u00e0, here we see").encode("latin-1"))
    res = run_unit(lecture[0], tmp_path / "lecture.vtt")
    assert res.pairs[0].caption.startswith("Voil\u00e0, here we see the appendix")
    assert len(res.warnings) == 1 and res.warnings[0].startswith(f"{tmp_path / 'lecture.vtt'}: not UTF-8")



# ---------------------------------------------------------------- text and dedupe


def test_text_cleaner_repetitions_and_plurals():
    out = clean_text("So, okay, the the glomeruli glomeruli show show crescents. Alright, like and subscribe. "
                     "Metastases in two lymph nodes at 20 x.")
    assert out.text == "The glomeruli show crescents. Metastases in two lymph nodes at 20 x."
    assert out.terms == ["glomerulus", "metastasis", "lymph node"]
    assert out.magnification == "20x" and out.sentences_dropped == 1
    assert clean_text("Thanks for watching, see you next week.").text == ""
    assert load_vocabulary(["crescent"]).find("glomerular crescents") == ["crescent"]


def test_cross_video_duplicates(tmp_path, curated):
    other = tmp_path / "other.mp4"
    write_video(other, [(2, BLANK, 0), (5, A, 6), (5, D, 0)])  # texture A again, in another video
    (tmp_path / "other.vtt").write_text("WEBVTT\n\n00:00:02.000 --> 00:00:07.000\nThe appendix again.\n\n"
                                        "00:00:07.500 --> 00:00:12.000\nA thyroid follicle.\n")
    res2 = run_unit(other, tmp_path / "other.vtt")
    assert len(res2.pairs) == 2
    records = [(p.id, p.provenance["phash"], p.provenance["video_id"]) for p in [*curated.pairs, *res2.pairs]]
    drop = cross_video_duplicates(records, max_distance=8)
    a_in_other = res2.pairs[0].id
    assert drop == [a_in_other] or (len(drop) == 1 and drop[0] == curated.pairs[0].id)
    assert cross_video_duplicates(list(reversed(records)), 8) == drop  # order of input does not matter
    rows = [{"id": p.id, "provenance": json.dumps(p.provenance)} for p in [*curated.pairs, *res2.pairs]]
    assert dedupe_across_videos(rows, 8) == set(drop)


# ---------------------------------------------------------------- real data


def _markdown_sentences(text: str) -> list[str]:
    text = re.sub(r"^---.*?---", " ", text, flags=re.S)  # front matter
    text = re.sub(r"<[^>]+>\[[\d:]+\]</a>|<[^>]+>", " ", text)  # timestamp links, html
    text = re.sub(r"\[\[[^|\]]*\|\s*([^\]]+)\]\]|\[\[([^\]]+)\]\]", lambda m: m.group(1) or m.group(2).replace("_", " "), text)
    text = re.sub(r"[*#>`]|\[!\w+\|[^\]]*\]", " ", text)
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.realdata
def test_cleaner_on_real_lecture_summaries():
    folder = REALDATA / "histo" / "youtube_derived_tubegraph"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    terms: set[str] = set()
    kept = total = 0
    for md in sorted(folder.glob("*.md")):
        out = clean_text(" ".join(_markdown_sentences(md.read_text())))
        assert out.terms, md.name
        terms.update(out.terms)
        kept += out.sentences_kept
        total += out.sentences_kept + out.sentences_dropped
    assert {"appendicitis", "neutrophil", "muscularis propria", "tuberculosis", "caseous necrosis"} <= terms
    assert len(terms) >= 40
    assert kept >= 0.6 * total  # lecture summaries are mostly medical: most sentences stay
