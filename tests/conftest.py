import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

# Tests run on 2 cores; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory):
    """The run's own $DOMAINFM_CACHE (fetched files, embeddings, remembered weight digests): tests leave the user's cache alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOMAINFM_CACHE", str(tmp_path_factory.mktemp("domainfm-cache")))
        yield


@pytest.fixture(autouse=True)
def own_test_cache(own_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own $DOMAINFM_CACHE: a map or search cannot find another test's embeddings and skip what it tests."""
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "domainfm-cache"))


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
