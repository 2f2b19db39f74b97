import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

# Tests run on 2 cores; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real sample data not found at {REALDATA}")
    return REALDATA


@pytest.fixture(scope="module")
def tiny():
    """The demo's tiny open_clip architecture, randomly initialised with seed 0: one per test module."""
    import warnings

    import torch

    from pipelines.models.clip import ModelSpec, load_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(ModelSpec(name="domainfm-tiny"))
