# dllmq: `make reproduce` regenerates every figure and table (embedded default preset, CPU);
# `make test` runs the test suite. Both set up the local venv first when needed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= default
PARAMS := params/$(PRESET).yaml
NOTEBOOKS := 00_outliers 01_rq1_bitwidth 02_rq2_methods 03_rq3_tasks 04_rq4_models 05_beyond 06_deploy
BUILD := build/$(PRESET)
STAMP := $(VENV)/.dllmq-installed

.PHONY: setup test lint smoke reproduce bench bench-tiny clean-build notebooks-sync
.DEFAULT_GOAL := help

help:
	@echo "make reproduce   # all notebooks -> figures/ tables/ (PRESET=$(PRESET))"
	@echo "make test        # test suite (CPU, a few minutes)"
	@echo "make lint | smoke | bench | setup"

setup: $(STAMP)

# torch is pinned and installed first so that pip never pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]' torch==2.13.0
	$(PY) -m ipykernel install --sys-prefix --name dllmq --display-name "dllmq (.venv)" >/dev/null
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check dllmq tests notebooks bench tools

# Each notebook is executed from its jupytext source into build/<preset>/; the results store
# makes reruns cheap. Rules are per notebook, so `make -j` runs them in parallel safely
# (each writes its own outputs; the store is SQLite in WAL mode). A notebook reruns when its
# source, any params file (presets extend each other) or anything under dllmq/ changed; an
# interrupted run left only its .part file, so it reruns, and finished cells come from the store.
SRC := $(shell find dllmq -type f -not -path '*/__pycache__/*' 2>/dev/null) $(wildcard params/*.yaml)
reproduce: $(STAMP) $(foreach nb,$(NOTEBOOKS),$(BUILD)/$(nb).ipynb)

# One line when a notebook starts and one when it is done (with its time); papermill's bar
# shows its cell progress in between.
$(BUILD)/%.ipynb: notebooks/%.py $(SRC) $(STAMP)
	@mkdir -p $(BUILD)
	@echo "notebook $* ($(PRESET)): running -> $@"
	@$(VENV)/bin/jupytext --quiet --to ipynb --output $(BUILD)/$*.src.ipynb $<
	@start=$$(date +%s); \
	$(PY) -m papermill --progress-bar --log-level WARNING -k dllmq -p preset $(PRESET) \
	    $(BUILD)/$*.src.ipynb $(BUILD)/$*.part.ipynb --cwd notebooks; \
	mv $(BUILD)/$*.part.ipynb $@; rm -f $(BUILD)/$*.src.ipynb; \
	echo "notebook $* ($(PRESET)): done in $$(( $$(date +%s) - start )) s"

# 01 evaluates every LLaDA cell that 02 and 03 read; 04 adds Dream and judges the findings,
# F0 from 00's outlier tables. Under `make -j` this gives 00 || 01, then 02 || 03 || 04.
$(BUILD)/02_rq2_methods.ipynb $(BUILD)/03_rq3_tasks.ipynb: $(BUILD)/01_rq1_bitwidth.ipynb
$(BUILD)/04_rq4_models.ipynb: $(BUILD)/00_outliers.ipynb $(BUILD)/01_rq1_bitwidth.ipynb
# 06 reads the accuracy tables 01 and 04 write (and the committed tables/bench_kernels.csv).
$(BUILD)/06_deploy.ipynb: $(BUILD)/01_rq1_bitwidth.ipynb $(BUILD)/04_rq4_models.ipynb

smoke: $(STAMP)
	$(MAKE) reproduce PRESET=smoke

# GPU benchmarks write tables/bench_*.md (each compares against a baseline measured in the same
# run). OFFICIAL: a folder with the official LLaDA files (never committed) for bench_official.
# Without CUDA, the same scripts run with --tiny into build/bench/ (a smoke test, not numbers).
OFFICIAL ?= .carry/official
bench: $(STAMP)
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) bench/bench_models.py --out tables/bench_models.md; \
	  $(PY) bench/bench_quant.py --layers 0 --out tables/bench_quant.md; \
	  $(PY) bench/bench_quant_wa.py --layers 0 --out tables/bench_quant_wa.md; \
	  $(PY) bench/bench_likelihood.py --out tables/bench_likelihood.md; \
	  $(PY) bench/bench_w4a16_kp.py --out-dir tables; \
	  $(PY) bench/bench_w4a16_overlap.py --out-dir tables; \
	  if [ -d $(OFFICIAL) ]; then $(PY) bench/bench_official.py --official $(OFFICIAL) --out tables/bench_official.md; \
	  else echo "skipping bench_official: OFFICIAL=$(OFFICIAL) is not a folder of the official LLaDA files"; fi; \
	else \
	  echo "no CUDA device: running the --tiny CPU versions into build/bench/ (smoke, not numbers)"; \
	  mkdir -p build/bench; \
	  for b in bench_models bench_quant bench_quant_wa bench_likelihood; do \
	    $(PY) bench/$$b.py --tiny --out build/bench/$$b.md || exit 1; done; \
	fi

