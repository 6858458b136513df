# Fresh-machine entry points: `make test` and `make demo`. Each sets up .venv idempotently
# (reinstalls only when pyproject.toml or constraints.txt changed) and then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# two pytest-xdist workers (the machine's 2 cores); the Ray tests are one group on one worker
# (tests/conftest.py). `make test XDIST=` runs the suite in one process.
XDIST ?= -n 2 --dist loadgroup

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: a looser requirement with no torch installed pulls CUDA wheels.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: venv
	$(BIN)/ruff check mvae_dist tests
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check mvae_dist tests

demo: venv
	$(BIN)/mvae-dist demo

bench: venv
	$(BIN)/mvae-dist bench step --model mmvae --objective both --K 30 --N 5 --batch-size 128

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
