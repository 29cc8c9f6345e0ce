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

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m jobs.make_synthetic --out $(DEMO_DIR)/videos --classes 4 --videos-per-class 12
	$(PY) -m jobs.manifest ucf101 --annotations $(DEMO_DIR)/videos --videos $(DEMO_DIR)/videos --split 1 --out $(DEMO_DIR)/manifest.parquet

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
