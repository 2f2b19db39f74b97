# `make repro` and `make test` each create .venv when it is absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast lint clean bench bench-setup gpu-wheels

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision come as a matched pair (constraints.txt); see README "Installing".
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

repro: setup
	dvc repro

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# the unit tests only: no whole-pipeline or multi-process runs
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf data models metrics plots exports .dvc/tmp

# Benchmarks against peer libraries (reports/benchmarks.md). The peers live in .venv-bench, which sees the
# project's .venv through a .pth file (benchmarks/bench_env.py) and is pinned to its exact versions, so the
# project's own environment stays lean and no second torch is installed.
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
FFMPEG_DEBS := libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4
APT_FFMPEG := apt-get install -y -q --no-install-recommends $(FFMPEG_DEBS) >/dev/null

$(BENCH_BIN)/.installed: $(BIN)/.installed benchmarks/bench_env.py benchmarks/requirements-peers.txt benchmarks/requirements-peers-nodeps.txt
	test -x $(BENCH_BIN)/python || $(BIN)/python -m venv $(BENCH_VENV)
	$(BIN)/python benchmarks/bench_env.py $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet -c constraints.txt -c $(BENCH_VENV)/project-versions.txt -r benchmarks/requirements-peers.txt
	$(BENCH_BIN)/python -m pip install --quiet --no-deps -r benchmarks/requirements-peers-nodeps.txt
	# torchcodec loads the system's FFmpeg libraries: Debian 12's, where apt-get may install them (else video_decode.py
	# leaves its torchcodec rows out, saying why)
	-command -v apt-get >/dev/null && { $(APT_FFMPEG) || { apt-get update -q >/dev/null && $(APT_FFMPEG); }; }
	touch $@

bench-setup: setup $(BENCH_BIN)/.installed

# every benchmarks/*.py that takes --json, one after another, then reports/benchmarks.md; first the demo's curated
# remote-sensing shards the trainer benchmark trains on (on a fresh clone; up to date after `make repro`)
bench: bench-setup
	dvc repro curate@remote_sensing
	$(BENCH_BIN)/python benchmarks/run_all.py

# what a lent GPU machine lacks (its python3 3.12 has torch, peft, transformers, timm) for benchmarks/gpu_figures.py
# and rs_map.py, as wheels in .whl/ (about 40 MB) to carry there; the command to run there is in gpu_figures.py's docstring
GPU_WHEELS := open.clip.torch|blake3|ftfy|wcwidth|webdataset|braceexpand|defusedxml|pydot|rasterio|affine|shapely|cligj|click-plugins
gpu-wheels: setup
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $$($(BIN)/python -m pip freeze | grep -i -E '^($(GPU_WHEELS))==')
