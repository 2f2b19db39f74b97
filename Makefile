# `make repro` and `make test` each create .venv when it is absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast lint clean

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
