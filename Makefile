# `make demo`: set up .venv if missing, run the workflow on the embedded synthetic cohort, build the HTML report.
# `make test`: set up .venv if missing, lint, and run the tests.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: demo test lint dry-run report study clean-results

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	snakemake all --cores $(CORES)
	snakemake all --report results/report.html

# The study (config/study.yaml): one run per training seed and per training fraction (README, "A study
# that can rank the methods"); results-study/sweep/ holds each run's comparison and the tables over them.
study: $(VENV)/.installed
	ct25d sweep --configfile config/study.yaml --cores $(CORES)

dry-run: $(VENV)/.installed
	snakemake all -n

report: $(VENV)/.installed
	snakemake all --report results/report.html

lint: $(VENV)/.installed
	ruff check .
	ruff format --check .

test: lint
	pytest

clean-results:
	rm -rf results .snakemake
