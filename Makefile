# The two commands a user needs:  `make run`  (whole system)  and  `make test`  (test suite).
# `make bench` runs the benchmarks (several minutes; see tests/bench/README.md).
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3

# Embedded MongoDB (nx-27017) unless the caller points MONGODB_URI at a real server. These
# variables are given to supervisord only: `make test` starts its own server on a free port.
EMBEDDED_DB_PORT ?= 27017
ifeq ($(origin MONGODB_URI),undefined)
RUN_ENV := CRYPTODATA_EMBEDDED_DB=true MONGODB_URI=mongodb://127.0.0.1:$(EMBEDDED_DB_PORT)
else
RUN_ENV := CRYPTODATA_EMBEDDED_DB=false
endif
RUN_ENV += CRYPTODATA_EMBEDDED_DB_PORT=$(EMBEDDED_DB_PORT) CRYPTODATA_VENV=$(abspath $(VENV))
CTL := env $(RUN_ENV) $(VENV)/bin/supervisorctl -c supervisord.conf

.PHONY: run run-fg stop status logs test install check-deploy bench mutation

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

## Set up and start MongoDB (embedded), the collector and the API under supervisord.
run: install
	@mkdir -p var logs
	@ln -sfn logs/data_collection.log data_collection.log   # the runbook greps it here
	@if [ -S var/supervisor.sock ] && $(CTL) status >/dev/null 2>&1; then \
	  $(CTL) restart all; \
	else \
	  env $(RUN_ENV) $(VENV)/bin/supervisord -c supervisord.conf; \
	fi
	@sleep 4; $(CTL) status || true
	@echo "Dashboard: http://127.0.0.1:5001/   API: http://127.0.0.1:5001/health   logs: logs/   stop: make stop"

## The same in the foreground (Ctrl-C stops everything).
run-fg: install
	@mkdir -p var logs
	env $(RUN_ENV) $(VENV)/bin/supervisord -n -c supervisord.conf

stop:
	-$(CTL) shutdown

status:
	$(CTL) status

logs:
	tail -n 50 -f logs/data_collection.log logs/api_server.log

## Set up and run the whole test suite: lint (ruff), type check (mypy), then pytest.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

## Benchmarks, full run (~8 min on 2 cores; figures and how to read them: tests/bench/README.md):
## the collector benchmark (per exchange and message type, storage, latency, RSS, growth) and
## the API benchmark, and the volume benchmark (history reads at 20k..1M trades, retention cost;
## ~10 min more). BENCH_JSON=file also saves every collector figure; BENCH_ARGS passes options
## (e.g. --reps 5, --only throughput). Uses MONGODB_URI if set, else its own nx-27017.
BENCH_JSON ?=
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/python -m tests.bench.collector_bench $(if $(BENCH_JSON),--json $(BENCH_JSON)) $(BENCH_ARGS)
	$(VENV)/bin/python tests/bench/api_bench.py
	$(VENV)/bin/python -m tests.bench.volume_bench $(if $(MONGODB_URI),--mongodb-uri $(MONGODB_URI))

## Checks of the deployment: systemd units (systemd-analyze, supervisord.conf parsed with the
## unit's environment) and the Ansible playbook (syntax, ansible-lint, a real index/TTL
## provisioning run against a test database, and - as root - site.yml rendered into a staging
## tree whose files are verified).
check-deploy: install
	$(VENV)/bin/pip install --quiet -r deploy/requirements-ci.txt
	PYTHON=$(abspath $(VENV))/bin/python deploy/systemd/check.sh
	PYTHON=$(abspath $(VENV))/bin/python deploy/ansible/check.sh

## Mutation test of the exchange parsers (developer tool, not in CI): mutmut over
## collector/exchanges/<ex>/parsers.py with that exchange's parser unit tests only; prints
## killed/survived per exchange. MUTATE=binance restricts it; `mutmut show N` shows a mutant.
MUTATE ?= binance bybit gateio kraken okx
mutation: install
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	@for ex in $(MUTATE); do \
	  tests=tests/unit/test_parsers_$$ex.py; \
	  rm -f .mutmut-cache; \
	  PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/mutmut run --paths-to-mutate collector/exchanges/$$ex/parsers.py \
	    --runner "$(abspath $(VENV))/bin/python -m pytest -x -q -p no:cacheprovider $$tests" \
	    --no-progress >/dev/null; \
	  echo "== $$ex"; $(VENV)/bin/mutmut results | grep -E '^(Survived|Timed out|Suspicious)' || true; \
	  $(VENV)/bin/python -c "import sqlite3; db = sqlite3.connect('.mutmut-cache'); \
	    rows = dict(db.execute('select status, count(*) from Mutant group by status')); \
	    killed = rows.get('ok_killed', 0); total = sum(rows.values()); \
	    print(f'$$ex: {killed}/{total} mutants killed ({100 * killed / max(total, 1):.1f} %)', rows)"; \
	done
