"""DANE for outbound SMTP (RFC 7672, SPEC §10 item 2; issue 11 items 6, 7).

The test DNS server plays a validating resolver: names marked
`authenticated` get the AD bit, but only when the query asks for it (AD or
DO). With `[dns] dnssec = "trust-ad"` Postern asks, and the TLSA records
decide how each Postfix downstream's certificate is authenticated:

| domain           | MX host (A)             | peer certificate        | TLSA at _PORT._tcp.<mx>            | expected |
|------------------|-------------------------|-------------------------|------------------------------------|----------|
| ee.test          | mx.ee.test (127.0.0.3)  | self-signed             | 3 1 1 of its key                   | delivered, verified (DANE-EE) |
| ta.test          | mx.ta.test (.4)         | test CA (chain sent)    | 2 1 1 of the test CA               | delivered, verified (DANE-TA) |
| mismatch.test    | mx.mismatch.test (.5)   | self-signed             | 3 1 1 of another key               | deferred, never plaintext |
| unusable.test    | mx.unusable.test (.6)   | self-signed             | only usages 0 and 1                | `require`: TLS although the domain says `none` |
| servfail.test    | mx.servfail.test (.7)   | self-signed             | SERVFAIL                           | deferred |
| unsigned.test    | mx.unsigned.test (.8)   | self-signed             | mismatching, zone not authenticated | delivered as without DANE |
| optout.test      | mx.optout.test (.9)     | self-signed             | mismatching, `[[domain]] dane = false` | delivered as without DANE |

The test CA is not trusted for PKIX (`trusted_ca = ["system"]`), so
`verified=true` in the mail log can only come from DANE.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest

from delivery_support import (
    add_domains,
    delivery_gateway,
    submit,
    tlsrpt_preview,
    wait_outcome,
    wait_rcpt_state,
)
from fixtures_postfix import free_port, wait_until

IPS = {"ee": "127.0.0.3", "ta": "127.0.0.4", "mismatch": "127.0.0.5", "unusable": "127.0.0.6",
       "servfail": "127.0.0.7", "unsigned": "127.0.0.8", "optout": "127.0.0.9"}
OTHER_KEY = os.urandom(32).hex()


def spki_sha256(cert_pem_path) -> str:
    """SHA-256 of a certificate's SubjectPublicKeyInfo, the openssl way."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert_pem_path), "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def tlsa_owner(name: str, port: int) -> str:
    return f"_{port}._tcp.mx.{name}.test"


def dane_zone(port: int, peers: dict) -> dict:
    z: dict = {}
    for name, ip in IPS.items():
        signed = name != "unsigned"
        z[f"{name}.test"] = {"MX": [(10, f"mx.{name}.test")], "authenticated": signed}
        z[f"mx.{name}.test"] = {"A": ip, "authenticated": signed}
    tlsa = {
        "ee": [f"3 1 1 {spki_sha256(peers['ee'].cert_file)}"],
        "ta": [f"2 1 1 {spki_sha256(peers['ta'].ca_file)}"],
        "mismatch": [f"3 1 1 {OTHER_KEY}"],
        "unusable": [f"1 1 1 {OTHER_KEY}", f"0 0 1 {OTHER_KEY}"],
        "unsigned": [f"3 1 1 {OTHER_KEY}"],
        "optout": [f"3 1 1 {OTHER_KEY}"],
    }
    for name, records in tlsa.items():
        z[tlsa_owner(name, port)] = {"TLSA": records, "authenticated": name != "unsigned"}
    z[tlsa_owner("servfail", port)] = {"rcode": "SERVFAIL"}
    return z


@pytest.fixture
def peers(dns_server, make_downstream, tls_ca):
    port = free_port(*IPS.values())
    made = {}
    for name, ip in IPS.items():
        tls = "ca" if name == "ta" else "selfsigned"
        made[name] = make_downstream(name, ip, port, domains=[f"{name}.test"], tls=tls,
                                     hostname=f"mx.{name}.test", start=False)
    # DANE-TA needs the anchor in the chain the server sends (RFC 7672 §3.1.2).
    ta = made["ta"]
    ta.extra_main["smtpd_tls_chain_files"] = f"{ta.key_file}, {ta.cert_file}, {ta.ca_file}"
    for pf in made.values():
        pf.start()
    dns_server.set_records(dane_zone(port, made))
    return {"port": port, "postfix": made}


