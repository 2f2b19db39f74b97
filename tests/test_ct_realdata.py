"""CT loading and preprocessing on real files (TotalSegmentator examples, pydicom samples, PheWAS map)."""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from domains.ct.curation.ehr import code_phenotypes, load_phecode_map, normalise_code
from domains.ct.curation.preprocess import PreprocessConfig, preprocess_volume
from domains.ct.curation.volumes import VolumeError, load_dicom_series, load_volume, validate_volume

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CT = REALDATA / "ct"
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not CT.is_dir(), reason=f"real sample data not found at {CT}"),
]


def _corners(shape, affine) -> np.ndarray:
    idx = np.array(list(itertools.product(*[(0, s - 1) for s in shape[:3]])), float)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return np.array(sorted(map(tuple, world.round(3))))


def test_dicom_series_on_dcm2niix_grid() -> None:
    vol = load_dicom_series(CT / "totalsegmentator" / "example_ct_dicom")
    ref = nib.load(str(CT / "totalsegmentator" / "example_seg_dicom.nii.gz"))
    assert sorted(vol.data.shape) == sorted(ref.shape)
    np.testing.assert_allclose(_corners(vol.data.shape, vol.affine), _corners(ref.shape, ref.affine), atol=1e-3)
    assert vol.modality == "CT" and vol.data.min() <= -1000  # rescale applied: air in HU


def test_example_ct_small_shape() -> None:
    cfg = PreprocessConfig(pixdim=[3.0, 3.0, 3.0], spatial_size=[96, 96, 64])
    arr, meta, hit = preprocess_volume(CT / "totalsegmentator" / "example_ct.nii.gz", cfg, None)
    assert arr.shape == (1, 96, 96, 64) and arr.dtype == np.float32 and not hit
    assert arr.min() >= 0 and arr.max() <= 1 and arr.max() > 0.9 and (arr < 0.05).mean() > 0.05
    out_affine = np.asarray(meta["output_affine"])
    assert nib.aff2axcodes(out_affine) == ("R", "A", "S")


def test_example_ct_full_shape_and_cache(tmp_path: Path) -> None:
    t = time.time()
    arr, meta, hit = preprocess_volume(CT / "totalsegmentator" / "example_ct.nii.gz", PreprocessConfig(), tmp_path)
    assert time.time() - t < 20
    assert arr.shape == (1, 224, 224, 160) and 0 <= arr.min() and arr.max() <= 1 and not hit
    np.testing.assert_allclose(np.diag(np.asarray(meta["output_affine"]))[:3], [1.5, 1.5, 3.0])
    again, _, hit = preprocess_volume(CT / "totalsegmentator" / "example_ct.nii.gz", PreprocessConfig(), tmp_path)
    assert hit and np.array_equal(arr, again)


@pytest.mark.parametrize(
    "path, reason",
    [
        ("totalsegmentator/example_mr_sm.nii.gz", "not CT (no air near -1000 HU)"),
        ("pydicom/MR_small.dcm", "not CT (DICOM modality)"),
        ("pydicom/CT_small.dcm", "too few slices"),  # modality CT accepted, but a single slice
    ],
)
def test_not_ct_or_too_thin_rejected(path: str, reason: str) -> None:
    with pytest.raises(VolumeError) as err:
        vol = load_volume(CT / path)
        validate_volume(vol, min_slices=10, air_hu=-900, min_air_fraction=0.01)
    assert err.value.reason == reason


def test_ct_small_is_ct_modality() -> None:
    vol = load_volume(CT / "pydicom" / "CT_small.dcm")
    assert vol.modality == "CT" and vol.data.shape == (128, 128, 1)


def test_phewas_map_rolls_up_icd9_and_icd10() -> None:
    # Read in place (GPL-3): never copied into the repository.
    m = load_phecode_map(CT / "phecode" / "PheWAS_phecode_map_v1.2_icd9cm_icd10cm.csv")
    icd9, reason9 = code_phenotypes("ICD9CM", normalise_code("250.00"), m)
    icd10, reason10 = code_phenotypes("ICD10CM", normalise_code("E11.9"), m)
    assert reason9 is None and reason10 is None
    assert "250" in icd9 and "250" in icd10 and "250.2" in icd10
