"""`domainfm predict ct`: phenotypes and zero-shot findings of one volume, refusals that name the input and write nothing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs.ct import STUDY_DATE, regular, write_dicom_series, write_dicom_slice, write_nifti
from PIL import Image
from typer.testing import CliRunner

from domains.ct.analyst import DEMO_NOTE, predict_ct
from domains.ct.loader import CTModel, load_ct_model
from domains.ct.prompts import FINDING_PROMPTS
from pipelines.errors import InputError
from pipelines.models import volume as M
from pipelines.models.report_text import TextEncoderNotLoaded, tokenize, train_wordpiece_tokenizer

TINY = dict(input_size=[16, 16, 12], image_width=8, embed_dim=16, text_hidden=32, text_layers=1, text_heads=2,
            vocab_size=200, context_length=24)
PHENOTYPES = ["572", "250.2", "ICD-X"]  # two phecodes with names in the shipped table, one code without
PREPROCESS = {"pixdim": [6.0, 6.0, 6.0], "spatial_size": [16, 16, 12], "a_min": -1000.0, "a_max": 1000.0, "min_slices": 4}
SERIES_A, SERIES_B = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.20"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "ct"
    folder.mkdir()
    corpus = [t for p in FINDING_PROMPTS.values() for t in (*p["positive"], *p["negative"])] * 2
    tokenizer = train_wordpiece_tokenizer(corpus, TINY["vocab_size"])
    torch.manual_seed(0)
    M.save_model_dir(M.build_model(M.VolumeModelConfig(**TINY), PHENOTYPES, tokenizer), PHENOTYPES, tokenizer, folder)
    (folder / "preprocess.json").write_text(json.dumps(PREPROCESS))
    return folder


@pytest.fixture(scope="module")
def model(export: Path) -> CTModel:
    return load_ct_model(export, "cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    write_nifti(root / "study.nii.gz")
    write_nifti(root / "mr.nii.gz", np.full((24, 24, 16), 300, np.int16))  # MR-like: no air near -1000 HU
    whole = (root / "study.nii.gz").read_bytes()
    (root / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])  # a truncated download
    write_dicom_series(root / "one_series", regular(12), SERIES_A)
    write_dicom_series(root / "two_series", regular(12), SERIES_A, prefix="A")
    write_dicom_series(root / "two_series", regular(8), SERIES_B, prefix="B")
    for k, z in enumerate(regular(12)):
        write_dicom_slice(root / "mr_series" / f"IM{k:04d}.dcm", z, SERIES_A, modality="MR")
    return root


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_nifti_prediction_json_and_picture(model: CTModel, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = predict_ct(model, inputs / "study.nii.gz", out)
    assert result.json_path == out / "study.json" and result.png_path == out / "study.png"
    doc = json.loads(result.json_path.read_text())
    # every phenotype of the model, named from the shipped phecode table, else by its code
    names = {p["code"]: p["name"] for p in doc["phenotypes"]}
    assert names == {"572": "Ascites (non malignant)", "250.2": "Type 2 diabetes", "ICD-X": "ICD-X"}
    probs = [p["probability"] for p in doc["phenotypes"]]
    assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
    assert all(p["predicted"] == (p["probability"] > 0.5) for p in doc["phenotypes"])
    # the findings' probability is the documented softmax over the two mean similarities, scaled
    assert {f["finding"] for f in doc["findings"]} == set(FINDING_PROMPTS)
    prepared = model.prepare(inputs / "study.nii.gz")
    embedding, direct = model.predict_volume(prepared.tensor())
    assert {p["code"]: p["probability"] for p in doc["phenotypes"]} == pytest.approx(direct, abs=1e-5)
    for f in doc["findings"]:
        prompts = FINDING_PROMPTS[f["finding"]]
        pos = float((model.embed_text(prompts["positive"]) @ embedding).mean())
        neg = float((model.embed_text(prompts["negative"]) @ embedding).mean())
        expected = torch.softmax(torch.tensor([pos, neg]) * doc["model"]["logit_scale"], 0)[0].item()
        assert f["probability"] == pytest.approx(expected, abs=1e-5)
        assert f["present"] == (f["probability"] > 0.5) == (pos > neg)  # Merlin's rule at 0.5
    assert "softmax" in doc["finding_rule"] and doc["threshold"] == 0.5
    assert doc["input"]["shape"] == [24, 24, 16] and doc["input"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert doc["preprocessing"]["shape"] == [16, 16, 12] and doc["preprocessing"]["spacing_mm"] == [6.0, 6.0, 6.0]
    assert doc["model"]["path"] == str(model.export_dir.resolve())
    assert doc["note"] == DEMO_NOTE.format(size="16x16x12")  # a demo-family model says its scores are a plumbing check
    assert set(doc["timing_s"]) == {"load_model", "preprocess", "model"}
    with Image.open(result.png_path) as png:
        assert png.format == "PNG" and png.width > 1000 and png.height > 400
    assert result.png_path.stat().st_size < 300_000
    assert _listing(out) == ["study.json", "study.png"]  # no temp files left


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_volumes_embed_in_the_cpus_faster_layout_as_the_model_as_built(export: Path, inputs: Path, precision: str) -> None:
    from pipelines.infer.device import channels_last_volumes

    built = M.load_model_dir(export, text=False)[0]  # channels-first, as built
    model = load_ct_model(export, "cpu", precision=precision)
    weight = model.net.visual.stages[1][0].conv1.conv.weight  # 5-D with several input channels: its layout is unambiguous
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) is channels_last_volumes(model.device, model.precision)
    volume = torch.randn(2, 1, 16, 16, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        expected = torch.nn.functional.normalize(built.encode_image(volume).float(), dim=-1).numpy()
    got = model.embed_volume(volume)
    assert 1 - (got * expected).sum(axis=1).min() < (1e-6 if precision == "fp32" else 1e-3)
    # phenotype probabilities of a file are predict_volume's: the same layout and precision
    path = inputs / "study.nii.gz"
    _, probabilities = model.predict_volume(model.load_volume(path))
    assert model.phenotype_probabilities(path) == probabilities


def test_threshold_and_prompts_file(model: CTModel, inputs: Path, tmp_path: Path) -> None:
    low = predict_ct(model, inputs / "study.nii.gz", tmp_path / "low", threshold=0.001)
    assert all(f["present"] for f in low.findings) and all(p["predicted"] for p in low.phenotypes)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"ascites": {"positive": ["free fluid"], "negative": ["no free fluid"]}}))
    custom = predict_ct(model, inputs / "study.nii.gz", tmp_path / "custom", prompts=prompts)
    assert [f["finding"] for f in custom.findings] == ["ascites"]
    assert json.loads(custom.json_path.read_text())["prompts"] == str(prompts)
    for bad in ('{"ascites": {"positive": []}}', "not json", "{}"):
        prompts.write_text(bad)
        with pytest.raises(InputError, match="prompts.json"):
            predict_ct(model, inputs / "study.nii.gz", tmp_path / "bad", prompts=prompts)
    with pytest.raises(InputError, match="threshold 1.5"):
        predict_ct(model, inputs / "study.nii.gz", tmp_path / "bad", threshold=1.5)
    assert not (tmp_path / "bad").exists()


def test_dicom_series_named_after_folder_without_header_values(model: CTModel, inputs: Path, tmp_path: Path) -> None:
    result = predict_ct(model, inputs / "one_series", tmp_path / "out")
    assert result.json_path.name == "one_series.json"
    text = result.json_path.read_text()
    doc = json.loads(text)
    assert doc["input"]["modality"] == "CT" and doc["input"]["shape"] == [24, 24, 12]
    for header_value in (SERIES_A, "1.2.826.0.1.3680043.8.498.1", STUDY_DATE.replace("-", "")):
        assert header_value not in text


def test_several_series_refused_with_the_list_unless_one_is_picked(model: CTModel, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        predict_ct(model, inputs / "two_series", out)
    message = str(err.value)
    assert "two_series" in message and "2 DICOM series" in message
    assert f"{SERIES_A} (CT, 12 slices)" in message and f"{SERIES_B} (CT, 8 slices)" in message and "--series" in message
    assert not out.exists()
    picked = predict_ct(model, inputs / "two_series", out, series=SERIES_B)
    assert json.loads(picked.json_path.read_text())["input"]["shape"] == [24, 24, 8]  # the 8-slice series, not the larger one
    with pytest.raises(InputError, match="no DICOM series 9.9.9"):
        predict_ct(model, inputs / "two_series", out, series="9.9.9")
    with pytest.raises(InputError, match="NIfTI file, not a DICOM folder"):
        predict_ct(model, inputs / "study.nii.gz", out, series=SERIES_A)


@pytest.mark.parametrize("name, reason", [
    ("mr.nii.gz", r"not CT \(no air near -1000 HU\)"),
    ("mr_series", r"not CT \(DICOM modality\): MR"),
    ("cut.nii.gz", "truncated or unreadable NIfTI"),
    ("missing.nii.gz", "no such file or folder"),
])
def test_bad_volumes_refused_naming_the_input_and_nothing_written(model: CTModel, inputs: Path, tmp_path: Path,
                                                                  name: str, reason: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.json").write_text("{}")  # an earlier prediction in the same folder stays as it was
    with pytest.raises(InputError, match=reason) as err:
        predict_ct(model, inputs / name, out)
    assert str(inputs / name) in str(err.value)
    assert _listing(out) == ["earlier.json"] and (out / "earlier.json").read_text() == "{}"


def test_other_kinds_of_export_refused(export: Path, inputs: Path, tmp_path: Path) -> None:
    from pipelines.models.clip import CONFIG_FILE, WEIGHTS_FILE

    clip_export = tmp_path / "remote_sensing"
    clip_export.mkdir()
    (clip_export / CONFIG_FILE).write_text("{}")
    (clip_export / WEIGHTS_FILE).write_bytes(b"")
    out = tmp_path / "out"
    for folder, reason in ((clip_export, "open_clip"), (tmp_path / "nowhere", "no such model folder"),
                           (inputs, "not an exported model")):
        with pytest.raises(InputError, match=reason) as err:
            predict_ct(folder, inputs / "study.nii.gz", out)
        assert str(folder) in str(err.value)
    with pytest.raises(InputError, match="device 'tpu9'"):
        predict_ct(export, inputs / "study.nii.gz", out, device="tpu9")
    assert not out.exists()


def test_cli_writes_outputs_and_prints_errors_without_traceback(export: Path, inputs: Path, tmp_path: Path) -> None:
    from pipelines.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(app, ["predict", "ct", "--model", str(export), "--volume", str(inputs / "study.nii.gz"),
                             "--out", str(out), "--threshold", "0.4", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "study.json").read_text())["threshold"] == 0.4 and (out / "study.png").is_file()
    bad = runner.invoke(app, ["predict", "ct", "--model", str(export), "--volume", str(inputs / "mr.nii.gz"), "--out", str(out)])
    assert bad.exit_code == 1 and "Error:" in bad.output and "mr.nii.gz" in bad.output and "Traceback" not in bad.output
    assert _listing(out) == ["study.json", "study.png"]


def test_cli_predicts_in_the_precision_asked_for(export: Path, inputs: Path, tmp_path: Path) -> None:
    """--precision reaches the volume's forward pass (bf16's scores differ from fp32's, by its rounding only) and the JSON names it."""
    from pipelines.cli import app

    found = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        done = CliRunner().invoke(app, ["predict", "ct", "--model", str(export), "--volume", str(inputs / "study.nii.gz"), "--out",
                                        str(out), "--device", "cpu", "--precision", precision, "--cache", str(tmp_path / "cache")])
        assert done.exit_code == 0, done.output
        doc = json.loads((out / "study.json").read_text())
        assert doc["model"]["precision"] == precision
        found[precision] = {p["code"]: p["probability"] for p in doc["phenotypes"]}
    assert found["fp32"] != found["bf16"] and found["fp32"] == pytest.approx(found["bf16"], abs=0.02)
    assert load_ct_model(export, "cpu", precision="fp32").precision == "fp32"


