"""The Default Cert: RSA 4096, sha256WithRSAEncryption, self-signed, CN and
SAN = hostname; generated once on first use of the store, the same after
restarts, and the one served on STARTTLS and implicit TLS to clients that
offer only RSA signature algorithms. Its companion, the Default Cert ECDSA
(P-256), goes to clients that can verify ECDSA. Only TLS 1.2 and 1.3 are
spoken.
"""

import re
import ssl
import subprocess
import time

import pytest

from postern_testlib import (HOSTNAME, RSA_SIGALGS, SmtpConn, cert_text, fingerprint, free_port,
                             insecure_context, openssl, pem_certs, s_client, s_client_protocol)


def export_default(gw, name: str = "Default Cert") -> str:
    r = gw.cli_ok("cert", "export", name)
    certs = pem_certs(r.stdout)
    assert certs, f"no PEM certificate in `cert export`:\n{r}"
    assert "PRIVATE KEY" not in r.stdout, "cert export must not print the private key"
    return certs[0]


def served_cert(port: int, starttls: bool, rsa_only: bool = True) -> tuple[str, str]:
    """(leaf PEM, protocol) as seen by openssl s_client, by default one that
    offers only RSA signature algorithms."""
    rc, out = s_client(port, *(RSA_SIGALGS if rsa_only else ()), starttls=starttls)
    certs = pem_certs(out)
    assert certs, f"s_client saw no certificate (rc={rc}):\n{out}"
    return certs[0], s_client_protocol(out)


def test_default_cert_properties(make_gateway):
    # Fresh store: the CLI must create it (with the Default Cert) on first use.
    gw = make_gateway(fresh_store=True, start=False)
    listing = gw.cli_ok("cert", "list")
    assert "Default Cert" in listing.stdout, listing

    pem = export_default(gw)
    text = cert_text(pem)
    assert "Public-Key: (4096 bit)" in text, text
    assert "rsaEncryption" in text, text
    assert re.search(r"Signature Algorithm: sha256WithRSAEncryption", text), text
    issuer = re.search(r"^\s*Issuer: (.*)$", text, re.M).group(1).strip()
    subject = re.search(r"^\s*Subject: (.*)$", text, re.M).group(1).strip()
    assert issuer == subject, f"not self-signed: issuer {issuer!r} subject {subject!r}"
    assert re.search(r"CN\s*=\s*mx\.postern\.test\b", subject), subject
    assert "DNS:mx.postern.test" in text, text
    # The signature really is its own (self-signed, verifies against itself).
    (gw.root / "dc.pem").write_text(pem)
    v = openssl("verify", "-CAfile", str(gw.root / "dc.pem"), str(gw.root / "dc.pem"))
    assert v.returncode == 0, (v.stdout + v.stderr).decode()

    show = gw.cli_ok("cert", "show", "Default Cert").stdout
    assert "mx.postern.test" in show, show
    assert "4096" in show, show
    assert re.search(r"rsa", show, re.I), show
    assert re.search(r"sha256|sha-256", show, re.I), show
    flat = re.sub(r"[^0-9a-f]", "", show.lower())
    assert fingerprint(pem) in flat or fingerprint(pem, "sha1") in flat, \
        f"cert show does not print the fingerprint {fingerprint(pem)}:\n{show}"


def test_default_cert_stable_and_served(make_gateway):
    gw = make_gateway(fresh_store=True, start=False)
    before_run = fingerprint(export_default(gw))

    gw.start()
    assert fingerprint(export_default(gw)) == before_run, "Default Cert changed on first run"
    leaf, proto = served_cert(gw.smtp_port, starttls=True)
    assert fingerprint(leaf) == before_run, "STARTTLS serves a different certificate"
    assert proto in ("TLSv1.3", "TLSv1.2"), proto

    assert gw.stop() == 0
    gw.start()
    assert fingerprint(export_default(gw)) == before_run, "Default Cert regenerated after restart"
    leaf, _ = served_cert(gw.smtp_port, starttls=True)
    assert fingerprint(leaf) == before_run

    gw.kill9()
    gw.start()
    assert fingerprint(export_default(gw)) == before_run, "Default Cert regenerated after kill -9"


def test_implicit_tls_listener(gw):
    expected = fingerprint(export_default(gw))
    leaf, proto = served_cert(gw.tls_port, starttls=False)
    assert fingerprint(leaf) == expected
    assert proto == "TLSv1.3", f"implicit TLS did not negotiate TLSv1.3 but {proto}"

    # And SMTP is spoken inside it: banner, EHLO without STARTTLS.
    with SmtpConn(gw.tls_port, tls_context=insecure_context()) as c:
        assert c.sock.version() == "TLSv1.3"
        r = c.read_reply()
        assert r.code == 220 and HOSTNAME in r.first, r
        e = c.ehlo()
        assert e.code == 250, e
        assert "STARTTLS" not in e.text.upper(), f"STARTTLS advertised inside TLS: {e}"
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250


