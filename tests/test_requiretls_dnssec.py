"""REQUIRETLS over MX routing (RFC 8689 §4.2.1, SPEC §10 item 5; issue 13):
the route is authenticated by DNSSEC or by an `enforce` MTA-STS policy,
never by a `[[domain]]` entry.

No domain here has a `[[domain]]` entry. The test DNS server plays a
validating resolver (AD only for names marked `authenticated`, and only
when the query asks for it) and the gateway runs `dns.dnssec = "trust-ad"`:

| domain          | MX host (A)                | DNS            | peer (REQUIRETLS after STARTTLS) | expected |
|-----------------|----------------------------|----------------|----------------------------------|----------|
| signed.test     | mx.signed.test (127.0.0.61) | authenticated  | test-CA certificate               | delivered with REQUIRETLS; bounced 5.7.30 once AD is withheld |
| selfsigned.test | mx.selfsigned.test (.62)   | authenticated  | self-signed                       | bounced (certificate) |
| dane.test       | mx.dane.test (.63)         | authenticated  | self-signed, TLSA 3 1 1 of its key | delivered (DANE-EE) |
| sts.test        | mx.sts.test (.64)          | unsigned       | test-CA certificate               | delivered: `enforce` MTA-STS policy served over HTTPS (127.0.0.65) |

Each peer is a real TLS server (Python `ssl`); the MTA-STS policy host is a
real HTTPS server with a test-CA certificate.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from delivery_support import check_dsn, delivery_gateway, mx_zone, wait_for, wait_outcome
from fixtures_postfix import free_port
from test_mta_sts import PolicyHost, policy
from test_requiretls import send_requiretls

IPS = {"signed": "127.0.0.61", "selfsigned": "127.0.0.62", "dane": "127.0.0.63", "sts": "127.0.0.64"}
POLICY_IP = "127.0.0.65"
ORIGIN_IP = "127.0.0.66"   # alice@origin.test's MX: where the bounces arrive
SIGNED = {"signed", "selfsigned", "dane"}


def spki_sha256(cert_pem_path) -> str:
    """SHA-256 of a certificate's SubjectPublicKeyInfo, computed by openssl."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert_pem_path), "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def ehlo_with_requiretls(session, arg):
    """REQUIRETLS only inside TLS, as RFC 8689 §2 asks."""
    exts = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
    exts.append("REQUIRETLS" if session.tls else "STARTTLS")
    lines = [f"mx greets {arg.strip()}"] + exts
    return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{l}\r\n"
                   for i, l in enumerate(lines)).rstrip("\r\n")


def signed_names(name: str, port: int, authenticated: bool) -> dict:
    return {f"{name}.test": {"MX": [(10, f"mx.{name}.test")], "authenticated": authenticated},
            f"mx.{name}.test": {"A": IPS[name], "authenticated": authenticated}}


@pytest.fixture
def world(dns_server, make_peer, make_gateway, tls_ca, tmp_path):
    port = free_port(*IPS.values(), ORIGIN_IP)
    https_port = free_port(POLICY_IP)
    peers = {}
    for name in IPS:
        cert = None if name in ("selfsigned", "dane") else tls_ca.issue(f"mx.{name}.test",
                                                                        directory=tmp_path / name)
        peers[name] = make_peer(IPS[name], port, starttls="ok", cert=cert, hostname=f"mx.{name}.test",
                                replies={"EHLO": ehlo_with_requiretls})
    origin = make_peer(ORIGIN_IP, port, starttls=None, hostname="mx.origin.test")
    policy_cert = tls_ca.issue("mta-sts.sts.test", directory=tmp_path / "policy")
    policy_host = PolicyHost(POLICY_IP, https_port, str(policy_cert.cert), str(policy_cert.key))
    policy_host.responses["mta-sts.sts.test"] = policy("enforce", "mx.sts.test")

    zone: dict = {}
    for name in IPS:
        zone.update(signed_names(name, port, name in SIGNED))
    zone[f"_{port}._tcp.mx.dane.test"] = {
        "TLSA": [f"3 1 1 {spki_sha256(peers['dane'].cert.cert)}"], "authenticated": True}
    zone["_mta-sts.sts.test"] = {"TXT": ["v=STSv1; id=20261203"]}
    zone["mta-sts.sts.test"] = {"A": POLICY_IP}
    zone.update(mx_zone("origin.test", ORIGIN_IP))
    dns_server.set_records(zone)

    def gateway(settings=None, name="gw"):
        gw = delivery_gateway(make_gateway, dns_server, port, name=name, ca=tls_ca,
                              trusted_ca="Test CA", settings=settings, start=False)
        text = gw.config.read_text()
        assert "[dns]\n" in text and "[delivery]\n" in text, text
        text = text.replace("[dns]\n", '[dns]\ndnssec = "trust-ad"\n', 1)
        text = text.replace("[delivery]\n", f"[delivery]\nhttps_port = {https_port}\n", 1)
        gw.config.write_text(text)
        return gw.start()

    yield {"gateway": gateway, "peers": peers, "port": port, "dns": dns_server,
           "policy": policy_host, "origin": origin}
    policy_host.stop()