def test_prediction_imports_neither_monai_nor_open_clip_and_with_prompts_cached_no_transformers(export: Path, inputs: Path,
                                                                                               tmp_path: Path) -> None:
    """A `predict ct` process imports the CT model's libraries only: MONAI's import was 3-5 s, open_clip's 0.8 s, torchvision's
    0.9 s (torch._dynamo), pandas' 0.25 s. The prompts' embeddings are cached, so the next process builds no text encoder
    (transformers' modelling code: 2 s)."""
    code = ("import atexit, sys; from pipelines.cli import main; "
            "atexit.register(lambda: print(sorted(m for m in ('monai', 'open_clip', 'pandas', 'torch', 'torchvision', 'transformers') "
            "if m in sys.modules))); "
            "sys.argv = ['domainfm', *sys.argv[1:]]; main()")
    imported, findings = [], []
    for run in ("cold", "warm"):  # the same cache ($DOMAINFM_CACHE, this test's own)
        done = subprocess.run([sys.executable, "-c", code, "predict", "ct", "--model", str(export), "--volume",
                               str(inputs / "study.nii.gz"), "--out", str(tmp_path / run), "--device", "cpu"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr[-2000:]
        imported.append(done.stdout.strip().splitlines()[-1])
        findings.append(json.loads((tmp_path / run / "study.json").read_text())["findings"])
    # the first embeds the prompts: transformers (which may import torchvision itself), but neither MONAI nor open_clip
    assert "'transformers'" in imported[0] and "monai" not in imported[0] and "open_clip" not in imported[0]
    assert imported[1] == "['torch']"
    assert findings[1] == findings[0]


def test_an_export_ships_its_prompts_embedded_so_a_first_prediction_builds_no_text_encoder(export: Path, inputs: Path,
                                                                                            tmp_path: Path) -> None:
    """`export_volume` embeds the domain's finding prompts into the export: a first `predict ct` (an empty cache) imports no
    transformers and predicts what a model that embeds its prompts predicts."""
    from pipelines.export.volume import export_volume

    shipped = export_volume(export, tmp_path / "shipped", prompts=FINDING_PROMPTS)
    code = ("import atexit, sys; from pipelines.cli import main; "
            "atexit.register(lambda: print(sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules))); "
            "sys.argv = ['domainfm', *sys.argv[1:]]; main()")
    done = subprocess.run([sys.executable, "-c", code, "predict", "ct", "--model", str(shipped), "--volume", str(inputs / "study.nii.gz"),
                           "--out", str(tmp_path / "out"), "--device", "cpu", "--cache", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['torch']" and not list((tmp_path / "empty").glob("*.npz"))
    bare = shutil.copytree(shipped, tmp_path / "bare")
    (bare / M.PROMPTS_FILE).unlink()  # the same export without them: the prompts are embedded
    embedding = predict_ct(load_ct_model(bare, "cpu", tmp_path / "cache"), inputs / "study.nii.gz", tmp_path / "embedded")
    assert json.loads((tmp_path / "out" / "study.json").read_text())["findings"] == embedding.findings


def test_shipped_prompt_embeddings_are_used_only_with_the_weights_and_tokenizer_they_were_made_with(export: Path,
                                                                                                    tmp_path: Path) -> None:
    from safetensors.torch import save_model

    from pipelines.export.volume import export_volume
    from pipelines.io.digests import file_digest

    def fingerprint(folder: Path) -> str:
        return file_digest(folder / M.WEIGHTS_FILE, "sha256")[:16]

    folder = export_volume(export, tmp_path / "shipped", prompts=FINDING_PROMPTS)
    texts = list(dict.fromkeys(M.prompt_texts(FINDING_PROMPTS)))
    fresh, tokenizer, _ = M.load_model_dir(folder)
    shipped = M.load_prompt_embeddings(folder, fingerprint(folder))
    assert list(shipped) == texts and np.allclose(np.stack(list(shipped.values())), M.embed_texts(fresh, tokenizer, texts), atol=1e-6)
    loaded = load_ct_model(folder, "cpu", tmp_path / "cache")
    assert np.allclose(loaded.embed_prompts(FINDING_PROMPTS), np.stack([shipped[t] for t in M.prompt_texts(FINDING_PROMPTS)]))
    assert isinstance(loaded.net.text, TextEncoderNotLoaded)  # all shipped: the text encoder stayed on disk
    loaded.embed_prompts({"new": {"positive": ["a new finding"], "negative": ["no new finding"]}})
    assert not isinstance(loaded.net.text, TextEncoderNotLoaded)  # other prompts are embedded as before
    config = json.loads((folder / M.CONFIG_FILE).read_text())
    config["model"]["context_length"] += 1
    (folder / M.CONFIG_FILE).write_text(json.dumps(config))  # the texts would be cut elsewhere
    assert M.load_prompt_embeddings(folder, fingerprint(folder)) == {}
    config["model"]["context_length"] -= 1
    (folder / M.CONFIG_FILE).write_text(json.dumps(config))
    retokenized = export_volume(export, tmp_path / "retokenized", prompts=FINDING_PROMPTS)
    shutil.rmtree(retokenized / M.TOKENIZER_DIR)
    train_wordpiece_tokenizer(texts[::-1] + ["effusion"] * 9, TINY["vocab_size"]).save_pretrained(
        str(retokenized / M.TOKENIZER_DIR))
    assert M.load_prompt_embeddings(retokenized, fingerprint(retokenized)) == {}
    torch.manual_seed(1)  # other weights over the export's, its embedded prompts left as they are
    save_model(M.build_model(M.VolumeModelConfig(**TINY), PHENOTYPES, tokenizer), str(folder / M.WEIGHTS_FILE))
    assert M.load_prompt_embeddings(folder, fingerprint(folder)) == {}
    other, _, _ = M.load_model_dir(folder)
    retrained = load_ct_model(folder, "cpu", tmp_path / "cache").embed_prompts(FINDING_PROMPTS)
    assert np.allclose(retrained, M.embed_texts(other, tokenizer, M.prompt_texts(FINDING_PROMPTS)), atol=1e-6)
    data = (folder / M.PROMPTS_FILE).read_bytes()
    (folder / M.PROMPTS_FILE).write_bytes(data[: len(data) // 2])  # damaged: embedded again, as without the file
    assert M.load_prompt_embeddings(folder, fingerprint(folder)) == {}
    assert np.allclose(load_ct_model(folder, "cpu", tmp_path / "cache").embed_prompts(FINDING_PROMPTS), retrained, atol=1e-6)


def test_prompt_embeddings_shipped_before_blake3_hashed_inputs_are_still_used(export: Path, tmp_path: Path) -> None:
    """An export's prompt file names its tokenizer's files by sha256 (as exports made before BLAKE3 did), so theirs still match."""
    import hashlib

    from pipelines.export.volume import export_volume

    folder = export_volume(export, tmp_path / "shipped", prompts=FINDING_PROMPTS)
    fingerprint = hashlib.sha256((folder / M.WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    files = sorted(p for p in (folder / M.TOKENIZER_DIR).iterdir() if p.is_file())
    assert json.loads(M.text_identity(folder, fingerprint))["tokenizer"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                                                           for p in files}
    assert M.load_prompt_embeddings(folder, fingerprint)  # the shipped embeddings are taken


def test_text_encoder_left_on_disk_then_loaded_is_the_models(export: Path) -> None:
    """`load_model_dir(text=False)` loads everything but the text encoder, as strictly; `load_text_encoder` adds the same encoder."""
    whole, tokenizer, phenotypes = M.load_model_dir(export)
    part, no_tokenizer, same_phenotypes = M.load_model_dir(export, text=False)
    assert isinstance(part.text, TextEncoderNotLoaded) and no_tokenizer is None and same_phenotypes == phenotypes
    assert not any(k.startswith(M.TEXT_PREFIX) for k in part.state_dict())
    for key, value in part.state_dict().items():
        assert torch.equal(value, whole.state_dict()[key]), key
    tokens = tokenize(tokenizer, ["no pleural effusion"], part.cfg.context_length)
    with pytest.raises(RuntimeError, match="not loaded"):
        part.encode_text(**tokens)
    M.load_text_encoder(part, export)
    assert part.state_dict().keys() == whole.state_dict().keys()
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in part.state_dict().items())
    with torch.no_grad():
        assert torch.equal(part.encode_text(**tokens), whole.encode_text(**tokens))


def test_weights_that_do_not_fit_are_refused_without_the_text_encoder_too(export: Path, tmp_path: Path) -> None:
    """A weights file with a tensor missing, or one the model does not have, is refused with or without the text encoder."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(export / M.WEIGHTS_FILE))
    for change, name in ((lambda s: s.pop("image_proj.bias"), "missing"), (lambda s: s.update(extra=torch.zeros(2)), "unexpected")):
        folder = tmp_path / name
        shutil.copytree(export, folder)
        changed = dict(state)
        change(changed)
        save_file(changed, str(folder / M.WEIGHTS_FILE), metadata={"format": "pt"})
        for text in (True, False):
            with pytest.raises(RuntimeError, match=None if text else name):  # with the text encoder: safetensors' own message
                M.load_model_dir(folder, text=text)


def test_cached_prompt_embeddings_follow_the_weights(export: Path, tmp_path: Path) -> None:
    """The prompts' cache entry is the weights' and the tokenizer's: other weights or another tokenizer in the same folder
    embed the prompts again, a cache that cannot be made leaves the model working, and a cached entry gives what embedding gives."""
    from safetensors.torch import save_model

    folder, cache = tmp_path / "ct", tmp_path / "cache"
    shutil.copytree(export, folder)
    first = load_ct_model(folder, "cpu", cache)
    embedded = first.embed_prompts(FINDING_PROMPTS)
    assert np.array_equal(load_ct_model(folder, "cpu", cache).embed_prompts(FINDING_PROMPTS), embedded)  # from the cache
    fresh, tokenizer, _ = M.load_model_dir(folder)
    texts = [t for p in FINDING_PROMPTS.values() for t in (*p["positive"], *p["negative"])]
    assert np.allclose(CTModel(fresh, tokenizer, [], {}).embed_text(texts), embedded, atol=1e-6)
    torch.manual_seed(1)  # other weights over the folder's, its other files (tokenizer included) left as they are
    save_model(M.build_model(M.VolumeModelConfig(**TINY), PHENOTYPES, tokenizer), str(folder / M.WEIGHTS_FILE))
    retrained = load_ct_model(folder, "cpu", cache).embed_prompts(FINDING_PROMPTS)
    other, _, _ = M.load_model_dir(folder)
    assert np.allclose(CTModel(other, tokenizer, [], {}).embed_text(texts), retrained, atol=1e-6)
    assert not np.allclose(retrained, embedded, atol=1e-3)
    retokenized = train_wordpiece_tokenizer(texts[::-1] + ["effusion"] * 9, TINY["vocab_size"])
    shutil.rmtree(folder / M.TOKENIZER_DIR)
    retokenized.save_pretrained(str(folder / M.TOKENIZER_DIR))  # another vocabulary, the same weights
    expected = CTModel(other, retokenized, [], {}).embed_text(texts)
    assert not np.allclose(expected, retrained, atol=1e-3)
    assert np.allclose(load_ct_model(folder, "cpu", cache).embed_prompts(FINDING_PROMPTS), expected, atol=1e-6)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    unmade = load_ct_model(folder, "cpu", blocked / "cache")
    assert unmade.prompt_cache is None and np.allclose(unmade.embed_prompts(FINDING_PROMPTS), expected, atol=1e-6)


def test_cli_predicts_several_volumes_loading_the_model_once(export: Path, model: CTModel, inputs: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--volume` repeated: each volume (once, in order) predicted as `predict_ct` predicts it alone, one model load; names
    that would clash and missing volumes are refused before any is read; a volume that fails stops the run, naming it."""
    from domains.ct import loader
    from pipelines.cli import app

    loads = []
    load = loader.load_ct_model
    monkeypatch.setattr(loader, "load_ct_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    runner = CliRunner()
    common = ["predict", "ct", "--model", str(export), "--device", "cpu"]
    out = tmp_path / "out"
    ok = runner.invoke(app, [*common, "--volume", str(inputs / "one_series"), "--volume", str(inputs / "study.nii.gz"),
                             "--volume", str(inputs / ".." / inputs.name / "one_series"), "--out", str(out)])  # once, spelt twice
    assert ok.exit_code == 0, ok.output
    assert len(loads) == 1 and ok.output.count("ct: ") == 2 and ok.output.index("one_series") < ok.output.index("study.nii.gz")
    for name, volume in (("one_series", "one_series"), ("study", "study.nii.gz")):
        alone = predict_ct(model, inputs / volume, tmp_path / f"alone_{name}")
        docs = [json.loads(path.read_text()) for path in (out / f"{name}.json", alone.json_path)]
        for doc in docs:
            doc.pop("timing_s")
        assert docs[0] == docs[1]
        assert (out / f"{name}.png").read_bytes() == alone.png_path.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.nii.gz").write_bytes((inputs / "study.nii.gz").read_bytes())
    clash = runner.invoke(app, [*common, "--volume", str(inputs / "study.nii.gz"), "--volume", str(other / "study.nii.gz"),
                                "--out", str(tmp_path / "clash")])
    assert clash.exit_code == 1 and "same file names (study.json, study.png)" in clash.output
    missing = runner.invoke(app, [*common, "--volume", str(inputs / "study.nii.gz"), "--volume", str(other / "gone.nii.gz"),
                                  "--out", str(tmp_path / "clash")])
    assert missing.exit_code == 1 and "gone.nii.gz: no such file or folder" in missing.output
    assert not (tmp_path / "clash").exists() and len(loads) == 1  # refused before the model loads
    stopped = runner.invoke(app, [*common, "--volume", str(inputs / "study.nii.gz"), "--volume", str(inputs / "mr.nii.gz"),
                                  "--volume", str(inputs / "one_series"), "--out", str(tmp_path / "stopped")])
    assert stopped.exit_code == 1 and "mr.nii.gz" in stopped.output and "Traceback" not in stopped.output
    assert _listing(tmp_path / "stopped") == ["study.json", "study.png"]
    went_on = runner.invoke(app, [*common, "--volume", str(inputs / "study.nii.gz"), "--volume", str(inputs / "mr.nii.gz"),
                                  "--volume", str(inputs / "one_series"), "--out", str(tmp_path / "went_on"), "--skip-unreadable"])
    assert went_on.exit_code == 0, went_on.output
    assert f"skipped {inputs / 'mr.nii.gz'}: " in went_on.output and len(loads) == 3
    assert _listing(tmp_path / "went_on") == ["one_series.json", "one_series.png", "skipped.tsv", "study.json", "study.png"]
    rows = (tmp_path / "went_on" / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "input\treason" and len(rows) == 2 and rows[1].startswith(f"{inputs / 'mr.nii.gz'}\trefused")


@pytest.mark.realdata
def test_real_mr_refused_and_real_dicom_predicted(realdata: Path, model: CTModel, tmp_path: Path) -> None:
    examples = realdata / "ct" / "totalsegmentator"
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"example_mr_sm.nii.gz: refused as curation refuses it: not CT \(no air"):
        predict_ct(model, examples / "example_mr_sm.nii.gz", out)
    assert not out.exists()
    result = predict_ct(model, examples / "example_ct_dicom", out)
    text = result.json_path.read_text()
    assert json.loads(text)["input"]["shape"] == [512, 512, 20] and "20221208" not in text  # StudyDate not copied
