"""The reordered CT preprocessing (apply_transforms) against MONAI's chain (Merlin's preprocessing).

The output grid is computed without MONAI (`output_grid`); `test_output_grid_is_monais` checks it
against the grids MONAI's own transforms record when run lazily, on random geometries. Fixtures
cover what the plan has to get right: voxel axes stored flipped and permuted (the orientation),
output grids both larger (padding) and smaller (cropping) than the resampled volume,
spacings that put samples between input voxels and at the volume's edge (Spacing's border rule), an
oblique affine, another interpolation (which runs MONAI's chain itself), and the real CT.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from domains.ct.curation.preprocess import (
    OutputGrid,
    PreprocessConfig,
    apply_monai_chain,
    apply_transforms,
    build_transforms,
    output_grid,
    plan_resampling,
    preprocess_volume,
)
from domains.ct.curation.volumes import Volume, load_volume

TOLERANCE = 1e-3  # the bar; observed differences are float32 rounding (~1e-7)
REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "ct" / "totalsegmentator"


def _volume(shape: tuple[int, int, int], affine: np.ndarray, seed: int = 0) -> Volume:
    """Smooth anatomy-like HU values plus noise, so interpolation errors would show."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = np.where(grids[0] ** 2 + grids[1] ** 2 < 0.7, 40.0, -1000.0) + 600 * np.sin(3 * grids[2]) * (grids[0] > 0)
    return Volume(data=(body + rng.normal(0, 30, shape)).astype(np.float32), affine=affine, modality=None)


def _affine(spacing, flips=(1, 1, 1), perm=(0, 1, 2), origin=(-100.0, 80.0, -60.0)) -> np.ndarray:
    a = np.zeros((4, 4))
    for col, row in enumerate(perm):
        a[row, col] = flips[col] * spacing[col]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def _cfg(pixdim: list[float], size: list[int]) -> PreprocessConfig:
    return PreprocessConfig(pixdim=pixdim, spatial_size=size)


