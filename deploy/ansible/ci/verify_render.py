"""Verify what the CI render run of site.yml installed under ROOT (see ci/render.yml):

- /etc/mongod.conf: authorization enabled, keyfile, bindIp only loopback/private addresses (never
  0.0.0.0 / ::), the expected private address, replSetName; keyfile mode 0400;
- /etc/cryptodata/cryptodata.env (mode 0640): MONGODB_URI with the application user, its vault
  password, authSource and replicaSet; the Sentry DSN; release = the deployed REVISION; and the
  programs' own Settings read the file (CRYPTODATA_CONFIG_FILE) with those values;
- /etc/systemd/system: the three units, byte-identical to deploy/systemd in the unpacked release
  (systemd-analyze verify/security run on them afterwards: deploy/systemd/check.sh ROOT).

    python deploy/ansible/ci/verify_render.py ROOT VAULT_PASSWORD_FILE
"""
from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml
from pymongo.uri_parser import parse_uri

HERE = Path(__file__).resolve().parent
ANSIBLE = HERE.parent
REPO = ANSIBLE.parent.parent
sys.path.insert(0, str(REPO / "deploy/systemd"))
from check_supervisord_conf import read_env_file  # noqa: E402

UNITS = ("cryptodata.service", "cryptodata-healthcheck.service", "cryptodata-healthcheck.timer")
failures: list[str] = []


def expect(ok: bool, what: str) -> None:
    print(f"{'OK  ' if ok else 'FAIL'}: {what}")
    if not ok:
        failures.append(what)


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def vault(password_file: str) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "view",
                          "--vault-password-file", password_file,
                          str(ANSIBLE / "group_vars/cryptodata/vault.yml")],
                         capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


def check_mongod(root: Path, ci: dict, site: dict) -> None:
    conf = yaml.safe_load((root / "etc/mongod.conf").read_text())
    security, net = conf.get("security", {}), conf.get("net", {})
    expect(security.get("authorization") == "enabled", "mongod.conf: security.authorization enabled")
    expect(security.get("keyFile") == "/etc/mongod.keyfile", "mongod.conf: keyFile /etc/mongod.keyfile")
    addresses = [a.strip() for a in str(net.get("bindIp", "")).split(",") if a.strip()]
    expect(not {"0.0.0.0", "::", "*"} & set(addresses) and not net.get("bindIpAll"),
           f"mongod.conf: bindIp {addresses} not 0.0.0.0/::/bindIpAll")
    expect(all(ipaddress.ip_address(a).is_loopback or ipaddress.ip_address(a).is_private
               for a in addresses), "mongod.conf: bindIp only loopback/private addresses")
    expect(addresses == ["127.0.0.1", ci["mongodb_bind_private_ip"]],
           f"mongod.conf: bindIp = 127.0.0.1 + mongodb_bind_private_ip ({ci['mongodb_bind_private_ip']})")
    expect(conf.get("replication", {}).get("replSetName") == site["mongodb_replset_name"],
           f"mongod.conf: replication.replSetName {site['mongodb_replset_name']}")
    keyfile = root / "etc/mongod.keyfile"
    expect(keyfile.read_text().strip() != "" and mode(keyfile) == "0o400",
           "mongod.keyfile: present, mode 0400")


def check_env_file(root: Path, ci: dict, site: dict, secrets: dict) -> None:
    path = root / "etc/cryptodata/cryptodata.env"
    expect(mode(path) == "0o640", f"cryptodata.env: mode 0640 (got {mode(path)})")
    env = read_env_file(path)
    uri = parse_uri(env.get("MONGODB_URI", "mongodb://"))
    expect(uri["username"] == site["mongodb_app_user"]
           and uri["password"] == secrets["vault_mongodb_app_password"],
           "cryptodata.env: MONGODB_URI has the application user and its vault password")
    expect(uri["nodelist"] == [("127.0.0.1", site["mongodb_port"])]
           and uri["database"] == site["cryptodata_db"]
           and uri["options"].get("authSource") == site["cryptodata_db"]
           and uri["options"].get("replicaSet") == site["mongodb_replset_name"],
           "cryptodata.env: MONGODB_URI host, database, authSource, replicaSet")
    expect(env.get("CRYPTODATA_SENTRY_DSN") == ci["monitoring_sentry_dsn"], "cryptodata.env: Sentry DSN")
    revision = (root / "opt/cryptodata/app/REVISION").read_text().strip()
    expect(env.get("CRYPTODATA_RELEASE") == f"cryptodata@{revision[:12]}",
           "cryptodata.env: CRYPTODATA_RELEASE is the deployed REVISION")
    expect(env.get("CRYPTODATA_EMBEDDED_DB") == "false", "cryptodata.env: embedded DB off")
    # The programs' settings loader reads the rendered file (CRYPTODATA_CONFIG_FILE).
    probe = ("from common.settings import Settings; s = Settings(); "
             "print(s.mongodb_uri); print(s.sentry_dsn); print(s.environment); print(s.mongodb_db)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTODATA_") and k != "MONGODB_URI"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True,
                         env={**clean, "PYTHONPATH": str(REPO), "CRYPTODATA_CONFIG_FILE": str(path)})
    expect(out.returncode == 0 and out.stdout.splitlines() == [
        env["MONGODB_URI"], ci["monitoring_sentry_dsn"], "production", site["cryptodata_db"]],
        "Settings(CRYPTODATA_CONFIG_FILE=cryptodata.env) reads the URI, DSN, environment, database")


def check_units(root: Path) -> None:
    for unit in UNITS:
        installed = root / "etc/systemd/system" / unit
        source = root / "opt/cryptodata/app/deploy/systemd" / unit
        expect(installed.read_bytes() == source.read_bytes() and mode(installed) == "0o644",
               f"{unit}: installed (0644) from the deployed release")


def main() -> int:
    root, password_file = Path(sys.argv[1]), sys.argv[2]
    ci = yaml.safe_load((HERE / "render.yml").read_text())
    site = yaml.safe_load((ANSIBLE / "group_vars/all.yml").read_text())
    check_mongod(root, ci, site)
    check_env_file(root, ci, site, vault(password_file))
    check_units(root)
    app = root / "opt/cryptodata/app"
    expect(all((app / d).is_dir() for d in ("logs", "var", "data")) and (app / "supervisord.conf").is_file(),
           "app dir: release unpacked, logs/ var/ data/ created")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
