# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
STAMP := $(VENV)/.flowshard-installed

.PHONY: demo test test-quick test-shuffled fuzz lint install clean

install: $(STAMP)

# (Re)install whenever pyproject.toml changes; the stamp file records the last install.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Every test, in file order (pytest-randomly off: CI runs one order; make test-shuffled checks that any order passes).
test: $(STAMP)
	$(PY) -m pytest -p no:randomly $(PYTEST_ARGS)

# While working: the tests that need no Ray, server or training run (pure functions, schemas, parsers, decoding, flow
# on tiny frames); under 3 minutes on 2 cores. Tests marked slow (by hand, or for using the S3 server) are left out.
test-quick: $(STAMP)
	$(PY) -m pytest -p no:randomly -m "not slow" $(PYTEST_ARGS)

# Every test in a random order of modules and of the tests in each (pytest-randomly prints its seed; PYTEST_ARGS=
# --randomly-seed=N repeats an order): shared fixtures must make no test depend on another's order.
test-shuffled: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The annotation parsers and the manifest reader fuzzed with thousands of new random inputs each (make test runs a
# fixed hundred per parser); a few minutes.
fuzz: $(STAMP)
	$(PY) -m pytest tests/pipeline/test_annotation_fuzz.py --hypothesis-profile=long -p no:cacheprovider

# ruff: lint (pyflakes, pycodestyle, import order, bugbear, pyupgrade) and formatting, as configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The main job end to end on a small generated dataset (embedded Ray), then both streams trained and
# evaluated with late fusion; about 5 minutes on 2 cores.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m jobs.make_synthetic --out $(DEMO_DIR)/videos --classes 4 --videos-per-class 12 --size 96x72 --frames 12
	$(PY) -m jobs.manifest ucf101 --annotations $(DEMO_DIR)/videos --videos $(DEMO_DIR)/videos --split 1 --out $(DEMO_DIR)/manifest.parquet
	$(PY) -m jobs.preprocess --manifest $(DEMO_DIR)/manifest.parquet --out $(DEMO_DIR)/data --modalities rgb,tvl1 --videos-per-shard 8 --progress-seconds 15
	$(PY) -m jobs.inspect $(DEMO_DIR)/data
	$(PY) -m jobs.train --data $(DEMO_DIR)/data --model tsn_flow --out $(DEMO_DIR)/runs/flow $(DEMO_TRAIN) --epochs 20
	$(PY) -m jobs.train --data $(DEMO_DIR)/data --model tsn_rgb --out $(DEMO_DIR)/runs/rgb $(DEMO_TRAIN) --epochs 4
	$(PY) -m jobs.evaluate --data $(DEMO_DIR)/data --run rgb=$(DEMO_DIR)/runs/rgb --run flow=$(DEMO_DIR)/runs/flow --segments 25 --fusion rgb=1,flow=1.5 --loader-workers 1 --json $(DEMO_DIR)/metrics.json
	$(PY) -m jobs.visualize --data $(DEMO_DIR)/data --out $(DEMO_DIR)/contact_sheet.png --gif $(DEMO_DIR)/sample.gif
	@echo "Look at: $(DEMO_DIR)/data/summary.png (what the dataset holds), $(DEMO_DIR)/contact_sheet.png (samples: frames and their flows),"
	@echo "         $(DEMO_DIR)/sample.gif (one video's frames beside its flow), $(DEMO_DIR)/runs/*/curves.png and $(DEMO_DIR)/confusion.png"

# The synthetic classes are motion directions: no flips (they would swap left and right).
DEMO_TRAIN := --eval-every 1 --batch-size 8 --input-size 64 --no-flip --lr 0.001 --optimizer adamw --weight-decay 0.01 --loader-workers 1 --print-freq 0

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
