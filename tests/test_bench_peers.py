"""The benchmark's Exim and OpenSMTPD configurations (scripts/bench_peers.py).

No network and no daemon: the generated configurations are checked as text,
and, where scripts/bench-peers-setup.sh has unpacked the Debian binaries
(target/bench-peers/root), by the MTAs themselves: `exim -bV` parses the file
and `exim -bt` routes the two sink domains without delivering anything;
`smtpd -n` parses smtpd.conf.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import bench_peers  # noqa: E402


def _routers(conf: str) -> dict[str, dict[str, str]]:
    """{router name: {option: value}} of the `begin routers` section."""
    section = conf.split("begin routers", 1)[1].split("begin transports", 1)[0]
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in section.splitlines():
        if re.match(r"^\w+:$", line):
            current = out.setdefault(line[:-1], {})
        elif current is not None and "=" in line and not line.strip().startswith("#"):
            k, v = line.split("=", 1)
            current[k.strip()] = v.strip()
    return out


def _certs(tmp_path: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for stem, alg in (("rsa", ["-newkey", "rsa:2048"]),
                      ("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        cert, key = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
        subprocess.run(["openssl", "req", "-x509", *alg, "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "2", "-subj", "/CN=mta.bench"], check=True, capture_output=True)
        pairs.append((cert, key))
    return pairs


def _exim_conf(tmp_path: Path, certs) -> str:
    return bench_peers.exim_config(exim_bin=bench_peers.DEFAULT_ROOT / "usr/sbin/exim4", spool=tmp_path / "spool",
                                   log_dir=tmp_path / "log", pid_file=tmp_path / "exim.pid", port=40001,
                                   port_tls=40002, sink_plain=40011, sink_tls=40012, certs=certs)


def test_exim_config_relays_the_two_domains_to_their_sink_ports(tmp_path):
    certs = _certs(tmp_path)
    conf = _exim_conf(tmp_path, certs)
    opts = dict(re.findall(r"^(\w+) = (.*)$", conf, re.M))
    assert opts["daemon_smtp_ports"] == "40001 : 40002"
    assert opts["tls_on_connect_ports"] == "40002"   # implicit TLS on the second port only
    # Both certificates, keys in the same order as their certificates.
    assert opts["tls_certificate"] == f"{certs[0][0]} : {certs[1][0]}"
    assert opts["tls_privatekey"] == f"{certs[0][1]} : {certs[1][1]}"
    assert opts["spool_directory"] == str(tmp_path / "spool")
    # The two defaults that would refuse or park the bench's load, and nothing else relaxed.
    assert opts["smtp_accept_max"] == "100"
    assert opts["smtp_accept_queue_per_connection"] == "0"
    assert opts["smtp_connect_backlog"] == "100"
    assert "queue_only" not in opts and "remote_max_parallel" not in opts
    routers = _routers(conf)
    assert {r["domains"]: r["route_list"] for r in routers.values()} == {
        "plain.sink.bench": "* 127.0.0.1::40011", "tls.sink.bench": "* 127.0.0.1::40012"}
    assert all(r["driver"] == "manualroute" and r["transport"] == "remote_smtp" for r in routers.values())
    # Relaying only from loopback, only to the two domains.
    assert "hostlist relay_from_hosts = 127.0.0.0/8" in conf
    assert "domainlist relay_to_domains = plain.sink.bench : tls.sink.bench" in conf
    # TLS out is opportunistic: nothing makes it mandatory.
    assert "hosts_require_tls" not in conf


def test_exim_itself_parses_and_routes_it(tmp_path):
    exim = bench_peers.DEFAULT_ROOT / "usr/sbin/exim4"
    if not bench_peers.available("exim"):
        # scripts/test.sh unpacks both: under CI their absence is a failure.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"Exim not unpacked at {exim} (scripts/bench-peers-setup.sh)")
    (tmp_path / "spool").mkdir()
    (tmp_path / "log").mkdir()
    conf = tmp_path / "exim.conf"
    conf.write_text(_exim_conf(tmp_path, _certs(tmp_path)))
    r = subprocess.run([str(exim), "-C", str(conf), "-bV"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    for domain, port in (("plain.sink.bench", 40011), ("tls.sink.bench", 40012)):
        r = subprocess.run([str(exim), "-C", str(conf), "-bt", f"user@{domain}"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "transport = remote_smtp" in r.stdout, r.stdout
        assert f"host 127.0.0.1 [127.0.0.1] port={port}" in r.stdout, r.stdout
    r = subprocess.run([str(exim), "-C", str(conf), "-bt", "user@elsewhere.example"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0, r.stdout   # no route: nothing else is relayed


def test_opensmtpd_config_relays_the_two_domains_to_their_sink_ports(tmp_path):
    (cert, key), _ = _certs(tmp_path)
    conf = bench_peers.opensmtpd_config(port=40001, port_tls=40002, sink_plain=40011, sink_tls=40012,
                                        cert=cert, key=key)
    lines = [ln for ln in conf.splitlines() if ln and not ln.startswith("#")]
    assert "listen on 127.0.0.1 port 40001 tls pki bench hostname opensmtpd.bench" in lines
    assert "listen on 127.0.0.1 port 40002 smtps pki bench hostname opensmtpd.bench" in lines
    actions = dict(re.findall(r'^action "(\w+)" relay host smtp://127\.0\.0\.1:(\d+) ', conf, re.M))
    matches = dict(re.findall(r'^match from src <trusted> for domain "([\w.]+)" action "(\w+)"$', conf, re.M))
    assert {d: int(actions[a]) for d, a in matches.items()} == {"plain.sink.bench": 40011, "tls.sink.bench": 40012}
    assert "table trusted { 127.0.0.0/8 }" in lines
    # smtp:// is opportunistic STARTTLS; `tls` on the action would make it mandatory.
    assert not any(re.search(r"\btls\b", ln) for ln in lines if ln.startswith("action"))
    assert "smtp limit max-mails 1000" in lines
    assert f'pki bench cert "{cert}"' in lines and f'pki bench key "{key}"' in lines


def test_opensmtpd_itself_parses_it(tmp_path):
    smtpd = bench_peers.DEFAULT_ROOT / "usr/sbin/smtpd"
    if not bench_peers.available("opensmtpd"):
        # scripts/test.sh unpacks both: under CI their absence is a failure.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"OpenSMTPD not unpacked at {smtpd} (scripts/bench-peers-setup.sh)")
    (cert, key), _ = _certs(tmp_path)
    key.chmod(0o600)
    conf = tmp_path / "smtpd.conf"
    conf.write_text(bench_peers.opensmtpd_config(port=40001, port_tls=40002, sink_plain=40011, sink_tls=40012,
                                                 cert=cert, key=key))
    r = subprocess.run([str(smtpd), "-n", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "configuration OK" in (r.stdout + r.stderr), r.stdout + r.stderr


def test_cases_an_mta_cannot_take_are_named_with_the_reason():
    """OpenSMTPD is left out of TLS-inbound cases and of cases with more clients
    connecting at once than its compiled-in listen backlog lets in; the reason is
    what the report prints under its "—" cells. Postfix and Exim take every case."""
    smtpd = bench_peers.OpenSMTPD.__new__(bench_peers.OpenSMTPD)
    exim = bench_peers.Exim.__new__(bench_peers.Exim)
    plain_c10 = ("plain-4k-c10", "plain", "plain", "4k", 10, 40, [])
    plain_c50 = ("plain-4k-c50", "plain", "plain", "4k", 50, 12, [])
    tls_c10 = ("tls-4k-c10", "starttls", "tls", "4k", 10, 40, [])
    assert bench_peers.unsupported(smtpd, plain_c10) is None
    why = bench_peers.unsupported(smtpd, plain_c50)
    assert why and "more than 10 connections" in why and "backlog of 5" in why, why
    why = bench_peers.unsupported(smtpd, tls_c10)
    assert why and "TLS inbound" in why and "OpenSSL 3" in why, why
    for case in (plain_c10, plain_c50, tls_c10):
        assert bench_peers.unsupported(exim, case) is None
    report = bench_peers.report_side_by_side(
        {"plain-4k-c10": {}}, [plain_c10], ["postern", "opensmtpd"],
        {"opensmtpd": [bench_peers.unsupported(smtpd, plain_c50), bench_peers.unsupported(smtpd, tls_c10)]})
    notes = [ln for ln in report.splitlines() if ln.startswith("- OpenSMTPD: ")]
    assert len(notes) == 2, report