def dane_gateway(make_gateway, dns_server, port, dnssec="trust-ad", **kw):
    gw = delivery_gateway(make_gateway, dns_server, port, trusted_ca="system", start=False, **kw)
    if dnssec is not None:
        text = gw.config.read_text()
        assert "[dns]\n" in text
        gw.config.write_text(text.replace("[dns]\n", f'[dns]\ndnssec = "{dnssec}"\n', 1))
    add_domains(gw, [{"name": "unusable.test", "tls": "none"}, {"name": "optout.test", "dane": False}])
    gw.start()
    return gw


def arrived(pf, subject: str) -> list[bytes]:
    return [m for m in pf.messages() if f"Subject: {subject}".encode() in m]


def wait_arrived(pf, subject: str, n: int, timeout: float = 15) -> list[bytes]:
    """The messages with this subject once n are in the maildir (bounded).
    Postfix answers 250 when it has queued a message and writes the maildir
    file a moment later, so Postern's "delivered" can come first."""
    try:
        wait_until(lambda: len(arrived(pf, subject)) >= n, timeout,
                   what=f"{n} message(s) '{subject}' in {pf.name}'s maildir")
    except TimeoutError:
        pass
    return arrived(pf, subject)


def test_dane_with_trust_ad(peers, dns_server, make_gateway):
    port = peers["port"]
    gw = dane_gateway(make_gateway, dns_server, port)
    sent = {name: submit(gw, f"bob@{name}.test", f"dane {name}") for name in IPS}

    problems = []

    def check(name, fn):
        try:
            fn()
        except AssertionError as e:
            problems.append(f"{name}: {e}")

    def delivered(name, verified: str, tls: bool = True):
        def run():
            entry = wait_outcome(gw, sent[name], f"bob@{name}.test")
            assert entry["event"] == "delivered", entry["line"]
            assert entry.get("relay") == f"mx.{name}.test[{IPS[name]}]:{port}", entry["line"]
            assert bool(entry.get("tls")) == tls, entry["line"]
            assert entry.get("verified") == verified, entry["line"]
            [raw] = peers["postfix"][name].wait_for_messages(1, timeout=15)
            assert b"using TLSv1." in raw, raw[:600]
        return run

    def deferred(name, reason_rx: str):
        def run():
            item = wait_rcpt_state(gw, sent[name], f"bob@{name}.test", "deferred")
            reason = item.get("last_error") or ""
            assert re.search(reason_rx, reason), reason
            assert reason.startswith(f"mx.{name}.test"), reason
            # Never plaintext, never another way: nothing arrived.
            assert arrived(peers["postfix"][name], f"dane {name}") == []
        return run

    check("ee", delivered("ee", "true"))
    check("ta", delivered("ta", "true"))
    check("mismatch", deferred("mismatch", r"DANE: certificate verification failed: no TLSA record matches"))
    # Unusable records: TLS required (the domain's own `none` is raised),
    # the self-signed certificate is accepted.
    check("unusable", delivered("unusable", "false"))
    check("servfail", deferred("servfail", rf"DANE: TLSA lookup failed: {tlsa_owner('servfail', port)}: SERVFAIL"))
    check("unsigned", delivered("unsigned", "false"))
    check("optout", delivered("optout", "false"))
    assert not problems, "\n".join(problems) + "\n-- mail.log --\n" + gw.log()[-4000:]

    # The day's TLS-RPT report (RFC 8460 §4.3) names the DANE policy: type
    # tlsa, the records that applied, and a mismatch as tlsa-invalid.
    ee_record = f"3 1 1 {spki_sha256(peers['postfix']['ee'].cert_file)}"
    [ee] = tlsrpt_preview(gw, "ee.test", 1)["policies"]
    assert ee["policy"] == {"policy-type": "tlsa", "policy-domain": "ee.test",
                            "policy-string": [ee_record], "mx-host": "mx.ee.test"}, ee
    assert ee["summary"]["total-successful-session-count"] == 1, ee
    [mismatch] = tlsrpt_preview(gw, "mismatch.test", 1)["policies"]
    assert mismatch["policy"]["policy-type"] == "tlsa", mismatch
    assert mismatch["policy"]["policy-string"] == [f"3 1 1 {OTHER_KEY}"], mismatch
    [detail] = mismatch["failure-details"]
    assert (detail["result-type"], detail["receiving-mx-hostname"]) == (
        "tlsa-invalid", "mx.mismatch.test"), detail
    # Records none of which is usable still are the domain's DANE policy
    # (TLS without authentication, RFC 7672 §2.2): the report lists them.
    [unusable] = tlsrpt_preview(gw, "unusable.test", 1)["policies"]
    assert unusable["policy"]["policy-type"] == "tlsa", unusable
    assert sorted(unusable["policy"]["policy-string"]) == sorted([f"1 1 1 {OTHER_KEY}", f"0 0 1 {OTHER_KEY}"]), unusable
    assert unusable["summary"]["total-successful-session-count"] == 1, unusable
    # A TLSA lookup that failed refused the host unconnected: still one
    # failed session of the tlsa policy, not a silence in the report.
    [servfail] = tlsrpt_preview(gw, "servfail.test", 1)["policies"]
    assert servfail["policy"]["policy-type"] == "tlsa", servfail
    [detail] = servfail["failure-details"]
    assert (detail["result-type"], detail["receiving-mx-hostname"]) == (
        "dnssec-invalid", "mx.servfail.test"), detail
    assert "receiving-ip" not in detail and "sending-mta-ip" not in detail, detail

    # trust-ad asks for AD in every DNSSEC status query.
    tlsa_queries = [f for f in dns_server.flags if f[1] == "TLSA"]
    assert tlsa_queries and all(asked for _, _, asked in tlsa_queries), tlsa_queries
    # No TLSA lookup where MX and addresses are not authenticated.
    assert not dns_server.queries_for(tlsa_owner("unsigned", port), "TLSA")


