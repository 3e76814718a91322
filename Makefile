# `make test` and `make demo` work on a fresh machine: each creates .venv on first use
# (pinned versions from backends/*.txt) and reuses it afterwards.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
# pip's local index prints a warning per package it does not hold; hide only those lines.
QUIET := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PINS := $(wildcard backends/*.txt) pyproject.toml

.PHONY: venv test demo bench docs clean

venv: $(STAMP)

$(STAMP): $(PINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c backends/constraints.txt \
		-r backends/common.txt -r backends/torch.txt -r backends/jax.txt \
		-r backends/tensorflow.txt -r backends/keras.txt -r backends/anchors.txt \
		-r backends/docs.txt $(QUIET)
	$(PY) -m pip install -q --no-deps -e . $(QUIET)
	$(PY) -c "import gradshap, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

test: $(STAMP)
	$(PY) tests/run.py

demo: $(STAMP)
	$(VENV)/bin/gradshap demo

bench: $(STAMP)
	$(PY) benchmarks/bench.py

# The documentation site, warnings as errors; notebooks executed on CPU and cached in
# docs/_build/.jupyter_cache. GRADSHAP_DOCS_INTERSPHINX=1 links numpy, torch, ... (online).
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	$(PY) docs/check_build.py docs/_build/html

clean:
	rm -rf $(VENV) build dist *.egg-info docs/_build docs/api/generated
