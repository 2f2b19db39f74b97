"""The pathology demo writer: decodable videos with transcripts, openslide-readable slides with MPP,
and a zero-shot set whose classes are separable by simple colour/texture features."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import openslide
import pytest
from PIL import Image
from scipy import ndimage

from domains.pathology.demo.demo_data import CLASSNAMES, PathologyDemoConfig, render_tissue, write_demo_data

PARAMS = {"n_videos": 2, "video_seconds": 30.0, "n_slides": 1, "slide_size": 2048, "zeroshot_per_class": 30}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pathology_demo")
    write_demo_data(out, PathologyDemoConfig(**PARAMS))
    return out


def test_videos_decode_with_duration_and_transcript(demo: Path) -> None:
    videos = sorted((demo / "videos").glob("lecture_*.mp4"))
    assert len(videos) == PARAMS["n_videos"]
    for mp4 in videos:
        with av.open(str(mp4)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        fps = 10
        assert abs(len(frames) / fps - PARAMS["video_seconds"]) < 0.5
        vtt = mp4.with_suffix(".vtt").read_text()
        assert vtt.startswith("WEBVTT")
        assert "-->" in vtt
        assert any(name in vtt for name in CLASSNAMES)
        # frames differ over time (segments and pan/zoom), not one still image
        assert np.abs(frames[0].astype(int) - frames[len(frames) // 2].astype(int)).mean() > 5


def test_slides_open_with_mpp_and_pyramid(demo: Path) -> None:
    slides = sorted((demo / "slides").glob("slide_*.tiff"))
    assert len(slides) == PARAMS["n_slides"]
    for path in slides:
        with openslide.OpenSlide(str(path)) as s:
            assert s.level_count > 1
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert s.dimensions == (PARAMS["slide_size"], PARAMS["slide_size"])
    header = (demo / "slides" / "captions.csv").read_text().splitlines()[0]
    assert header == "slide_id,caption,label"


def _zeroshot(demo: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    with tarfile.open(demo / "zeroshot" / "test-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    for name, data in members.items():
        if name.endswith(".png"):
            key = name[: -len(".png")]
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(int(members[key + ".cls"]))
            json.loads(members[key + ".json"])
    return np.stack(images), np.array(labels)


def _features(img: np.ndarray) -> np.ndarray:
    a = img.astype(np.float32) / 255
    grey = a.mean(-1)
    texture = [ndimage.laplace(grey).std(), (grey < 0.4).mean(), (grey > 0.9).mean()]
    return np.concatenate([a.reshape(-1, 3).mean(0), a.reshape(-1, 3).std(0), texture])


def test_zeroshot_set_complete_and_separable(demo: Path) -> None:
    images, labels = _zeroshot(demo)
    assert images.shape[1:] == (64, 64, 3)
    assert set(labels.tolist()) == set(range(len(CLASSNAMES)))
    assert (demo / "zeroshot" / "classnames.txt").read_text().split("\n")[:5] == list(CLASSNAMES)
    # No templates file (it used to disagree with prompts.py): evaluation writes the templates it used.
    assert not (demo / "zeroshot" / "templates.txt").exists()
    feats = np.stack([_features(i) for i in images])
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    train = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([feats[train & (labels == c)].mean(0) for c in range(len(CLASSNAMES))])
    pred = np.argmin(((feats[~train, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == labels[~train]).mean() > 0.6


@pytest.mark.parametrize("size", [64, 224])
def test_render_tissue_varies_with_seed(size: int) -> None:
    for c in range(len(CLASSNAMES)):
        a = render_tissue(c, size, np.random.default_rng(1))
        b = render_tissue(c, size, np.random.default_rng(2))
        assert a.shape == (size, size, 3) and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 3


def test_default_detector_sorts_demo_frames() -> None:
    """The demo's lecture frames exercise every detector rule: non-histology segments are rejected
    for their own reason, and tissue of every class, as the videos show it, is accepted."""
    from domains.pathology.curation.stain import detect_histology
    from domains.pathology.demo.demo_data import PathologyDemoConfig, _pan_zoom, _presenter_frame, _title_frame

    cfg = PathologyDemoConfig()
    size, rng = cfg.video_size, np.random.default_rng(0)
    assert detect_histology(_title_frame(size, "Pathology lecture 1\nColorectal histology"))[1] == "text slide"
    assert detect_histology(np.zeros((size, size, 3), np.uint8))[1] == "blank frame"
    for _ in range(4):
        assert detect_histology(_presenter_frame(size, rng))[1] == "face or presenter"
    for c in range(len(CLASSNAMES)):
        frames = [next(_pan_zoom(render_tissue(c, int(size * 1.6), rng, scale=cfg.video_tissue_scale), size, 2, rng))
                  for _ in range(4)]
        accepted = [detect_histology(f)[0] for f in frames]
        assert sum(accepted) >= 3, (CLASSNAMES[c], [detect_histology(f)[1] for f in frames])