def test_probe_shows_tlsa_and_requirement(peers, dns_server, make_gateway):
    port = peers["port"]
    gw = dane_gateway(make_gateway, dns_server, port)
    ee = spki_sha256(peers["postfix"]["ee"].cert_file)
    out = gw.cli_ok("probe", "ee.test").stdout
    assert f"TLSA {tlsa_owner('ee', port)}: authenticated (DNSSEC)" in out, out
    assert f"3 1 1 {ee}" in out, out
    assert "requirement:     DANE (set by dane)" in out, out
    assert "deliver over verified TLS" in out, out
    out = gw.cli_ok("probe", "mismatch.test").stdout
    assert "requirement:     DANE (set by dane)" in out, out
    assert "no TLSA record matches" in out, out
    out = gw.cli_ok("probe", "unsigned.test").stdout
    assert f"TLSA {tlsa_owner('unsigned', port)}: unauthenticated" in out, out
    assert "requirement:     global opportunistic" in out, out
    out = gw.cli_ok("probe", "servfail.test").stdout
    assert "lookup failed" in out and "SERVFAIL" in out, out


def test_validate_against_an_unsigned_zone_delivers_as_today(peers, dns_server, make_gateway):
    """The default `validate`: the test server serves no DNSSEC at all (no
    root DNSKEY), so even names it marks authenticated are unauthenticated:
    a mismatching TLSA record changes nothing, and that is logged once."""
    port = peers["port"]
    gw = dane_gateway(make_gateway, dns_server, port, dnssec=None)
    qids = [submit(gw, "bob@mismatch.test", f"validate {i}") for i in range(2)]
    for qid in qids:
        entry = wait_outcome(gw, qid, "bob@mismatch.test")
        assert entry["event"] == "delivered", entry["line"]
        assert entry.get("verified") == "false", entry["line"]
    assert len(wait_arrived(peers["postfix"]["mismatch"], "validate", 2)) == 2
    warnings = [line for line in gw.stderr().splitlines() if "do not serve DNSSEC" in line]
    assert len(warnings) == 1, gw.stderr()[-3000:]


