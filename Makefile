# The two fresh-machine commands: `make demo` (set-up, then the main job) and `make test` (set-up, then the suite).
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
# PyTorch's CPU-only build unless an NVIDIA driver is present (then PyPI's default CUDA build);
# override with `make TORCH_INDEX=https://download.pytorch.org/whl/cu128 ...`.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
TORCH_INSTALL = install --retries 1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==$(TORCH_VERSION)"
# The book's own code, as a reference in tests; --no-deps keeps out its notebook stack and numpy pin.
BOOK_INSTALL = install --no-deps "llms-from-scratch==1.0.19"
DEMO_DIR ?= runs/demo
# The demo's length: 3 epochs of the embedded corpus, the learning rate decaying over them (its 466 KB overfit after
# that), or the time budget (seconds, or 90s, 10m, 2h; the loop, evaluations and checkpoints included) if sooner.
DEMO_EPOCHS ?= 3
DEMO_TIME ?= 240
# DeepSpeed (a dev dependency, for the sharded-training tests) installs without compiling its CUDA ops.
export DS_BUILD_OPS = 0
# The suite runs in this many worker processes (pytest-xdist); each test keeps to one thread (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST = -m pytest -q -n $(TEST_WORKERS)

# Dependencies. The lock holds the exact versions the suite last passed with (every transitive dependency,
# torch and the book's code aside: they have their own pins above); `make lock` refreshes it from the newest
# releases. `make test-latest` tries the newest releases of the Hugging Face stack, `make test-oldest` the lower
# bounds declared in setup.cfg (requirements/oldest.txt).
LOCK ?= requirements/lock.txt
OLDEST ?= requirements/oldest.txt
LOCK_VENV ?= .venv-lock
LATEST_VENV ?= .venv-latest
OLDEST_VENV ?= .venv-oldest
LATEST_PACKAGES ?= transformers accelerate datasets tokenizers safetensors huggingface-hub peft trl lm-eval
# Extra pip arguments for `make lock`, e.g. LOCK_PIP_ARGS="-c hold-back.txt" to keep some package below its newest.
LOCK_PIP_ARGS ?=
# Not in the lock: pip itself, this project, torch and the CUDA wheels that come
# with it (installed by TORCH_INSTALL from TORCH_INDEX), and the book's code (BOOK_INSTALL).
LOCK_OMIT := ^(pip|gptscratch|torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|llms-from-scratch)( @|==)
# `pip list` lines of the packages whose versions a test run prints first.
empty :=
VERSIONS_SHOWN := ^(torch|$(subst $(empty) $(empty),|,$(subst -,[-_],$(LATEST_PACKAGES))))

.PHONY: setup demo lint test test-fast bench clean lock test-latest test-oldest

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK)
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PIP) $(TORCH_INSTALL)
	$(PIP) install -e ".[dev]" -c $(LOCK)
	$(PIP) $(BOOK_INSTALL)
	touch $@

demo: setup
	$(VENV)/bin/gptscratch-train --preset tiny --epochs $(DEMO_EPOCHS) --max-time $(DEMO_TIME) --output-dir $(DEMO_DIR) \
		--overwrite

# The lint and format gate (ruff.toml), then the suite.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PYTHON) $(PYTEST)

test-fast: setup
	$(PYTHON) $(PYTEST) -m "not slow"

bench: setup
	$(PYTHON) benchmarks/bench_model.py
	$(PYTHON) benchmarks/bench_loss.py

# A fresh environment with the newest releases of everything (torch pinned), frozen into $(LOCK); it runs nothing.
# Then `make test` installs from the new lock: commit it once the suite passes.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON_BOOTSTRAP) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip $(TORCH_INSTALL)
	echo "torch==$(TORCH_VERSION)" > $(LOCK_VENV)/torch.txt
	# eager: torch's own dependencies, installed with it from TORCH_INDEX, move up to their newest releases too.
	$(LOCK_VENV)/bin/python -m pip install --upgrade --upgrade-strategy eager -c $(LOCK_VENV)/torch.txt \
		$(LOCK_PIP_ARGS) -e ".[dev,eval]"
	mkdir -p $(dir $(LOCK))
	{ echo "# The exact versions \`make test\` installs (pip install -c): the suite last passed with these."; \
	  echo "# Written by \`make lock\` (newest releases; torch==$(TORCH_VERSION) and the book's code are pinned in the Makefile)"; \
	  echo "# with Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -viE '$(LOCK_OMIT)'; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "Wrote $(LOCK); run \`make test\` with it, then commit it."

# The newest releases of the Hugging Face stack, whatever the lock says (torch stays pinned).
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip $(TORCH_INSTALL)
	echo "torch==$(TORCH_VERSION)" > $(LATEST_VENV)/torch.txt
	$(LATEST_VENV)/bin/python -m pip install --upgrade -c $(LATEST_VENV)/torch.txt -e ".[dev,eval]" $(LATEST_PACKAGES)
	$(LATEST_VENV)/bin/python -m pip $(BOOK_INSTALL)
	$(LATEST_VENV)/bin/python -m pip list | grep -iE '$(VERSIONS_SHOWN) '
	$(LATEST_VENV)/bin/python $(PYTEST)

# The lower bounds of setup.cfg, from requirements/oldest.txt; the environment is rebuilt whenever that changes.
$(OLDEST_VENV)/.installed: setup.cfg pyproject.toml $(OLDEST)
	rm -rf $(OLDEST_VENV)
	$(PYTHON_BOOTSTRAP) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip $(TORCH_INSTALL)
	$(OLDEST_VENV)/bin/python -m pip install -e ".[dev,eval]" -c $(OLDEST)
	$(OLDEST_VENV)/bin/python -m pip $(BOOK_INSTALL)
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pip list | grep -iE '$(VERSIONS_SHOWN) '
	$(OLDEST_VENV)/bin/python $(PYTEST)

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(LATEST_VENV) $(OLDEST_VENV) runs *.egg-info
