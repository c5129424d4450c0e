# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# Each creates .venv when missing and installs the project into it; torch is pinned to
# 2.13.0 there so a fresh machine gets the CPU build instead of a multi-GB CUDA one (this
# project's machines serve it from their pip index; where pip points at plain PyPI, pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# A folder per run: a second `make train` trains again instead of refusing the first run's checkpoints.
RUN_DIR ?= runs/lm_moe_tiny/$(shell date +%Y%m%d-%H%M%S)
TRAIN_ARGS ?= --task lm --config examples/lm_moe_tiny.yaml --set logging.dir=$(RUN_DIR)

.PHONY: train test bench clean-venv
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: $(VENV)/.installed
	$(PY) train.py $(TRAIN_ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/ruff check raytrain_llm tests benchmarks examples train.py
	$(PY) -m pytest -q --durations=25 tests

bench: $(VENV)/.installed
	$(PY) benchmarks/moe_bench.py
	$(PY) benchmarks/engine_overhead.py

clean-venv:
	rm -rf $(VENV)
