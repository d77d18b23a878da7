"""Check supervisord.conf as cryptodata.service runs it, with ONLY the environment the unit gives
supervisord (Environment=, EnvironmentFile=, User=, systemd's default PATH):

- supervisord accepts the config (every ``%(ENV_...)s`` name it expands is defined);
- every program runs from the unit's venv (the directory of ExecStart's supervisord);
- TimeoutStopSec exceeds the SUM of all stopwaitsecs by at least --min-margin seconds
  (supervisord stops the groups one after the other, each may use its full stopwaitsecs);
- the health check unit's --supervisor-socket is supervisord.conf's unix socket.

The units are read from ROOT/etc/systemd/system and every absolute path they name
(EnvironmentFile=, ``-c supervisord.conf``) is resolved under ROOT, an installed tree:
deploy/systemd/check.sh assembles one from the repository, deploy/ansible/check.sh renders one
with the roles.

    python deploy/systemd/check_supervisord_conf.py ROOT [--min-margin 10]
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

MAIN_UNIT = "cryptodata.service"
HEALTHCHECK_UNIT = "cryptodata-healthcheck.service"
# systemd's PATH for services that do not set one (systemd.exec(5), "Environment variables").
SYSTEMD_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"

# Runs in a child whose environment is exactly the unit's: supervisord's own config parser.
PARSE = r"""
import json, socket, sys
from supervisor.options import ServerOptions
opts = ServerOptions()
opts.realize(["-c", sys.argv[1]])
print(json.dumps({
    "sockets": [c["file"] for c in opts.server_configs if c["family"] == socket.AF_UNIX],
    "programs": [{"name": f"{g.name}:{p.name}", "command": p.command, "autostart": p.autostart,
                  "stopwaitsecs": p.stopwaitsecs}
                 for g in opts.process_group_configs for p in g.process_configs],
}))
"""

Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if value:
            current.setdefault(key.strip(), []).append(value)
        else:   # an empty assignment resets the list, as in systemd
            current[key.strip()] = []
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile= syntax: KEY=VALUE lines, # or ; comments, optional quotes."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def service_environment(service: dict[str, list[str]], root: Path) -> dict[str, str]:
    env = {"PATH": SYSTEMD_DEFAULT_PATH}
    for user in service.get("User", [])[-1:]:
        env.update(USER=user, LOGNAME=user)
    for value in service.get("Environment", []):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    # Files are read after Environment= and override it (systemd.exec(5)).
    for value in service.get("EnvironmentFile", []):
        path = under(root, value.lstrip("-"))
        if not path.exists() and value.startswith("-"):
            continue
        env.update(read_env_file(path))
    return env


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def seconds(span: str) -> float:
    """systemd time span: "100", "90s", "1min 40s", "2m"; "infinity" -> inf."""
    if span.strip() == "infinity":
        return float("inf")
    units = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
             "ms": 0.001, "msec": 0.001}
    parts = re.findall(r"([0-9.]+)\s*([a-z]*)", span)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", span):
        raise ValueError(f"unsupported time span {span!r}")
    return sum(float(n) * units[u] for n, u in parts)


def parse_supervisord(conf: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PARSE, str(conf)], env=env, cwd=conf.parent,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: supervisord rejects {conf} with the unit's environment "
                         f"({', '.join(sorted(env))}):\n{proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)


def check(root: Path, min_margin: float) -> list[str]:
    units = root / "etc/systemd/system"
    service = read_unit(units / MAIN_UNIT).get("Service", {})
    exec_start = shlex.split(service["ExecStart"][-1])
    venv_bin = str(Path(exec_start[0]).parent)
    conf = under(root, exec_start[exec_start.index("-c") + 1])
    env = service_environment(service, root)
    parsed = parse_supervisord(conf, env)
    print(f"OK: supervisord parses {conf.name} with only the unit's environment "
          f"({', '.join(sorted(env))})")
    failures: list[str] = []

    for program in parsed["programs"]:
        exe = shlex.split(program["command"])[0]
        print(f"   {program['name']:34} autostart={program['autostart']!s:5} "
              f"stopwaitsecs={program['stopwaitsecs']:<3} {program['command'][:70]}")
        if not exe.startswith(venv_bin + "/"):
            failures.append(f"{program['name']} runs {exe}, not from the unit's venv {venv_bin}")

    total = sum(p["stopwaitsecs"] for p in parsed["programs"])
    timeout = seconds(service.get("TimeoutStopSec", ["90"])[-1])
    if timeout < total + min_margin:
        failures.append(f"TimeoutStopSec={timeout:g}s < sum of stopwaitsecs {total}s "
                        f"+ margin {min_margin:g}s")
    else:
        print(f"OK: TimeoutStopSec={timeout:g}s >= sum of stopwaitsecs {total}s + {min_margin:g}s")

    hc = shlex.split(read_unit(units / HEALTHCHECK_UNIT)["Service"]["ExecStart"][-1])
    if "--supervisor-socket" in hc:
        socket = str(under(root, hc[hc.index("--supervisor-socket") + 1]))
        if socket not in parsed["sockets"]:
            failures.append(f"{HEALTHCHECK_UNIT} uses {socket}, supervisord listens on "
                            f"{parsed['sockets']}")
        else:
            print(f"OK: {HEALTHCHECK_UNIT} --supervisor-socket is supervisord's socket")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="installed tree holding etc/systemd/system")
    parser.add_argument("--min-margin", type=float, default=10.0,
                        help="seconds TimeoutStopSec must exceed the stopwaitsecs sum by")
    args = parser.parse_args(argv)
    failures = check(args.root.resolve(), args.min_margin)
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
