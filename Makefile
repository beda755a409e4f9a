# The README's two commands: `make demo` (set up, then IMP on the embedded digits dataset) and
# `make test` (set up, then the test suite). `make bench` writes BENCHMARKS.md.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean
setup:
	@scripts/setup.sh $(VENV) >/dev/null

demo: setup
	$(VENV)/bin/lthfast imp --dataset digits --subset easy --size 256 --steps 20 --levels 5 --el2n-models 4
	$(PY) -c "import json,glob; r=json.load(open(sorted(glob.glob('runs/imp_*/results.json'))[-1])); \
	[print(f\"level {x['level']:2d}  weights {x['weights_remaining']:.3f}  test_acc {x['test_acc']:.3f}\") for x in r['rows']]"

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m benchmarks --out BENCHMARKS.md

clean:
	rm -rf runs .pytest_cache