CASES = {
    "ras, cropped in-plane, padded in z": ((60, 50, 20), _affine((2.0, 2.0, 5.0)), _cfg([3.0, 3.0, 4.0], [32, 32, 32])),
    "lps (x, y flipped)": ((41, 37, 19), _affine((2.5, 2.5, 6.0), flips=(-1, -1, 1)), _cfg([3.5, 3.0, 5.0], [30, 28, 20])),
    "axes permuted and flipped": ((23, 44, 31), _affine((5.0, 2.0, 3.0), flips=(1, -1, -1), perm=(2, 0, 1)),
                                  _cfg([2.5, 4.0, 4.5], [36, 24, 40])),
    "upsampling, odd sizes": ((17, 15, 13), _affine((6.0, 6.0, 8.0)), _cfg([2.7, 3.1, 3.3], [41, 27, 33])),
    "the demo's grid": ((96, 96, 64), _affine((3.0, 3.0, 5.0), flips=(-1, -1, 1)), _cfg([4.5, 4.5, 6.5], [64, 64, 48])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_output_as_the_monai_chain(name: str) -> None:
    shape, affine, cfg = CASES[name]
    vol = _volume(shape, affine)
    ours, ours_affine = apply_transforms(vol, cfg)
    ref, ref_affine = apply_monai_chain(vol, cfg)
    assert plan_resampling(shape, affine, cfg) is not None  # the reordered path ran, not the fallback
    assert ours.shape == ref.shape == (1, *cfg.spatial_size) and ours.dtype == np.float32
    assert float(np.abs(ours - ref).max()) <= TOLERANCE
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-9)
    assert ref.std() > 0.05  # the fixture has structure: equality is not of two blank arrays


def monai_grid(shape: tuple[int, int, int], affine: np.ndarray, cfg: PreprocessConfig) -> OutputGrid:
    """The grids MONAI's transforms record, run lazily on a zero-stride stand-in of the volume (no voxel moves)."""
    import torch
    from monai.data import MetaTensor

    stand_in = MetaTensor(torch.zeros(1).expand(1, *shape), affine=torch.as_tensor(affine, dtype=torch.float64))
    orientation, spacing, _, pad_crop = build_transforms(cfg).transforms
    oriented = orientation(stand_in, lazy=True)
    resampled = spacing(oriented, lazy=True)
    out = pad_crop(resampled, lazy=True)
    affines = [np.asarray(t.peek_pending_affine(), dtype=np.float64) for t in (oriented, resampled, out)]
    shapes = [[int(v) for v in t.peek_pending_shape()] for t in (oriented, resampled, out)]
    return OutputGrid(affines[0], shapes[0], affines[1], shapes[1], affines[2], shapes[2])


def _random_geometry(rng: np.random.Generator) -> tuple[tuple[int, int, int], np.ndarray, PreprocessConfig]:
    """A volume's shape and affine (axes permuted and flipped, often oblique, sometimes sheared) and a setting."""
    pixdim = rng.uniform(0.5, 7.0, 3).round(2)
    spacing = rng.uniform(0.4, 6.0, 3)
    near = rng.random(3) < 0.3  # spacings at, within or just beyond 1e-3 mm of the target: the keep rule both ways
    spacing[near] = pixdim[near] + rng.choice([0.0, 4e-4, -9e-4, 2e-3], near.sum())
    affine = _affine(spacing, flips=rng.choice([-1, 1], 3), perm=rng.permutation(3), origin=rng.uniform(-300, 300, 3))
    if rng.random() < 0.5:  # oblique: rotated about a random axis (Rodrigues' formula)
        axis = rng.normal(size=3)
        k = np.cross(np.eye(3), axis / np.linalg.norm(axis))
        angle = rng.uniform(0.02, 0.7)
        affine[:3, :3] = (np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k) @ affine[:3, :3]
    if rng.random() < 0.2:  # sheared: no per-axis plan, the chain runs (and Spacing centres its grid)
        shear = np.eye(3)
        shear[rng.permutation(3)[:2]] += rng.choice([-1, 1]) * rng.uniform(0.05, 0.4) * np.eye(3)[rng.integers(0, 3)]
        affine[:3, :3] = affine[:3, :3] @ shear
    shape = tuple(int(n) for n in rng.integers(5, 130, 3))
    size = [int(n) for n in rng.integers(6, 90, 3)]
    return shape, affine, PreprocessConfig(pixdim=pixdim.tolist(), spatial_size=size)


def test_output_grid_is_monais() -> None:
    """On 300 random geometries, each step's grid (shape and affine) is the one MONAI's lazy transforms record."""
    rng = np.random.default_rng(7)
    planned = kept = 0
    for _ in range(300):
        shape, affine, cfg = _random_geometry(rng)
        ours, ref = output_grid(shape, affine, cfg), monai_grid(shape, affine, cfg)
        assert [ours.oriented_shape, ours.resampled_shape, ours.shape] == [ref.oriented_shape, ref.resampled_shape, ref.shape]
        for step in ("oriented_affine", "resampled_affine", "affine"):
            np.testing.assert_allclose(getattr(ours, step), getattr(ref, step), rtol=0, atol=1e-9, err_msg=f"{step}: {shape} {cfg}")
        spacing = [np.sqrt((a[:3, :3] ** 2).sum(axis=0)) for a in (ref.oriented_affine, ref.resampled_affine)]
        kept += bool(np.any(np.abs(spacing[0] - spacing[1]) < 1e-12))  # an input spacing Spacing kept
        plan = plan_resampling(shape, affine, cfg)
        planned += plan is not None
        if plan is not None:
            for p in plan[0]:  # every output position reads input voxels inside the volume
                assert p.coords.min() >= 0 and p.coords.max() <= shape[p.source_axis] - 1
    assert 200 < planned < 300 and kept > 20  # most geometries planned, sheared ones not; the keep rule exercised


def test_plan_reads_only_the_box_the_output_needs() -> None:
    """A volume much larger than the output's field of view: the plan's positions stay inside its centre."""
    shape, cfg = (200, 200, 60), PreprocessConfig(pixdim=[2.0, 2.0, 4.0], spatial_size=[40, 40, 30])
    plans, _ = plan_resampling(shape, _affine((1.0, 1.0, 2.0)), cfg)
    by_axis = {p.source_axis: p for p in plans}
    for axis in (0, 1):  # 80 mm of 200 mm in-plane: about the centre 80 voxels
        assert 55 <= by_axis[axis].coords.min() and by_axis[axis].coords.max() <= 145
    assert by_axis[2].valid == slice(0, 30) and by_axis[2].coords.max() <= 59


def test_oblique_affine_is_planned_too() -> None:
    """Spacing keeps an oblique volume's directions, so its resampling is still a per-axis scale."""
    theta = np.deg2rad(20)
    oblique = _affine((2.0, 2.0, 4.0))
    oblique[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]) @ oblique[:3, :3]
    vol = _volume((30, 30, 16), oblique)
    cfg = PreprocessConfig(pixdim=[3.0, 3.0, 5.0], spatial_size=[24, 24, 16])
    assert plan_resampling(vol.data.shape, oblique, cfg) is not None
    ours, ours_affine = apply_transforms(vol, cfg)
    ref, ref_affine = apply_monai_chain(vol, cfg)
    assert float(np.abs(ours - ref).max()) <= TOLERANCE and ref.std() > 0.05
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-9)


