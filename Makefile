# The two commands the README starts with: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-deps lint check venv clean bench

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Runs the router on its built-in default config: AE DICOM-ROUTER, port 11112,
# everything stored under ./received, metrics on 127.0.0.1:9100.
run: $(STAMP)
	$(VENV)/bin/dicom-router run

# System packages the tests talk to (DCMTK), installed when missing.
test-deps:
	bash scripts/install-test-deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check router workers tests loadtest
	$(VENV)/bin/mypy

test: test-deps $(STAMP) lint
	bash scripts/run-tests.sh

# The benchmark (loadtest/README.md): every case interleaved; table, JSON and chart in
# loadtest/results/. `make bench BENCH_ARGS=--quick` for a smoke run.
BENCH_ARGS ?=
bench: $(STAMP)
	bash scripts/install-bench-deps.sh
	TCP_NODELAY=1 $(PY) -m loadtest.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
