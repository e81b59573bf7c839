# Every target installs what it needs: a fresh clone needs nothing but python3 >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck run sandbox demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway adapters tests bench
	$(BIN)/mypy --strict gateway adapters

run: $(STAMP)
	$(BIN)/jobgate serve

sandbox: $(STAMP)
	$(BIN)/jobgate sandbox --host 127.0.0.1 --port 8700

demo: $(STAMP)
	$(BIN)/jobgate demo

# Benchmarks print figures and assert nothing (bench/README.md); the full set takes ~15 minutes.
# bench_reads drives the gateway with wrk (Debian's package), installed here when missing.
bench: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_polls.py
	$(BIN)/python bench/bench_cadence.py
	$(BIN)/python bench/bench_push.py
	$(BIN)/python bench/bench_replicas.py
	$(BIN)/python bench/bench_kill.py
	$(BIN)/python bench/bench_fairness.py
	$(BIN)/python bench/bench_vault.py
	$(BIN)/python bench/bench_reads.py --store both
	$(BIN)/python bench/bench_sse.py

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