def _old_tls_control(tmp_path, flag: str) -> bool:
    """Can this openssl client speak `flag` at all? Checked against a local
    openssl s_server, so a refusal by the gateway means something."""
    key, crt = tmp_path / "ctl.key", tmp_path / "ctl.crt"
    r = openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(crt), "-subj", "/CN=control", "-days", "2")
    if r.returncode != 0:
        return False
    port = free_port()
    srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(crt),
                            "-key", str(key), flag, "-cipher", "DEFAULT@SECLEVEL=0"],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        out = ""
        while time.monotonic() < deadline:
            rc, out = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0", starttls=False, timeout=5)
            if s_client_protocol(out):
                return True
            time.sleep(0.2)
        return False
    finally:
        srv.kill()
        srv.wait(5)


@pytest.mark.parametrize("flag", ["-tls1_1", "-tls1"])
def test_old_tls_versions_refused(gw, tmp_path, flag):
    if not _old_tls_control(tmp_path, flag):
        pytest.skip(f"this openssl client cannot speak {flag} even to openssl s_server")
    for port, starttls in ((gw.smtp_port, True), (gw.tls_port, False)):
        rc, out = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0", starttls=starttls, timeout=10)
        proto = s_client_protocol(out)
        assert proto is None, f"gateway port {port} negotiated {proto} with {flag}:\n{out}"
        assert rc != 0, f"s_client {flag} succeeded against port {port}:\n{out}"
    # The gateway is still fine afterwards.
    rc, out = s_client(gw.smtp_port, starttls=True)
    assert s_client_protocol(out) in ("TLSv1.3", "TLSv1.2"), out


def test_tls12_still_spoken(gw):
    """TLS 1.2 and 1.3 only: 1.2 must work by default (min_version = 1.2)."""
    with SmtpConn(gw.tls_port, tls_context=insecure_context(
            ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)) as c:
        assert c.sock.version() == "TLSv1.2"
        assert c.read_reply().code == 220


