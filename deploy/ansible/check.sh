#!/usr/bin/env bash
# CI checks for deploy/ansible:
#   1. ansible-playbook --syntax-check site.yml
#   2. ansible-lint (production profile, offline, strict; config .ansible-lint) clean
#   3. a REAL run of the index/TTL provisioning (site.yml --tags indexes, i.e. the task running
#      `python -m common.indexes` from the app's venv) against a throw-away nx-27017 server,
#      twice: 1st run must report changed=1, 2nd run changed=0 (idempotent); the indexes are
#      then counted in the database named by the env file (proves the env file is honoured).
#   4. a retention change in the env file makes the next run report changed=1 (TTL update).
#   5. render (as root): site.yml for real on localhost with every file written under a staging
#      tree (ci/render.yml: mongod.conf + keyfile, env file, git archive of the release, units):
#      the documented dry run (--check --diff) on the empty tree passes and writes nothing, the
#      real run changes, a 2nd run and a dry run report changed=0; ci/verify_render.py checks the
#      content, then deploy/systemd/check.sh runs on the installed tree (systemd-analyze
#      verify/security on the installed units, supervisord.conf parsed with the unit + the
#      rendered env file).
# Usage: deploy/ansible/check.sh   (PYTHON=/path/to/venv/bin/python to choose the venv; it needs
# requirements.txt + deploy/requirements-ci.txt installed)
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
# nx-27017 gets no TTL indexes by default (the collector deletes instead, common/indexes.py);
# force the TTL path a real mongod takes, which is what production provisions.
printf 'CRYPTODATA_RETENTION__MECHANISM=ttl\n' >> "$ENVFILE"

expect_changed() {  # expected ("any" = more than 0) output
    local changed
    changed="$(printf '%s\n' "$2" | sed -nE 's/^localhost +:.* changed=([0-9]+).* failed=0 .*/\1/p')"
    if [ -z "$changed" ] || { [ "$1" = any ] && [ "$changed" = 0 ]; } || { [ "$1" != any ] && [ "$changed" != "$1" ]; }; then
        echo "$2"; echo "FAIL: expected changed=$1, got changed=${changed:-?}"; return 1
    fi
    echo "OK: changed=$changed"
}

run_indexes() {  # expected_changed
    local out
    out="$(ansible-playbook -i ci/inventory.ini site.yml --tags indexes "${VAULT[@]}" \
        -e @ci/vars.yml -e "cryptodata_app_dir=$REPO" -e "cryptodata_python=$PYTHON" \
        -e "cryptodata_env_file=$ENVFILE" -e "cryptodata_index_uri=$URI" 2>&1)" || { echo "$out"; return 1; }
    printf '%s\n' "$out" | grep -E '"applied"|^localhost +:' | sed 's/^ */   /'
    expect_changed "$1" "$out"
}
echo "-- run 1 (fresh database $DB)"
run_indexes 1
echo "-- run 2 (idempotence)"
run_indexes 0
PYTHONPATH="$REPO" "$PYTHON" - "$URI" "$DB" <<'PY'
import asyncio
import sys
from pymongo import AsyncMongoClient, MongoClient
from common.indexes import missing_indexes
from common.settings import RetentionSettings


async def missing() -> list[str]:
    client = AsyncMongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
    try:
        return await missing_indexes(client[sys.argv[2]], RetentionSettings())
    finally:
        await client.close()

lacking = asyncio.run(missing())
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)[sys.argv[2]]
ttl = [m.get("expireAfterSeconds") for m in db["trades"].index_information().values()
       if m.get("expireAfterSeconds") is not None]
print(f"   specified indexes missing in {sys.argv[2]}: {lacking or 'none'}; trades TTL {ttl}")
sys.exit(1 if lacking else 0)
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
echo "== render: site.yml on localhost into a staging tree (ci/render.yml)"
if [ "$(id -u)" != 0 ]; then
    # The installed files are owned by root, as on the VM.
    echo "FAIL: the render check needs root"; exit 1
fi
TREE="$WORK/tree"
mkdir -p "$TREE/etc/systemd/system"     # what every host already has
# The release is a git archive: include uncommitted changes to tracked files when there are any.
VERSION="$(git -C "$REPO" stash create 2>/dev/null || true)"
VERSION="${VERSION:-HEAD}"
render() {  # expected_changed [ansible-playbook args]
    local expected="$1" out
    shift
    out="$(ansible-playbook -i ci/inventory.ini site.yml "${VAULT[@]}" -e @ci/render.yml \
        -e "cryptodata_install_root=$TREE" -e "mongodb_install_root=$TREE" \
        -e "cryptodata_archive_dir=$WORK" -e "cryptodata_version=$VERSION" "$@" 2>&1)" \
        || { echo "$out"; return 1; }
    printf '%s\n' "$out" | grep -E '^localhost +:' | sed 's/^ */   /'
    expect_changed "$expected" "$out"
}
echo "-- dry run (--check --diff) on the empty tree: a fresh host"
render any --check --diff
written="$(find "$TREE" -mindepth 1 -not -path "$TREE/etc" -not -path "$TREE/etc/systemd" -not -path "$TREE/etc/systemd/system")"
[ -z "$written" ] || { echo "$written"; echo "FAIL: the dry run wrote files"; exit 1; }
echo "OK: nothing written"
echo "-- run 1"
render any
echo "-- run 2 (idempotence)"
render 0
echo "-- dry run on the installed tree (an upgrade's --check --diff)"
render 0 --check --diff
echo "-- content"
"$PYTHON" ci/verify_render.py "$TREE" "$HERE/vault-password.example"
echo "-- systemd units and supervisord.conf as installed"
PYTHON="$PYTHON" "$REPO/deploy/systemd/check.sh" "$TREE"
echo "ALL ANSIBLE CHECKS PASSED"
