"""Inbound client certificates: a trusted agent with a certificate from an
imported CA may submit; a client without a certificate, or with one from
another CA, may not. The PKI is made with the openssl CLI.
"""

from __future__ import annotations

import re
import ssl
import uuid
from pathlib import Path

import pytest

from postern_testlib import SmtpConn, insecure_context, openssl, queued_id

TRUSTED_CN = "trusted-agent.postern.test"
UNTRUSTED_CN = "stranger.postern.test"


def _ok(p):
    assert p.returncode == 0, (p.stdout + p.stderr).decode()


def _make_ca(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.pem"
    _ok(openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(crt), "-subj", f"/O=Postern Tests/CN={cn}",
                "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"))
    return crt, key


def _make_client(d: Path, name: str, cn: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    _ok(openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/O=Postern Tests/CN={cn}"))
    ext.write_text("basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n"
                   f"subjectAltName=DNS:{cn}\n")
    _ok(openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                "-CAcreateserial", "-out", str(crt), "-days", "30", "-extfile", str(ext)))
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "ca", "Postern Test CA")
    other_ca = _make_ca(d, "other-ca", "Some Other CA")
    client = _make_client(d, "client", TRUSTED_CN, ca)
    stranger = _make_client(d, "stranger", UNTRUSTED_CN, other_ca)
    # Sanity: the chains are what we think they are.
    _ok(openssl("verify", "-CAfile", str(ca[0]), str(client[0])))
    assert openssl("verify", "-CAfile", str(ca[0]), str(stranger[0])).returncode != 0
    return {"ca": ca, "other_ca": other_ca, "client": client, "stranger": stranger}


def client_context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = insecure_context()
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def attempt(port: int, ctx: ssl.SSLContext) -> tuple[str, str]:
    """Try STARTTLS + one message. ("queued", id) or ("refused", why)."""
    c = SmtpConn(port, timeout=5)
    try:
        assert c.read_reply().code == 220
        assert c.ehlo().code == 250
        r = c.cmd("STARTTLS")
        assert r.code == 220, r
        try:
            c.starttls(ctx)
            c.ehlo()
            r = c.cmd("MAIL FROM:<agent@corp.test>")
        except (ssl.SSLError, OSError, ConnectionError) as e:
            return "refused", f"TLS/connection error: {e!r}"
        except Exception as e:  # Closed, malformed reply
            return "refused", f"session ended: {e!r}"
        if r.code != 250:
            assert r.code == 530 and r.lines[0].startswith("5.7.1"), \
                f"refusal after TLS must be 530 5.7.1, got {r}"
            return "refused", r.first
        try:
            if c.cmd("RCPT TO:<a@b.test>").code != 250:
                return "refused", "RCPT"
            if c.cmd("DATA").code != 354:
                return "refused", "DATA"
            c.send(f"Subject: agent {uuid.uuid4().hex}\r\n\r\nhello\r\n.\r\n".encode())
            r = c.read_reply(15)
        except Exception as e:
            return "refused", f"session ended: {e!r}"
        if r.code == 250:
            return "queued", queued_id(r.first)
        return "refused", r.first
    finally:
        c.close()


def configure_require(gw, pki):
    gw.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(pki["ca"][0]))
    gw.set("tls.inbound.mode", "require")
    gw.set("tls.inbound.trusted_client_ca", "Test CA")
    gw.set("tls.inbound.client_certificate", "require")


def test_client_certificate_required(make_gateway, pki):
    gw = make_gateway(start=False)
    configure_require(gw, pki)
    assert "Test CA" in gw.cli_ok("cert", "list").stdout
    gw.start()

    outcome, detail = attempt(gw.smtp_port, client_context(pki["client"]))
    assert outcome == "queued", f"trusted client cert refused: {detail}"
    qid = detail
    assert gw.queue_ids() == [qid]
    assert TRUSTED_CN in gw.log(), f"mail.log does not name the client certificate:\n{gw.log()}"

    outcome, detail = attempt(gw.smtp_port, client_context(None))
    assert outcome == "refused", f"client without certificate got its mail queued as {detail}"

    outcome, detail = attempt(gw.smtp_port, client_context(pki["stranger"]))
    assert outcome == "refused", f"client with untrusted certificate got its mail queued as {detail}"

    assert gw.queue_ids() == [qid], "a refused client's message was queued"
    # Still serving trusted clients after the refusals.
    assert attempt(gw.smtp_port, client_context(pki["client"]))[0] == "queued"


