#!/usr/bin/env python3
"""Relay bench with the published policy sources on vs off (issue 11).

Two Posterns side by side in one run, both delivering by MX lookup to the
same STARTTLS sink: one with `tls.outbound.mta_sts` and `tls.outbound.dane`
on, one with both off. The sink's domain publishes everything the sources
read, from servers of its own on loopback:

* a DNS server (tests/fixtures_dns.py) with the MX, the MX host's address
  and a `3 1 1` TLSA record for the sink's certificate, all marked
  authenticated (the AD bit is set only when a query asks, as a validating
  resolver does; the gateways run `dnssec = "trust-ad"`), and the
  `_mta-sts` TXT record;
* an HTTPS policy host (`enforce`, mx = the MX host) with a certificate
  from a bench CA that the gateways trust.

Reported per round: delivered msg/s, p99 DATA→250 and CPU per message of
each gateway, and the DNS queries each made during the round (a reused
connection should make none per message). One message of the "on" gateway
is traced to show the requirement came from DANE.

    python3 scripts/bench_policy.py --postern-bin target/release/postern \\
        --bench-bin target/release/postern-bench [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

import bench  # noqa: E402
from fixtures_dns import DnsServer  # noqa: E402
from fixtures_postfix import CertAuthority  # noqa: E402

DOMAIN = "mx.sink.bench"
MX_HOST = "mxhost.sink.bench"
POLICY = f"version: STSv1\nmode: enforce\nmx: {MX_HOST}\nmax_age: 86400\n"


def spki_sha256(cert: Path) -> bytes:
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).digest()


class PolicyHost:
    """The domain's MTA-STS policy over HTTPS on loopback."""

    def __init__(self, cert: Path, key: Path):
        body = POLICY.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200 if self.path == "/.well-known/mta-sts.txt" else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def gateway(args, root: Path, sink, cert, key, ca: CertAuthority, dns: DnsServer, https_port: int,
            name: str, sources_on: bool) -> bench.Postern:
    mta = bench.Postern(Path(args.postern_bin), root / name, sink, cert, key, name=name)
    text = mta.config.read_text().replace(f"mx_port = {sink.plain}",
                                          f"mx_port = {sink.tls}\nhttps_port = {https_port}")
    text += f'[dns]\nnameservers = ["{dns.nameserver}"]\ndnssec = "trust-ad"\n'
    mta.config.write_text(text)
    mta.cli("cert", "import", "--name", "bench-ca", "--cert", str(ca.cert))
    mta.cli("settings", "set", "tls.outbound.trusted_ca", "system, bench-ca")
    for key_name in ("tls.outbound.mta_sts", "tls.outbound.dane"):
        mta.cli("settings", "set", key_name, "true" if sources_on else "false")
    return mta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postern-bin", required=True)
    ap.add_argument("--bench-bin", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--messages", type=int, default=150, help="per connection")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="postern-bench-policy."))
    root.chmod(0o755)  # the gateways drop to their own user
    sink = bench.Sink(Path(args.bench_bin), root)
    ca = CertAuthority(root / "ca", name="Bench Policy CA")
    pair = ca.issue("postern.bench", dns=["postern.bench"], directory=root / "gw-cert")
    cert, key = pair.cert, pair.key
    policy_cert = ca.issue(f"mta-sts.{DOMAIN}", dns=[f"mta-sts.{DOMAIN}"], directory=root / "policy-cert")
    policy = PolicyHost(policy_cert.cert, policy_cert.key)
    tlsa = (3, 1, 1, spki_sha256(root / "sink.pem"))
    dns = DnsServer({
        DOMAIN: {"MX": [(10, MX_HOST)], "authenticated": True},
        MX_HOST: {"A": "127.0.0.1", "authenticated": True},
        f"_{sink.tls}._tcp.{MX_HOST}": {"TLSA": [tlsa], "authenticated": True},
        f"_mta-sts.{DOMAIN}": {"TXT": ["v=STSv1; id=bench1"]},
        f"mta-sts.{DOMAIN}": {"A": "127.0.0.1"},
    }, ttl=300).start()  # a real zone's TTLs: the fixture's default 0 defeats every cache
    mtas = [gateway(args, root, sink, cert, key, ca, dns, policy.port, "sources-on", True),
            gateway(args, root, sink, cert, key, ca, dns, policy.port, "sources-off", False)]
    case = ("policy-4k", "plain", "mx", "4k", args.connections, args.messages, [])
    results: dict[str, list[dict]] = {m.name: [] for m in mtas}
    try:
        for mta in mtas:
            mta.start()
        for n in range(args.rounds):
            for mta in (mtas if n % 2 == 0 else list(reversed(mtas))):
                before = len(dns.queries)
                r = bench.load(Path(args.bench_bin), mta, sink, case, f"policy-{n}-{mta.name}", 120)
                r["dns_queries"] = len(dns.queries) - before
                results[mta.name].append(r)
                bench.log(f"round {n + 1}/{args.rounds} {mta.name}: {json.dumps(summary(r))}")
        trace = trace_one(mtas[0])
    finally:
        for mta in mtas:
            mta.stop()
        dns.stop()
        policy.stop()
        sink.stop()
    print(report(results, trace, args))
    return 0


def summary(r: dict) -> dict:
    def get(*path):
        v = r
        for p in path:
            v = v.get(p, {}) if isinstance(v, dict) else {}
        return v if not isinstance(v, dict) else None
    return {
        "delivered_per_s": get("delivery", "delivered_per_sec"),
        "p99_ms": get("latency_ms", "p99"),
        "cpu_s_per_1k": get("mta", "cpu_secs_per_1000"),
        "exactly_once": get("delivery", "exactly_once"),
        "dns_queries": r.get("dns_queries"),
    }


def trace_one(mta: bench.Postern) -> str:
    log = mta.root / "data" / "mail.log"
    lines = log.read_text().splitlines() if log.exists() else []
    delivered = [line for line in lines if " delivered id=" in line]
    if not delivered:
        return "no delivered line in the mail log"
    qid = delivered[-1].split(" delivered id=")[1].split()[0]
    out = subprocess.run([mta.bin, "trace", qid], env=mta.env, capture_output=True, text=True)
    return "\n".join(line for line in out.stdout.splitlines() if "requirement" in line)[:600]


def report(results: dict[str, list[dict]], trace: str, args) -> str:
    rows = []
    med = {}
    for name, rs in results.items():
        s = [summary(r) for r in rs]
        m = {k: statistics.median([x[k] for x in s if isinstance(x[k], (int, float))] or [0])
             for k in ("delivered_per_s", "p99_ms", "cpu_s_per_1k", "dns_queries")}
        m["exactly_once"] = all(x["exactly_once"] for x in s)
        med[name] = m
        rows.append(f"| {name} | {m['delivered_per_s']:,.0f} | {m['p99_ms']:.1f} | "
                    f"{m['cpu_s_per_1k']:.2f} | {m['dns_queries']:.0f} | {m['exactly_once']} |")
    ratio = med["sources-on"]["delivered_per_s"] / max(med["sources-off"]["delivered_per_s"], 1e-9)
    return "\n".join([
        f"rounds: {args.rounds}, {args.connections} connections x {args.messages} messages, 4 KiB, "
        f"load average now {bench.loadavg()}",
        "",
        "| gateway | delivered msg/s | p99 DATA→250 ms | CPU s per 1,000 msgs | DNS queries per round | exactly once |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"delivered msg/s with MTA-STS and DANE on / off: {ratio:.2f}",
        "",
        "a traced message of sources-on:",
        trace,
    ])


if __name__ == "__main__":
    sys.exit(main())