def test_dnssec_off_ignores_tlsa(peers, dns_server, make_gateway):
    gw = dane_gateway(make_gateway, dns_server, peers["port"], dnssec="off")
    qid = submit(gw, "bob@mismatch.test", "dnssec off")
    entry = wait_outcome(gw, qid, "bob@mismatch.test")
    assert entry["event"] == "delivered", entry["line"]
    assert not dns_server.queries_for(tlsa_owner("mismatch", peers["port"]), "TLSA")


def openssl_spki_sha256_of_pem(pem: str, tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.pem"
    path.write_text(pem)
    return spki_sha256(path)


def test_cert_tlsa_prints_the_records(make_gateway, tls_ca, tmp_path):
    gw = make_gateway(start=False)
    out = gw.cli_ok("cert", "tlsa", "Default Cert").stdout
    exported = gw.cli_ok("cert", "export", "Default Cert").stdout
    leaf = openssl_spki_sha256_of_pem(exported, tmp_path, "default")
    assert out == f"_25._tcp.{gw.hostname}. IN TLSA 3 1 1 {leaf}\n", out

    # An entry with its issuer in the chain: 3 1 1 for the leaf, 2 1 1 for the CA.
    pair = tls_ca.issue("mx.gw.test", directory=tmp_path)
    chain = tmp_path / "chain.pem"
    chain.write_text(pair.cert.read_text() + tls_ca.pem)
    gw.cli_ok("cert", "import", "--name", "MX", "--cert", str(chain), "--key", str(pair.key))
    out = gw.cli_ok("cert", "tlsa", "MX", "--port", "2525", "--host", "mx.gw.test").stdout
    assert out.splitlines() == [
        f"_2525._tcp.mx.gw.test. IN TLSA 3 1 1 {spki_sha256(pair.cert)}",
        f"_2525._tcp.mx.gw.test. IN TLSA 2 1 1 {spki_sha256(tls_ca.cert)}",
    ], out
    r = gw.cli("cert", "tlsa", "No Such Entry")
    assert r.rc != 0 and 'no certificate entry named "No Such Entry"' in r.stderr, r


def test_tlsa_answers_are_cached_for_their_ttl(peers, dns_server, make_gateway):
    """With a TTL, the DNSSEC status and TLSA answers are asked once: later
    messages (on a reused connection or a new one) make no DNS query."""
    dns_server.ttl = 300
    gw = dane_gateway(make_gateway, dns_server, peers["port"])
    for i in range(3):
        qid = submit(gw, "bob@ee.test", f"cached {i}")
        entry = wait_outcome(gw, qid, "bob@ee.test")
        assert entry["event"] == "delivered" and entry.get("verified") == "true", entry["line"]
    assert len(wait_arrived(peers["postfix"]["ee"], "cached", 3)) == 3
    owner = tlsa_owner("ee", peers["port"])
    assert len(dns_server.queries_for(owner, "TLSA")) == 1, dns_server.queries_for(owner)
    ad_mx = [f for f in dns_server.flags if f[0] == "ee.test" and f[1] == "MX" and f[2]]
    assert len(ad_mx) == 1, list(dns_server.flags)


def test_trust_ad_retries_truncated_answers_over_tcp(peers, dns_server, make_gateway):
    """A truncated UDP answer (TC) is asked again over TCP, AD and all."""
    dns_server.truncate_udp = True
    gw = dane_gateway(make_gateway, dns_server, peers["port"])
    qid = submit(gw, "bob@ee.test", "over tcp")
    entry = wait_outcome(gw, qid, "bob@ee.test")
    assert entry["event"] == "delivered" and entry.get("verified") == "true", entry["line"]
    owner = tlsa_owner("ee", peers["port"])
    protos = [q[2] for q in dns_server.queries_for(owner, "TLSA")]
    assert protos[:2] == ["udp", "tcp"], protos
