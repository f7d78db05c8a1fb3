# aurora_nb: the commands a newcomer needs are `make demo` and `make test` (see README.md).
# Everything runs inside the project virtual environment .venv/, created on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aurora-installed
PYTEST_WORKERS ?= 2
# RUN_SLOW=1 (what `make test-all` sets) also runs the notebook cells flagged `#| slow` and the tests marked slow.
RUN_SLOW ?=

# Tests and notebooks never touch the network; kernels inherit these.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TRL_EXPERIMENTAL_SILENCE := 1
export PYTHONHASHSEED := 0
# torch's OpenMP threads sleep instead of spinning while they wait: with two test workers (and their notebook kernels
# and launched processes) on 2 cores, spinning threads took the CPU from the working ones (28x the wall time of the
# same steps, measured). The thread count, and so every number computed, is unchanged.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: help install demo test test-all docs export check-export check-readme readme nbdev-test pytest refresh clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# Idempotent install: reruns only when the packaging files change (a second run takes well under a second).
install: $(STAMP)  ## create .venv and install aurora_nb with its pinned dev tools
$(STAMP): settings.ini setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@
	@echo "installed aurora_nb into $(VENV)/"

demo: install  ## run the whole pipeline on the bundled synthetic benchmark (tiny preset)
	$(BIN)/aurora-nb run --preset tiny --out runs/demo

export: install  ## write aurora_nb/ from the notebooks
	$(BIN)/nbdev_export

check-export: install  ## fail if aurora_nb/ differs from what the notebooks export
	@rm -rf .export-snapshot && cp -r aurora_nb .export-snapshot
	@$(BIN)/nbdev_export
	@if diff -r -q -x __pycache__ .export-snapshot aurora_nb; then rm -rf .export-snapshot; \
	  echo "check-export: aurora_nb/ matches the notebooks"; \
	else rm -rf .export-snapshot; \
	  echo "check-export: aurora_nb/ was stale; nbdev_export has now rewritten it from nbs/. Review and commit it."; exit 1; fi

readme: install  ## regenerate README.md from nbs/index.ipynb
	$(BIN)/python tools/make_readme.py

check-readme: install  ## fail if README.md differs from nbs/index.ipynb
	$(BIN)/python tools/make_readme.py --check

# Not part of `make test`: nbval (below) already executes every notebook cell and compares its output, and
# tests/conftest.py gives it nbdev's test flags, so `make test` runs each notebook once. FLAGS=slow runs slow cells.
nbdev-test: install  ## run the notebooks with nbdev's own runner (execnb), skipping settings.ini's tst_flags
	$(BIN)/nbdev_test --do_print $(if $(FLAGS),--flags "$(FLAGS)")

# tools/build_docs.py: nbdev's notebook processing, smalldocs for the pages (named as Quarto names them), maths as
# MathML; `nbdev_docs` makes the published site from the same _quarto.yml with Quarto.
docs: install  ## build the documentation site into _docs/ (offline, no Quarto needed)
	@rm -rf _proc _docs
	$(BIN)/python tools/build_docs.py _docs
	$(BIN)/python tools/check_docs.py _docs

# nbval executes every notebook cell and compares its stored output (each notebook runs once, on one worker:
# --dist loadfile); tests/ holds the end-to-end and parity tests. tests/conftest.py skips what nbdev_test skips
# (cells flagged with settings.ini's tst_flags, `#| eval: false`) and, without RUN_SLOW, the slow cells and tests.
# pytest exits 5 when it collects nothing: that is not a failure, every other non-zero code is.
pytest: install  ## nbval over nbs/ plus tests/ (RUN_SLOW=1: with the slow cells and tests)
	AURORA_NB_RUN_SLOW=$(RUN_SLOW) $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 \
	  --nbval --nbval-current-env --nbval-sanitize-with nbval.cfg nbs tests; \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test: check-export check-readme docs pytest  ## every check; cells flagged `#| slow` and slow tests are skipped (their quick path runs)

test-all:  ## `make test` plus the cells flagged `#| slow` and the slow tests: nothing skipped (CI runs this)
	@$(MAKE) --no-print-directory test RUN_SLOW=1

refresh: install  ## re-execute notebooks with the Jupyter kernel and strip metadata (NB=nbs/01_data.ipynb for one)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace $(or $(NB),nbs/*.ipynb)
	$(BIN)/nbstripout --keep-output --keep-count --keep-id $(or $(NB),nbs/*.ipynb)

clean:  ## remove build outputs (keeps .venv/)
	rm -rf _proc _docs .export-snapshot .pytest_cache build dist *.egg-info