def _served_when(port: int, want: str, rsa_only: bool, timeout: float = 5) -> str:
    """Poll until s_client is served `want` (settings reload within ~0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        leaf, _ = served_cert(port, starttls=True, rsa_only=rsa_only)
        if fingerprint(leaf) == want or time.monotonic() > deadline:
            return fingerprint(leaf)
        time.sleep(0.2)


def test_ecdsa_companion_served_to_ecdsa_clients_rsa_to_the_rest(make_gateway):
    gw = make_gateway(fresh_store=True, start=False)
    rsa = fingerprint(export_default(gw))
    ecdsa_pem = export_default(gw, "Default Cert ECDSA")
    text = cert_text(ecdsa_pem)
    assert "id-ecPublicKey" in text and ("prime256v1" in text or "P-256" in text), text
    assert re.search(r"CN\s*=\s*mx\.postern\.test\b", text) and "DNS:mx.postern.test" in text, text
    ecdsa = fingerprint(ecdsa_pem)
    listing = [l for l in gw.cli_ok("cert", "list").stdout.splitlines() if "Default Cert ECDSA" in l]
    assert listing and "automatic" in listing[0], listing
    gw.start()

    # openssl offers ECDSA first: it gets the companion, on both listeners.
    leaf, _ = served_cert(gw.smtp_port, starttls=True, rsa_only=False)
    assert fingerprint(leaf) == ecdsa, "an ECDSA-capable client did not get the Default Cert ECDSA"
    leaf, _ = served_cert(gw.tls_port, starttls=False, rsa_only=False)
    assert fingerprint(leaf) == ecdsa
    # Python's ssl (OpenSSL defaults) as well; TLS 1.2 too.
    with SmtpConn(gw.tls_port, tls_context=insecure_context(max_version=ssl.TLSVersion.TLSv1_2)) as c:
        der = c.sock.getpeercert(binary_form=True)
        assert ssl.DER_cert_to_PEM_cert(der) and fingerprint(ssl.DER_cert_to_PEM_cert(der)) == ecdsa
    # A client offering only RSA signature algorithms gets the RSA Default Cert.
    leaf, _ = served_cert(gw.smtp_port, starttls=True, rsa_only=True)
    assert fingerprint(leaf) == rsa

    # Deleting the companion turns it off; it is not generated again.
    gw.cli_ok("cert", "delete", "Default Cert ECDSA")
    assert _served_when(gw.smtp_port, rsa, rsa_only=False) == rsa
    gw.restart()
    assert "Default Cert ECDSA" not in gw.cli_ok("cert", "list").stdout
    leaf, _ = served_cert(gw.smtp_port, starttls=True, rsa_only=False)
    assert fingerprint(leaf) == rsa


def test_own_certificate_gets_no_self_signed_companion(gw, tmp_path):
    """An admin's own RSA certificate is served alone (a verifying client must
    not see the self-signed ECDSA one), until they name their own ECDSA
    certificate in tls.inbound.ecdsa_certificate."""
    own = {}
    for name, newkey in (("Own RSA", ["-newkey", "rsa:2048"]),
                         ("Own ECDSA", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        key, crt = tmp_path / f"{len(own)}.key", tmp_path / f"{len(own)}.crt"
        r = openssl("req", "-x509", *newkey, "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME}", "-days", "2")
        assert r.returncode == 0, r.stderr.decode()
        gw.cli_ok("cert", "import", "--name", name, "--cert", str(crt), "--key", str(key))
        own[name] = fingerprint(crt.read_text())

    gw.set("tls.inbound.certificate", "Own RSA")
    assert _served_when(gw.smtp_port, own["Own RSA"], rsa_only=False) == own["Own RSA"]

    r = gw.cli("settings", "set", "tls.inbound.ecdsa_certificate", "No Such Cert")
    assert r.rc != 0 and "tls.inbound.ecdsa_certificate" in r.output, r
    r = gw.cli("settings", "set", "tls.inbound.ecdsa_certificate", "Own RSA")
    assert r.rc != 0 and "tls.inbound.ecdsa_certificate" in r.output, r

    gw.set("tls.inbound.ecdsa_certificate", "Own ECDSA")
    assert _served_when(gw.smtp_port, own["Own ECDSA"], rsa_only=False) == own["Own ECDSA"]
    leaf, _ = served_cert(gw.smtp_port, starttls=True, rsa_only=True)
    assert fingerprint(leaf) == own["Own RSA"]
    # In use: cannot be deleted while named.
    r = gw.cli("cert", "delete", "Own ECDSA")
    assert r.rc != 0 and "tls.inbound.ecdsa_certificate" in r.output, r


def _tls13_session(gw, ctx: ssl.SSLContext, session=None) -> tuple[ssl.SSLSession, bool]:
    """One STARTTLS session; returns (session, whether it was resumed)."""
    with SmtpConn(gw.smtp_port) as c:
        assert c.banner().code == 220
        assert c.ehlo().code == 250
        assert c.cmd("STARTTLS").code == 220
        c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME, session=session)
        c.buf = b""
        assert c.ehlo().code == 250  # tickets arrive with (before) this reply
        return c.sock.session, c.sock.session_reused


def test_session_tickets_on_by_default_and_can_be_turned_off(gw):
    ctx = insecure_context(min_version=ssl.TLSVersion.TLSv1_3)
    session, resumed = _tls13_session(gw, ctx)
    assert not resumed and session.has_ticket, "no TLS 1.3 session ticket issued"
    _, resumed = _tls13_session(gw, ctx, session)
    assert resumed, "the ticket did not resume the session"

    gw.set("tls.inbound.session_tickets", "false")
    deadline = time.monotonic() + 5
    while True:
        session, _ = _tls13_session(gw, ctx)
        if not session.has_ticket:
            break
        assert time.monotonic() < deadline, "tickets still issued after session_tickets = false"
        time.sleep(0.2)
    r = gw.cli("settings", "set", "tls.inbound.session_tickets", "maybe")
    assert r.rc != 0 and "tls.inbound.session_tickets" in r.output, r


def test_store_from_an_earlier_version_gets_no_companion(make_gateway):
    """A store whose Default Cert exists from before the ECDSA companion (an
    upgrade) keeps presenting only what it presented: peers may have pinned
    it. Simulated by removing the companion and its one-time flag from a
    fresh store, which leaves it as an earlier version would have."""
    import sqlite3
    gw = make_gateway(fresh_store=True, start=False)
    rsa = fingerprint(export_default(gw))
    db = sqlite3.connect(gw.data_dir / "postern.db")
    with db:
        db.execute("DELETE FROM certificates WHERE name = 'Default Cert ECDSA'")
        gone = db.execute("DELETE FROM meta WHERE key = 'generated_certificate:Default Cert ECDSA'").rowcount
    db.close()
    assert gone == 1, "the companion's one-time flag was not where this test expects it"
    gw.start()
    assert "Default Cert ECDSA" not in gw.cli_ok("cert", "list").stdout
    leaf, _ = served_cert(gw.smtp_port, starttls=True, rsa_only=False)
    assert fingerprint(leaf) == rsa
