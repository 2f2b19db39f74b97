"""The analysts' notebooks run top to bottom on tiny exports by changing only their parameters cell."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from bad_inputs.ct import write_nifti
from test_ct_analyst import PHENOTYPES, PREPROCESS, TINY

from domains.ct.prompts import FINDING_PROMPTS
from domains.pathology.demo.demo_data import PathologyDemoConfig, render_slide, write_slide
from pipelines.errors import InputError
from pipelines.models import volume as M
from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir
from pipelines.models.report_text import train_wordpiece_tokenizer
from pipelines.notebooks import inject, run_notebook

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def kernel_imports_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel is a fresh process: it must import this checkout's packages, as `make test` does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _notebook(*sources: str, tagged: bool = True) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    if tagged:
        cells[0].metadata["tags"] = ["parameters"]
    return nbformat.v4.new_notebook(cells=cells)


def test_injected_values_follow_the_parameters_cell_and_override_it(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(_notebook("X = 1", "print(X * 10)"), path)
    ipynb, html = run_notebook(path, tmp_path / "out", {"X": 7}, cwd=tmp_path)
    executed = nbformat.read(ipynb, as_version=4)
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]
    assert executed.cells[2].outputs[0]["text"] == "70\n"
    assert "70" in html.read_text()


def test_a_notebook_without_a_parameters_cell_cannot_take_values() -> None:
    with pytest.raises(InputError, match="no cell tagged 'parameters'"):
        inject(_notebook("X = 1", tagged=False), {"X": 2})


def test_a_failing_cell_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "broken.ipynb"
    nbformat.write(_notebook("X = 1", "raise ValueError('no such slide')"), path)
    with pytest.raises(InputError, match=r"broken\.ipynb: a cell failed: .*no such slide"):
        run_notebook(path, tmp_path / "out", cwd=tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_remote_sensing_notebook_runs_on_a_tiny_export_and_raster(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    export = tmp_path / "export"
    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), export)
    raster = tmp_path / "scene.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    with rasterio.open(raster, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 1.0, 1.0)) as dst:
        dst.write(pixels)
    values = {"EXPORT": str(export), "RASTERS": [str(raster)], "CLASSES": ["forest", "water"], "TILE_M": 64,
              "OUT": str(tmp_path / "work")}
    ipynb, html = run_notebook(ROOT / "notebooks/remote_sensing.ipynb", tmp_path / "out", values, cwd=ROOT)
    outputs = [o for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the quick-look and the contact sheet
    assert any("folium" in o.get("data", {}).get("text/html", "") for o in outputs)  # the web map
    assert (tmp_path / "work/scene.classes.tif").is_file() and (tmp_path / "work/search/search.geojson").is_file()


@pytest.mark.slow
def test_pathology_notebook_runs_on_a_tiny_export_and_slide(tmp_path: Path) -> None:
    export = tmp_path / "export"
    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), export)
    slides = tmp_path / "slides"
    slides.mkdir()
    image, _ = render_slide(PathologyDemoConfig(slide_size=512), 3)
    write_slide(slides / "a.tiff", image, 0.5, 2)
    write_slide(slides / "b.tiff", np.ascontiguousarray(image[::-1]), 0.5, 2)
    values = {"EXPORT": str(export), "SLIDE": str(slides / "a.tiff"), "SLIDES": str(slides), "TILE_SIZE": 32,
              "CLASSES": ["stroma", "adipose tissue"], "OUT": str(tmp_path / "work")}
    ipynb, html = run_notebook(ROOT / "notebooks/pathology.ipynb", tmp_path / "out", values, cwd=ROOT)
    outputs = [o for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the heatmap and the contact sheet
    assert list((tmp_path / "work").glob("a.geojson"))
    assert "slide-level prediction" in html.read_text()


@pytest.mark.slow
def test_ct_notebook_runs_on_a_tiny_export_and_volume(tmp_path: Path) -> None:
    export = tmp_path / "ct"
    export.mkdir()
    corpus = [t for p in FINDING_PROMPTS.values() for t in (*p["positive"], *p["negative"])] * 2
    tokenizer = train_wordpiece_tokenizer(corpus, TINY["vocab_size"], TINY["context_length"])
    torch.manual_seed(0)
    M.save_model_dir(M.build_model(M.VolumeModelConfig(**TINY), PHENOTYPES, tokenizer), PHENOTYPES, tokenizer, export)
    (export / "preprocess.json").write_text(json.dumps(PREPROCESS))
    write_nifti(tmp_path / "scan.nii.gz")
    values = {"EXPORT": str(export), "VOLUME": str(tmp_path / "scan.nii.gz"), "OUT": str(tmp_path / "work")}
    ipynb, _ = run_notebook(ROOT / "notebooks/ct.ipynb", tmp_path / "out", values, cwd=ROOT)
    outputs = [o for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    record = json.loads(next((tmp_path / "work").glob("*.json")).read_text())
    assert {p["code"] for p in record["phenotypes"]} == set(PHENOTYPES)
