# `make repro` and `make test` each create .venv when it is absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision come as a matched pair (constraints.txt); see README "Installing".
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

repro: setup
	dvc repro

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf data models metrics plots exports .dvc/tmp
