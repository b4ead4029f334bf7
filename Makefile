# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sonify-installed
# CPU wheel by default; for GPUs see README ("GPU install").
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

DEMO := runs/demo

demo: $(STAMP)
	$(PY) -m sonify.run pipeline=demo stage=all
	@echo "rebuilding every demo mixture from the release manifest alone, and checking the hashes:"
	$(PY) -m sonify.mix --manifest $(DEMO)/release/release.parquet --out $(DEMO)/rebuilt --force --check --no-progress \
	    --audio-root demo_sfx=$(DEMO)/data/audio --audio-root demo_labelled=$(DEMO)/data

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m sonify.bench audio

clean:
	rm -rf runs .pytest_cache
