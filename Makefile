# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
STAMP := $(VENV)/.flowshard-installed

.PHONY: demo test install clean

install: $(STAMP)

# (Re)install whenever pyproject.toml changes; the stamp file records the last install.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The main job end to end on a small generated dataset (embedded Ray); a few minutes on 2 cores.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m jobs.make_synthetic --out $(DEMO_DIR)/videos --classes 4 --videos-per-class 12 --size 96x72 --frames 16
	$(PY) -m jobs.manifest ucf101 --annotations $(DEMO_DIR)/videos --videos $(DEMO_DIR)/videos --split 1 --out $(DEMO_DIR)/manifest.parquet
	$(PY) -m jobs.preprocess --manifest $(DEMO_DIR)/manifest.parquet --out $(DEMO_DIR)/data --modalities rgb,tvl1 --videos-per-shard 8 --progress-seconds 5

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
