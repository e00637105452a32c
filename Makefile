# The two commands of the README: `make demo` and `make test`. Everything else is their plumbing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)

.PHONY: demo test bench install clean

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

clean:
	rm -rf $(VENV)
