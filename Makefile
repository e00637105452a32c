# The two commands of the README: `make demo` and `make test`. Everything else is their plumbing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)

.PHONY: demo test bench bench-seed bench-many install clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## run the whole pg_replication DAG on throwaway local databases and print a summary
demo: $(VENV)/.installed
	$(PY) -m devenv.demo

## run the whole test suite
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

## benchmarks (see bench/README.md)
bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

## the figure that counts: the seed's own code (PGREPL_SEED_DIR = a clone of 1024pix/pix-db-replication), pgcopydb
## and the project's DAG, on the seed's dump inflated to scale 3 (see bench/README.md)
bench-seed: $(VENV)/.installed
	$(PY) bench/seed_bench.py $(BENCH_ARGS)

## every step of a night at 500, 2,000 and 10,000 tables on default server settings, ratios per step (issue 19)
bench-many: $(VENV)/.installed
	$(PY) bench/many_tables.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
