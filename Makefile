# Two entry points for a fresh machine (see README):
#   make demo   installs into .venv and runs ckptdoctor on a bundled example
#   make test   installs into .venv (with the dev extra), runs `make lint`, then the whole test suite
#   make lint   ruff (E, F, I, B, UP, SIM) and mypy (strict on pickles/, formats/, loaders.py)
#   make mutate mutation testing of pickles/, loaders.py, validate.py, deep.py (slow; see
#               docs/development.md; MUTATE_ARGS="--sample 6" runs a subset)
# torch is pinned and installed FIRST: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

.PHONY: demo test bench clean lint mutate

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base pyproject.toml
	DS_BUILD_OPS=0 $(PY) -m pip install -q $(TORCH) -e '.[dev]'
	touch $@

demo: $(VENV)/.base
	rm -rf demo-out
	$(PY) -m ckptdoctor.demo demo-out

test: lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_inspect.py
	$(PY) benchmarks/bench_convert.py

lint: $(VENV)/.dev
	$(PY) -m ruff check ckptdoctor tests tools benchmarks
	$(PY) -m mypy

MUTATE_ARGS ?=
mutate: $(VENV)/.dev
	$(PY) tools/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) demo-out bench-out mutate-report.json

# The longer matrices, beyond the default suite (tests marked `oracle`, see tests/conftest.py):
# the full differential oracle (tests/oracle/: every framework x damage, real resume vs
# validate), then the extra variants of the real multi-rank proofs elsewhere in tests/.
# ORACLE_WRITE_DOCS=1 make oracle also regenerates the matrix in docs/validate.md.
.PHONY: oracle
oracle: $(VENV)/.dev
	ORACLE_ALL=1 $(PY) -m pytest -q -p no:cacheprovider tests/oracle
	$(PY) -m pytest -q -p no:cacheprovider -m oracle --ignore=tests/oracle tests