def delivered_with_requiretls(world, gw, name: str, subject: str) -> dict:
    rcpt = f"bob@{name}.test"
    qid = send_requiretls(gw, rcpt, subject)
    outcome = wait_outcome(gw, qid, rcpt)
    assert outcome["event"] == "delivered", outcome["line"]
    assert outcome.get("relay") == f"mx.{name}.test[{IPS[name]}]:{world['port']}", outcome["line"]
    assert outcome.get("verified") == "true", outcome["line"]
    [got] = [m for m in world["peers"][name].wait_for_messages(1) if f"Subject: {subject}".encode() in m.data]
    assert got.tls, got
    assert "REQUIRETLS" in got.mail_params.upper().split(), got.mail_params
    return outcome


def bounced(world, gw, name: str, subject: str) -> str:
    """Bounced at once with 5.7.30, the DSN (headers only) at origin.test's
    MX; returns the mail log line."""
    rcpt = f"bob@{name}.test"
    qid = send_requiretls(gw, rcpt, subject)
    outcome = wait_outcome(gw, qid, rcpt)
    assert outcome["event"] == "bounced", outcome["line"]
    assert not [m for m in world["peers"][name].messages if f"Subject: {subject}".encode() in m.data], \
        f"{subject} was delivered"

    def dsn():
        return [m for m in world["origin"].messages
                if m.mail_from == "" and f"Subject: {subject}".encode() in m.data]
    [got] = wait_for(dsn, 20, f"the DSN for {subject!r} at origin.test's MX")
    raw = f"Return-Path: <{got.mail_from}>\r\n".encode() + got.data
    check_dsn(raw, failed=[rcpt], status_prefix="5.7.30", original_subject=subject)
    assert b"body of " not in got.data, "the DSN carries the body"
    return outcome["line"]


def test_authenticated_mx_delivers_and_withheld_ad_bounces(world):
    gw = world["gateway"]()
    delivered_with_requiretls(world, gw, "signed", "over a signed MX")
    # The status queries asked for AD, and got it.
    dns = world["dns"]
    assert [f for f in dns.flags if f[0] == "signed.test" and f[1] == "MX" and f[2]], list(dns.flags)

    # The same names, the AD bit now withheld (as for an unsigned zone).
    before = len(dns.flags)
    dns.update(signed_names("signed", world["port"], authenticated=False))
    line = bounced(world, gw, "signed", "over the same MX unsigned")
    assert "mx.signed.test is not an authenticated route" in line, line
    # The status query asked for AD and did not get it (the route's own
    # lookup does not ask).
    asked = [f for f in list(dns.flags)[before:] if f[0] == "signed.test" and f[1] == "MX" and f[2]]
    assert asked, list(dns.flags)[before:]


def test_authenticated_mx_counts_with_dane_switched_off(world):
    """The route's authentication is the MX lookup's, not DANE's: with
    `tls.outbound.dane = false` the signed MX still carries REQUIRETLS mail."""
    gw = world["gateway"]({"tls.outbound.dane": "false"})
    delivered_with_requiretls(world, gw, "signed", "signed MX without DANE")
    assert not world["dns"].queries_for(f"_{world['port']}._tcp.mx.signed.test", "TLSA")


def test_self_signed_peer_behind_an_authenticated_mx_bounces(world):
    gw = world["gateway"]()
    line = bounced(world, gw, "selfsigned", "to a self-signed peer")
    assert "certificate" in line, line


def test_dane_authenticated_certificate_delivers(world):
    """A self-signed certificate that DANE-EE authenticates: `verify` met by
    DANE, not PKIX (the test CA did not sign it)."""
    gw = world["gateway"]()
    delivered_with_requiretls(world, gw, "dane", "by DANE")
    assert world["dns"].queries_for(f"_{world['port']}._tcp.mx.dane.test", "TLSA")


def test_enforced_mta_sts_policy_authenticates_an_unsigned_mx(world):
    gw = world["gateway"]()
    delivered_with_requiretls(world, gw, "sts", "by MTA-STS enforce")
    assert world["policy"].fetches["mta-sts.sts.test"] >= 1
    # Without the policy the same unsigned MX is not a route for REQUIRETLS.
    world["dns"].set("_mta-sts.sts.test", "TXT", None)
    gw2 = world["gateway"](name="gw2")
    line = bounced(world, gw2, "sts", "unsigned MX without a policy")
    assert "mx.sts.test is not an authenticated route" in line, line
