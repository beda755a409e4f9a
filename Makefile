# The README's two commands: `make demo` (set up, then IMP on the embedded digits dataset) and
# `make test` (set up, then the test suite). `make bench` writes BENCHMARKS.md.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean
setup:
	@scripts/setup.sh $(VENV) >/dev/null

demo: setup
	$(VENV)/bin/lthfast demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m benchmarks --out BENCHMARKS.md

clean:
	rm -rf runs .pytest_cache
