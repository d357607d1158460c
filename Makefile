# The two commands the README starts with: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two stamps: `make run` installs the project alone, `make test` adds the test extras, also
# after a `make run` (one stamp for both would make `make test` skip the extras).
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test test-deps lint check venv clean bench

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when the project's metadata changes.
$(STAMP_RUN): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP_RUN)

$(STAMP_TEST): pyproject.toml $(STAMP_RUN)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP_TEST)

venv: $(STAMP_TEST)

# Runs the router on its built-in default config: AE DICOM-ROUTER, port 11112,
# everything stored under ./received, spool in ./spool, metrics on 127.0.0.1:9100.
# Byte-compiled first: each of the router's processes imports its modules when it starts
# or restarts, from source every time where PYTHONDONTWRITEBYTECODE is set.
run: $(STAMP_RUN)
	$(PY) -m compileall -q router workers > /dev/null
	$(VENV)/bin/dicom-router run

# System packages the tests talk to (DCMTK), installed when missing.
test-deps:
	bash scripts/install-test-deps.sh

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check router workers tests loadtest
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) scripts/check_pynetdicom_internals.py

test: test-deps $(STAMP_TEST) lint
	bash scripts/run-tests.sh

# The benchmark (loadtest/README.md): every case interleaved; table, JSON and chart in
# loadtest/results/. `make bench BENCH_ARGS=--quick` for a smoke run.
BENCH_ARGS ?=
bench: $(STAMP_TEST)
	bash scripts/install-bench-deps.sh
	TCP_NODELAY=1 $(PY) -m loadtest.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