def test_client_certificate_required_implicit_tls(make_gateway, pki):
    gw = make_gateway(start=False)
    configure_require(gw, pki)
    gw.start()

    def implicit(ctx):
        try:
            with SmtpConn(gw.tls_port, tls_context=ctx) as c:
                assert c.read_reply().code == 220
                c.ehlo()
                r = c.cmd("MAIL FROM:<agent@corp.test>")
                if r.code == 250:
                    return "accepted"
                assert r.code == 530 and r.lines[0].startswith("5.7.1"), r
                return "refused"
        except (ssl.SSLError, OSError, ConnectionError) as e:
            return f"refused: {e!r}"
        except Exception as e:
            return f"refused: {e!r}"

    assert implicit(client_context(pki["client"])) == "accepted"
    assert implicit(client_context(None)).startswith("refused")
    assert implicit(client_context(pki["stranger"])).startswith("refused")


def test_client_certificate_request_mode(make_gateway, pki):
    """`request`: a certificate is asked for, never required."""
    gw = make_gateway(start=False)
    gw.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(pki["ca"][0]))
    gw.set("tls.inbound.trusted_client_ca", '["Test CA"]')  # the JSON array form
    assert re.search(r'trusted_client_ca\s*=\s*\[\s*"Test CA"\s*\]',
                     gw.cli_ok("settings", "export", "--format", "toml").stdout)
    gw.set("tls.inbound.client_certificate", "request")
    gw.start()
    assert attempt(gw.smtp_port, client_context(None))[0] == "queued"
    assert attempt(gw.smtp_port, client_context(pki["client"]))[0] == "queued"
    assert TRUSTED_CN in gw.log(), gw.log()


def test_require_needs_mode_require(make_gateway, pki):
    gw = make_gateway(start=False)
    gw.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(pki["ca"][0]))
    gw.set("tls.inbound.trusted_client_ca", "Test CA")
    before = gw.cli_ok("settings", "show").stdout
    r = gw.cli("settings", "set", "tls.inbound.client_certificate", "require")
    assert r.rc != 0, f"client_certificate=require accepted with mode offer: {r}"
    assert "tls.inbound.client_certificate" in r.stderr, r
    assert gw.cli_ok("settings", "show").stdout == before
    # With mode require it is accepted (the refusal above was about the mode).
    gw.set("tls.inbound.mode", "require")
    gw.set("tls.inbound.client_certificate", "require")


def test_ca_in_use_cannot_be_deleted(make_gateway, pki):
    gw = make_gateway(start=False)
    configure_require(gw, pki)
    r = gw.cli("cert", "delete", "Test CA")
    assert r.rc != 0, f"deleted a CA named in tls.inbound.trusted_client_ca: {r}"
    assert "tls.inbound.trusted_client_ca" in r.output, r
    assert "Test CA" in gw.cli_ok("cert", "list").stdout


def test_trusted_client_ca_must_exist(make_gateway):
    """Naming a CA that is not in the certificate table is refused."""
    gw = make_gateway(start=False)
    r = gw.cli("settings", "set", "tls.inbound.trusted_client_ca", "No Such CA")
    assert r.rc != 0, f"accepted a trusted_client_ca that does not exist: {r}"
    assert "No Such CA" in r.stderr or "tls.inbound.trusted_client_ca" in r.stderr, r


def test_ca_entry_cannot_be_server_certificate(make_gateway, pki):
    gw = make_gateway(start=False)
    gw.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(pki["ca"][0]))
    listing = gw.cli_ok("cert", "list").stdout
    assert "Test CA" in listing
    before = gw.cli_ok("settings", "show").stdout
    r = gw.cli("settings", "set", "tls.inbound.certificate", "Test CA")
    assert r.rc != 0, f"a CA entry without key accepted as server certificate: {r}"
    assert "tls.inbound.certificate" in r.stderr, r
    assert gw.cli_ok("settings", "show").stdout == before
