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

.PHONY: run run-fg stop status logs test install check-deploy bench

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

## Set up and run the whole test suite.
test: install
	$(VENV)/bin/python -m pytest

## Benchmarks, full run (~8 min on 2 cores; figures and how to read them: tests/bench/README.md):
## the collector benchmark (per exchange and message type, storage, latency, RSS, growth) and
## the API benchmark. BENCH_JSON=file also saves every collector figure; BENCH_ARGS passes
## options (e.g. --reps 5, --only throughput). Uses MONGODB_URI if set, else its own nx-27017.
BENCH_JSON ?=
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/python -m tests.bench.collector_bench $(if $(BENCH_JSON),--json $(BENCH_JSON)) $(BENCH_ARGS)
	$(VENV)/bin/python tests/bench/api_bench.py

## Checks of the deployment: systemd units (systemd-analyze, supervisord.conf parsed with the
## unit's environment) and the Ansible playbook (syntax, ansible-lint, a real index/TTL
## provisioning run against a test database, and - as root - site.yml rendered into a staging
## tree whose files are verified).
check-deploy: install
	$(VENV)/bin/pip install --quiet -r deploy/requirements-ci.txt
	PYTHON=$(abspath $(VENV))/bin/python deploy/systemd/check.sh
	PYTHON=$(abspath $(VENV))/bin/python deploy/ansible/check.sh