def test_other_interpolation_runs_the_monai_chain() -> None:
    nearest = PreprocessConfig(pixdim=[3.0, 3.0, 5.0], spatial_size=[24, 24, 16], interpolation="nearest")
    assert plan_resampling((30, 30, 16), _affine((2.0, 2.0, 4.0)), nearest) is None
    vol = _volume((30, 30, 16), _affine((2.0, 2.0, 4.0)))
    assert np.array_equal(apply_transforms(vol, nearest)[0], apply_monai_chain(vol, nearest)[0])


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_CT.is_dir(), reason=f"real sample data not found at {REAL_CT}")
@pytest.mark.parametrize("name", ["example_ct.nii.gz", "example_ct_dicom"])
@pytest.mark.parametrize("cfg", [PreprocessConfig(), PreprocessConfig(pixdim=[4.5, 4.5, 6.5], spatial_size=[64, 64, 48])],
                         ids=["real setting", "demo setting"])
def test_real_ct_same_output_as_the_monai_chain(name: str, cfg: PreprocessConfig, tmp_path: Path) -> None:
    vol = load_volume(REAL_CT / name)
    ref, _ = apply_monai_chain(vol, cfg)
    ours, meta, hit = preprocess_volume(REAL_CT / name, cfg, tmp_path)
    assert not hit and float(np.abs(ours - ref).max()) <= TOLERANCE and ref.max() > 0.9
    assert nib.aff2axcodes(np.asarray(meta["output_affine"])) == ("R", "A", "S")


@pytest.mark.parametrize("slope, inter, suffix", [(None, None, ".nii.gz"), (2.0, -1024.0, ".nii.gz"), (None, None, ".nii")],
                         ids=["stored HU", "scaled (slope, intercept)", "uncompressed"])
def test_nifti_first_pass_matches_the_chain_and_the_float_loader(tmp_path: Path, slope, inter, suffix) -> None:
    """preprocess_volume reads the file once and keeps stored integer HU as they are: same output and metadata."""
    vol = _volume((70, 60, 24), _affine((2.0, 2.0, 5.0), flips=(-1, -1, 1)))
    stored = np.round(vol.data if slope is None else (vol.data - inter) / slope).astype(np.int16)
    img = nib.Nifti1Image(stored, vol.affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / f"ct{suffix}"
    nib.save(img, str(path))
    as_float = load_volume(path)
    as_stored = load_volume(path, contents=path.read_bytes(), stored=True)
    assert as_float.data.dtype == np.float32
    assert as_stored.data.dtype == (np.int16 if slope is None else np.float32)
    assert np.array_equal(as_stored.data, as_float.data)
    cfg = _cfg([3.0, 3.0, 4.0], [40, 40, 36])
    ours, meta, _ = preprocess_volume(path, cfg, None)
    ref, _ = apply_monai_chain(as_float, cfg)
    assert float(np.abs(ours - ref).max()) <= TOLERANCE and ref.std() > 0.05
    assert meta["input_hu_range"] == [float(as_float.data.min()), float(as_float.data.max())]
    assert meta["input_shape"] == [70, 60, 24]


def test_preprocessing_a_volume_imports_neither_monai_nor_torch(tmp_path: Path) -> None:
    """A curation worker preprocesses with numpy and nibabel: MONAI's import alone is 3-5 s and ~1 GB per process."""
    vol = _volume((40, 36, 20), _affine((2.0, 2.0, 5.0), flips=(-1, -1, 1)))
    nib.save(nib.Nifti1Image(np.round(vol.data).astype(np.int16), vol.affine), str(tmp_path / "ct.nii.gz"))
    code = ("import sys; from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume; "
            f"array, _, _ = preprocess_volume({str(tmp_path / 'ct.nii.gz')!r}, PreprocessConfig(pixdim=[3.0, 3.0, 4.0], "
            "spatial_size=[32, 32, 24]), None); "
            "print(array.shape, sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "(1, 32, 32, 24) []"
