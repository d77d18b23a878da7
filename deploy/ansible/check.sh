#!/usr/bin/env bash
# CI checks for deploy/ansible:
#   1. ansible-playbook --syntax-check site.yml
#   2. ansible-lint (production profile, offline, strict; config .ansible-lint) clean
#   3. a REAL run of the index/TTL provisioning (site.yml --tags indexes, i.e. the task running
#      `python -m common.indexes` from the app's venv) against a throw-away nx-27017 server,
#      twice: 1st run must report changed=1, 2nd run changed=0 (idempotent); the indexes are
#      then counted in the database named by the env file (proves the env file is honoured).
#   4. a retention change in the env file makes the next run report changed=1 (TTL update).
# Usage: deploy/ansible/check.sh   (PYTHON=/path/to/venv/bin/python to choose the venv; it needs
# requirements.txt + ansible==12.3.0 + ansible-lint==26.10.1 installed)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
BIN="$(dirname "$PYTHON")"
export PATH="$BIN:$PATH"
export ANSIBLE_CONFIG="$HERE/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
VAULT=(--vault-password-file "$HERE/vault-password.example")
cd "$HERE"

echo "== ansible-playbook --syntax-check ($(ansible-playbook --version | sed -n 1p))"
ansible-playbook -i inventory.ini site.yml --syntax-check "${VAULT[@]}"

echo "== ansible-lint ($(ansible-lint --version 2>/dev/null | sed -n 1p))"
ANSIBLE_VAULT_PASSWORD_FILE="$HERE/vault-password.example" ansible-lint --offline site.yml

echo "== index/TTL provisioning against nx-27017"
WORK="$(mktemp -d /tmp/cryptodata-ansible-check.XXXXXX)"
NX_PID=""
cleanup() {
    if [ -n "$NX_PID" ]; then kill "$NX_PID" 2>/dev/null || true; wait "$NX_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$BIN/nx-27017" --data-dir "$WORK/data" -p "$PORT" --log-file "$WORK/nx.log" --pid-file "$WORK/nx.pid" \
    >/dev/null 2>&1 &
NX_PID=$!
"$PYTHON" - "$PORT" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); break
    except OSError:
        if time.monotonic() > deadline: sys.exit("nx-27017 did not start")
        time.sleep(0.05)
PY
URI="mongodb://127.0.0.1:$PORT"
DB="ci_indexes_$$"
ENVFILE="$WORK/cryptodata.env"
printf 'CRYPTODATA_MONGODB_DB=%s\n' "$DB" > "$ENVFILE"

run_indexes() {  # expected_changed
    local out changed
    out="$(ansible-playbook -i ci/inventory.ini site.yml --tags indexes "${VAULT[@]}" \
        -e @ci/vars.yml -e "cryptodata_app_dir=$REPO" -e "cryptodata_python=$PYTHON" \
        -e "cryptodata_env_file=$ENVFILE" -e "cryptodata_index_uri=$URI" 2>&1)" || { echo "$out"; return 1; }
    printf '%s\n' "$out" | grep -E '"applied"|^localhost +:' | sed 's/^ */   /'
    changed="$(printf '%s\n' "$out" | sed -nE 's/^localhost +:.* changed=([0-9]+).* failed=0 .*/\1/p')"
    if [ "$changed" != "$1" ]; then
        echo "$out"; echo "FAIL: expected changed=$1, got changed=${changed:-?}"; return 1
    fi
    echo "OK: changed=$changed"
}
echo "-- run 1 (fresh database $DB)"
run_indexes 1
echo "-- run 2 (idempotence)"
run_indexes 0
PYTHONPATH="$REPO" "$PYTHON" - "$URI" "$DB" <<'PY'
import sys
from pymongo import MongoClient
from common.indexes import index_specs
from common.settings import RetentionSettings
client = MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
db = client[sys.argv[2]]
specs = index_specs(RetentionSettings())
found = 0
for spec in specs:
    info = db[spec.collection].index_information()
    keys = [k for k, _ in spec.keys]
    if any([k for k, _ in meta["key"]] == keys for meta in info.values()):
        found += 1
ttl = [m.get("expireAfterSeconds") for m in db["trades"].index_information().values()
       if m.get("expireAfterSeconds") is not None]
print(f"   {found}/{len(specs)} specified indexes present in {sys.argv[2]}; trades TTL {ttl}")
sys.exit(0 if found == len(specs) else 1)
PY
echo "-- run 3 (CRYPTODATA_RETENTION__TRADES changed in the env file -> TTL update)"
printf 'CRYPTODATA_RETENTION__TRADES=%s\n' 86400 >> "$ENVFILE"
run_indexes 1
echo "-- run 4 (idempotence after the TTL change)"
run_indexes 0
PYTHONPATH="$REPO" "$PYTHON" - "$URI" "$DB" <<'PY'
import sys
from pymongo import MongoClient
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)[sys.argv[2]]
ttl = [m.get("expireAfterSeconds") for m in db["trades"].index_information().values()
       if m.get("expireAfterSeconds") is not None]
print(f"   trades TTL now {ttl}")
sys.exit(0 if ttl == [86400] else 1)
PY
echo "ALL ANSIBLE CHECKS PASSED"
