# Every target installs what it needs: a fresh clone needs nothing but python3 >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# /docs serves Swagger UI from the npm registry, fetched (pinned and checked) beside the code.
SWAGGER_UI := gateway/web/static/swagger-ui/.version

.PHONY: install test lint typecheck run sandbox demo bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(SWAGGER_UI): tools/vendor_swagger_ui.py
	$(PYTHON) tools/vendor_swagger_ui.py

install: $(STAMP) $(SWAGGER_UI)

test: $(STAMP) $(SWAGGER_UI) chromium
	$(BIN)/pytest -q

# The browser tests (the jobs page, /docs) drive Debian's chromium through Playwright: installed
# here when missing (as root, else through sudo). If it cannot be, make test goes on and those
# tests skip, naming the missing browser.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif [ -t 0 ]; then SUDO=sudo; else SUDO="sudo -n"; fi; \
	  command -v apt-get >/dev/null && { \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
	    { $$SUDO apt-get update && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; \
	  }; \
	} || echo "make: could not install chromium ($(CHROMIUM)): the browser tests will skip"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway adapters jobgate tests bench tools
	$(BIN)/mypy --strict gateway adapters jobgate tools

run: $(STAMP) $(SWAGGER_UI)
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
	rm -rf $(VENV) var gateway/web/static/swagger-ui .mypy_cache .pytest_cache .ruff_cache
