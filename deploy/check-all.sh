#!/usr/bin/env bash
# All operations checks, as CI runs them (see deploy/OPERATIONS.md "What was verified where").
# Needs: root (the Ansible render check installs root-owned files into a staging tree), apt systemd
# (>= 252), git; a venv with requirements.txt + deploy/requirements-ci.txt
# (PYTHON=/path/to/venv/bin/python, default .venv/bin/python).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
export PYTHON
echo "#### systemd units";            "$REPO/deploy/systemd/check.sh"
echo "#### ansible";                  "$REPO/deploy/ansible/check.sh"
echo "#### ops tests (Sentry, supervisord listener, health check)"
cd "$REPO" && "$PYTHON" -m pytest -q tests/system/test_ops_sentry.py tests/system/test_ops_supervisor.py tests/system/test_ops_healthcheck.py
