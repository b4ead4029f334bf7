# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sonify-installed
# CPU wheel by default; for GPUs see docs/cluster.md ("GPU install").
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-slow test-all bench app-screenshots clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,app]"
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

DEMO := runs/demo

demo: $(STAMP)
	$(PY) -m sonify.run pipeline=demo stage=all
	@echo "rebuilding every demo mixture from the release manifest alone, and checking the hashes:"
	$(PY) -m sonify.mix --manifest $(DEMO)/release/release.parquet --out $(DEMO)/rebuilt --force --check --no-progress \
	    --source demo_sfx=$(DEMO)/data/audio --source demo_labelled=$(DEMO)/data
	@echo "training the tiny audio-conditioned DiT on the demo shards, then generating from two demo sounds:"
	$(PY) -m sonify.train_dit config=train_demo resume=latest progress=false
	$(PY) -m sonify.generate --checkpoint $(DEMO)/dit --out $(DEMO)/generated --steps 10 --num-images 4 \
	    --audio $(DEMO)/data/audio/dog_bark_16000hz_1ch.wav $(DEMO)/data/audio/bell_8000hz_1ch.wav --offsets 0 -6

# two test processes (the 2-core machine's cores), then the tests on the session's Ray head in one (conftest.py)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not ray" -n 2
	$(PY) -m pytest -q -m "not slow and ray"

# heavier checks (browser, multi-rank, full-width models); pytest's exit 5 (none selected) is not a failure
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

test-all: test test-slow

bench: $(STAMP)
	$(PY) -m sonify.bench audio

# the screenshots of docs/app.md: the app on the demo run (make demo first), driven in headless Chromium
app-screenshots: $(STAMP)
	$(PY) -m sonify.app run=$(DEMO) checkpoint=$(DEMO)/dit --screenshots docs/images

clean:
	rm -rf runs .pytest_cache
