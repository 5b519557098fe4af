# The two fresh-machine commands: `make demo` (set-up, then the main job) and `make test` (set-up, then the suite).
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
# PyTorch's CPU-only build unless an NVIDIA driver is present (then PyPI's default CUDA build);
# override with `make TORCH_INDEX=https://download.pytorch.org/whl/cu128 ...`.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
DEMO_DIR ?= runs/demo

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PIP) install --retries 1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[dev]"
	# The book's own code, as a reference in tests; --no-deps keeps out its notebook stack and numpy pin.
	$(PIP) install --no-deps "llms-from-scratch==1.0.19"
	touch $@

demo: setup
	$(VENV)/bin/gptscratch-train --preset tiny --output-dir $(DEMO_DIR) --overwrite

test: setup
	$(PYTHON) -m pytest -q

test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow"

bench: setup
	$(PYTHON) benchmarks/bench_model.py
	$(PYTHON) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) runs *.egg-info
