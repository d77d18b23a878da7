#!/usr/bin/env bash
# Static checks of the systemd units (no systemd as PID 1 needed):
#   1. systemd-analyze verify: must print nothing and exit 0 (systemd only *warns* about unknown
#      keys / bad values, so any output fails the check);
#   2. systemd-analyze security --offline=yes: exposure of cryptodata.service <= MAX_EXPOSURE
#      (default 2.0) and of the health check service <= MAX_EXPOSURE_HEALTHCHECK (default 2.0);
#   3. check_supervisord_conf.py: supervisord.conf parses with ONLY the environment the unit and
#      its EnvironmentFile give supervisord, programs run from the unit's venv, TimeoutStopSec >
#      sum of all stopwaitsecs + 10 s, the health check uses supervisord's socket.
# Runs against a --root holding a copy of the distribution units plus executable stubs for every
# absolute Exec*= path (verify checks that the binaries exist). Without an argument the root is
# assembled from this repository (units, supervisord.conf, an EMPTY env file: the unit alone must
# be enough); deploy/ansible/check.sh passes the tree its render run installed (real env file).
# Needs: systemd >= 252 (Debian 12: apt-get install -y systemd), PYTHON = a venv with supervisor.
# Usage: deploy/systemd/check.sh [INSTALLED_ROOT]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"
MAX_EXPOSURE_HEALTHCHECK="${MAX_EXPOSURE_HEALTHCHECK:-2.0}"
UNITS=(cryptodata.service cryptodata-healthcheck.service cryptodata-healthcheck.timer)

command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)"; exit 2; }
echo "$(systemd-analyze --version | head -1)"

if [ $# -ge 1 ]; then
    ROOT="$(cd "$1" && pwd)"
    echo "units installed under $ROOT"
else
    ROOT="$(mktemp -d /tmp/cryptodata-systemd-check.XXXXXX)"
    trap 'rm -rf "$ROOT"' EXIT
    mkdir -p "$ROOT/etc/systemd/system" "$ROOT/etc/cryptodata" "$ROOT/opt/cryptodata/app/logs" \
        "$ROOT/opt/cryptodata/app/var"
    for unit in "${UNITS[@]}"; do
        cp "$HERE/$unit" "$ROOT/etc/systemd/system/$unit"
    done
    cp "$REPO/supervisord.conf" "$ROOT/opt/cryptodata/app/"
    : > "$ROOT/etc/cryptodata/cryptodata.env"
fi
UNIT_DIR="$ROOT/etc/systemd/system"
sysunits=/usr/lib/systemd/system
[ -d "$sysunits" ] || sysunits=/lib/systemd/system
mkdir -p "$ROOT/usr/lib/systemd"
[ -d "$ROOT/usr/lib/systemd/system" ] || cp -a "$sysunits" "$ROOT/usr/lib/systemd/"
# Stub executables for every absolute path used by Exec*= lines (the venv is not installed here).
grep -hE '^Exec[A-Za-z]*=' "${UNITS[@]/#/$UNIT_DIR/}" | sed -E 's/^[^=]+=[-@:+!]*//' | awk '{print $1}' | sort -u |
while read -r exe; do
    [ -e "$ROOT$exe" ] && continue
    mkdir -p "$ROOT$(dirname "$exe")"
    printf '#!/bin/sh\nexit 0\n' > "$ROOT$exe"
    chmod 755 "$ROOT$exe"
done

fail=0
echo "== systemd-analyze verify ${UNITS[*]}"
set +e
out="$(cd "$UNIT_DIR" && systemd-analyze verify --root="$ROOT" "${UNITS[@]}" 2>&1)"
rc=$?
set -e
if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "$out"
    echo "FAIL: verify rc=$rc, $(printf '%s' "$out" | grep -c . || true) line(s) of warnings"
    fail=1
else
    echo "OK: verify rc=0, no warnings"
fi

security() {  # unit max
    local unit="$1" max="$2" report score threshold
    threshold="$(awk -v m="$max" 'BEGIN{printf "%d", m*10 + 0.5}')"
    set +e
    report="$(systemd-analyze security --offline=yes --root="$ROOT" --threshold="$threshold" "$unit" 2>&1)"
    local rc=$?
    set -e
    score="$(printf '%s\n' "$report" | sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p')"
    if [ -z "$score" ]; then
        echo "$report"; echo "FAIL: no exposure score for $unit"; return 1
    fi
    if [ $rc -ne 0 ] || awk -v s="$score" -v m="$max" 'BEGIN{exit !(s > m)}'; then
        printf '%s\n' "$report" | grep -E '^✗' || true
        echo "FAIL: $unit exposure $score > $max (rc=$rc)"; return 1
    fi
    echo "OK: $unit exposure $score <= $max"
}
echo "== systemd-analyze security --offline=yes"
security cryptodata.service "$MAX_EXPOSURE" || fail=1
security cryptodata-healthcheck.service "$MAX_EXPOSURE_HEALTHCHECK" || fail=1

echo "== supervisord.conf under the unit's environment ($PYTHON)"
"$PYTHON" "$HERE/check_supervisord_conf.py" "$ROOT" || fail=1

exit $fail
