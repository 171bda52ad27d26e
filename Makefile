# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv, install ctrops with its native kernels, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ctrops-installed
NATIVE := $(wildcard src/ctrops/*/*.pyx src/ctrops/*/*.pxd src/ctrops/*/*.h)

.PHONY: install demo test test-fast bench clean services

$(STAMP): pyproject.toml setup.py $(NATIVE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=77" wheel "Cython>=3.1" "numpy>=2.0,<2.5"
	$(PY) -m pip install -q --no-build-isolation -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctrops demo --out demo-out

services:
	@bash .ci/services.sh

test: $(STAMP) services
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build demo-out bench-out src/*.egg-info
	find src -name '*.so' -delete; find src -name '*.c' -delete
