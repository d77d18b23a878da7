#!/usr/bin/env bash
# OPTIONAL, DESTRUCTIVE for the machine it runs on (meant for a throw-away CI container, as root):
# runs the real "cryptodata" + "monitoring" role deploy tasks against localhost - creates the
# user "cryptodata", /opt/cryptodata/{app,venv}, /etc/cryptodata/cryptodata.env, copies the units
# to /etc/systemd/system, pip-installs requirements.txt into the venv, applies the indexes with
# the DEPLOYED venv against nx-27017 - twice; the second run must report changed=0.
# Skipped (no systemd as PID 1 / no internet): MongoDB install, starting units.
# Usage: CRYPTODATA_LOCAL_DEPLOY=yes deploy/ansible/ci/local-deploy.sh [--cleanup]
set -euo pipefail
[ "${CRYPTODATA_LOCAL_DEPLOY:-}" = yes ] || { echo "refusing: set CRYPTODATA_LOCAL_DEPLOY=yes"; exit 2; }
[ "$(id -u)" = 0 ] || { echo "must run as root"; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
BIN="$(dirname "$PYTHON")"
export PATH="$BIN:$PATH" ANSIBLE_CONFIG="$HERE/ansible.cfg" ANSIBLE_NOCOLOR=1
cd "$HERE"

WORK="$(mktemp -d /tmp/cryptodata-local-deploy.XXXXXX)"
NX_PID=""
cleanup() {
    if [ -n "$NX_PID" ]; then kill "$NX_PID" 2>/dev/null || true; wait "$NX_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
    if [ "${1:-}" = all ]; then
        rm -rf /opt/cryptodata /etc/cryptodata /etc/systemd/system/cryptodata.service \
            /etc/systemd/system/cryptodata-healthcheck.service /etc/systemd/system/cryptodata-healthcheck.timer
        userdel cryptodata 2>/dev/null || true
        echo "cleaned up /opt/cryptodata, /etc/cryptodata, units, user"
    fi
}
if [ "${1:-}" = --cleanup ]; then trap 'cleanup all' EXIT; else trap cleanup EXIT; fi

PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$BIN/nx-27017" --data-dir "$WORK/data" -p "$PORT" --log-file "$WORK/nx.log" --pid-file "$WORK/nx.pid" >/dev/null 2>&1 &
NX_PID=$!
for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
URI="mongodb://127.0.0.1:$PORT"

run() {  # expected_changed ("any" or a number)
    local out changed
    out="$(ansible-playbook -i ci/inventory.ini site.yml --vault-password-file vault-password.example \
        -e @ci/vars.yml -e cryptodata_deploy_code=true -e monitoring_install_units=true \
        -e "cryptodata_mongodb_uri=$URI" -e "cryptodata_index_uri=$URI" -e cryptodata_embedded_db=false 2>&1)" \
        || { echo "$out"; return 1; }
    printf '%s\n' "$out" | grep -E '^(changed|ok): |^localhost +:' | sed 's/^/   /'
    changed="$(printf '%s\n' "$out" | sed -nE 's/^localhost +:.* changed=([0-9]+).* failed=0 .*/\1/p')"
    if [ "$1" != any ] && [ "$changed" != "$1" ]; then echo "FAIL: expected changed=$1, got ${changed:-?}"; return 1; fi
    echo "OK: changed=$changed"
}
echo "-- deploy run 1"; run any
echo "-- deploy run 2 (idempotence)"; run 0
ls -l /opt/cryptodata /opt/cryptodata/app | sed 's/^/   /'
stat -c '   %A %U:%G %n' /etc/cryptodata/cryptodata.env
runuser -u cryptodata -- /opt/cryptodata/venv/bin/python -c 'import sentry_sdk, supervisor, aiohttp, pymongo; print("   venv imports ok as user cryptodata")'
echo "LOCAL DEPLOY CHECK PASSED"
