"""tls.inbound.mode none / offer / require, applied live; min_version;
openssl s_client interop; invalid settings refused without changing anything.
"""

import re
import smtplib
import ssl
import time
import uuid

import pytest

from postern_testlib import (HOSTNAME, SmtpConn, capabilities, insecure_context, make_message,
                             queued_id, s_client, s_client_protocol)

REQUIRE_TEXT = "530 5.7.0 Must issue a STARTTLS command first"


def test_mode_none(make_gateway):
    gw = make_gateway(start=False)
    gw.set("tls.inbound.mode", "none")
    gw.start()
    with gw.connect() as c:
        e = c.ehlo()
        assert e.code == 250
        assert "STARTTLS" not in capabilities(e), f"STARTTLS advertised with mode none: {e}"
        r = c.cmd("STARTTLS")
        assert 500 <= r.code < 600, f"STARTTLS with mode none answered {r}"
        # Still plain SMTP afterwards, and plaintext mail is accepted.
        assert c.cmd("NOOP").code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: none\r\n\r\nplain\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250 and queued_id(r.first), r


def test_mode_offer_accepts_plaintext(gw):
    with gw.connect() as c:
        e = c.ehlo()
        assert "STARTTLS" in capabilities(e), e
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: offer\r\n\r\nplain\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r
        assert queued_id(r.first) in gw.queue_ids()


def test_mode_require(make_gateway):
    gw = make_gateway(start=False)
    gw.set("tls.inbound.mode", "require")
    gw.start()
    with gw.connect() as c:
        e = c.ehlo()
        assert "STARTTLS" in capabilities(e), e
        for command in ("MAIL FROM:<c@d.test>", "RCPT TO:<a@b.test>", "DATA"):
            r = c.cmd(command)
            assert r.first == REQUIRE_TEXT, f"{command} before STARTTLS answered {r}"
        # BDAT's chunk follows the command in any case (RFC 3030), so send it.
        c.send(b"BDAT 5 LAST\r\nhello")
        r = c.read_reply()
        assert r.code == 530, f"BDAT before STARTTLS answered {r}"
        assert c.cmd("NOOP").code == 250
    assert gw.queue() == []

    # Via smtplib: refused in plaintext, accepted after STARTTLS.
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as s:
        s.ehlo()
        code, resp = s.mail("c@d.test")
        assert (code, resp.decode()) == (530, "5.7.0 Must issue a STARTTLS command first")
        s.starttls(context=insecure_context())
        s.ehlo()
        assert s.mail("c@d.test")[0] == 250
        assert s.rcpt("a@b.test")[0] == 250
        code, resp = s.data(make_message(uuid.uuid4().hex))
        assert code == 250, resp
        qid = queued_id(resp)
    assert gw.queue_ids() == [qid]

    # Implicit TLS counts as TLS.
    with SmtpConn(gw.tls_port, tls_context=insecure_context()) as c:
        assert c.read_reply().code == 220
        c.ehlo()
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250


def _mail_reply_code(port: int) -> int:
    with SmtpConn(port, timeout=3) as c:
        c.read_reply()
        c.ehlo()
        return c.cmd("MAIL FROM:<c@d.test>").code


def test_require_applied_live(gw, report):
    assert _mail_reply_code(gw.smtp_port) == 250
    existing = gw.connect()
    assert existing.ehlo().code == 250

    gw.set("tls.inbound.mode", "require")
    t0 = time.monotonic()
    code = None
    while time.monotonic() - t0 < 3.0:
        code = _mail_reply_code(gw.smtp_port)
        if code == 530:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    assert code == 530, f"mode require not applied within 3 s (MAIL still answered {code})"
    report(f"tls.inbound.mode=require applied after {elapsed:.2f}s")

    # The change did not drop the connection that was already open.
    assert existing.cmd("NOOP").code == 250, "existing connection dropped by settings change"
    existing.close()

    # And back.
    gw.set("tls.inbound.mode", "offer")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        code = _mail_reply_code(gw.smtp_port)
        if code == 250:
            break
        time.sleep(0.1)
    assert code == 250, f"mode offer not applied within 3 s (MAIL answered {code})"


def test_openssl_s_client_starttls(gw):
    rc, out = s_client(gw.smtp_port, "-crlf", "-ign_eof",
                       input=b"EHLO client.postern.test\nNOOP\nQUIT\n")
    assert s_client_protocol(out) == "TLSv1.3", out
    assert f"250-{HOSTNAME}" in out, out
    assert "221" in out, out
    assert not re.search(r"^5\d\d ", out, re.M), out


def test_openssl_s_client_tls12(gw):
    rc, out = s_client(gw.smtp_port, "-tls1_2", "-crlf", "-ign_eof", input=b"NOOP\nQUIT\n")
    assert s_client_protocol(out) == "TLSv1.2", out
    assert "221" in out, out
    assert not re.search(r"^5\d\d ", out, re.M), out


def test_min_version_13(make_gateway):
    gw = make_gateway(start=False)
    gw.set("tls.inbound.min_version", "1.3")
    gw.start()
    ctx12 = insecure_context(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    with gw.connect() as c:
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        with pytest.raises((ssl.SSLError, OSError)):
            c.starttls(ctx12)
            c.ehlo()  # with a lazy failure, the first read fails
    with SmtpConn(gw.smtp_port) as c:
        c.read_reply()
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        c.starttls(insecure_context(ssl.TLSVersion.TLSv1_3))
        assert c.sock.version() == "TLSv1.3"
        assert c.ehlo().code == 250


BAD_SETTINGS = [
    ("tls.inbound.mode", "sometimes", ["tls.inbound.mode", "offer"]),
    ("tls.inbound.min_version", "1.1", ["tls.inbound.min_version"]),
    ("tls.inbound.client_certificate", "always", ["tls.inbound.client_certificate"]),
    ("tls.outbound.mode", "maybe", ["tls.outbound.mode", "opportunistic"]),
    ("mta.max_message_size", "lots", ["mta.max_message_size"]),
    ("mta.max_message_size", "0", ["mta.max_message_size"]),
    ("mta.max_recipients", "3.5", ["mta.max_recipients"]),
    ("mta.session_timeout", "forever", ["mta.session_timeout"]),
    ("mta.banner", "evil\r\n250 ok", ["mta.banner"]),
]


def test_invalid_settings_refused(make_gateway):
    gw = make_gateway(start=False)
    before = gw.cli_ok("settings", "show").stdout
    assert "tls" in before and "mta" in before, before
    for key, value, must_mention in BAD_SETTINGS:
        r = gw.cli("settings", "set", key, value)
        assert r.rc != 0, f"accepted {key} = {value!r}: {r}"
        for word in must_mention:
            assert word in r.stderr, f"error for {key} = {value!r} does not mention {word!r}: {r}"
    assert gw.cli_ok("settings", "show").stdout == before, "a refused setting changed something"
    # A valid one does change it (so the comparison above can fail).
    gw.set("mta.max_recipients", "17")
    assert "17" in gw.cli_ok("settings", "show").stdout


def test_certificate_change_applied_live(gw):
    from postern_testlib import fingerprint, pem_certs
    rc, out = s_client(gw.smtp_port)
    old = fingerprint(pem_certs(out)[0])
    gw.cli_ok("cert", "generate", "--name", "EC Live", "--key", "ecdsa-p256", "--cn", HOSTNAME,
              "--san", HOSTNAME)
    new = fingerprint(pem_certs(gw.cli_ok("cert", "export", "EC Live").stdout)[0])
    assert new != old
    gw.set("tls.inbound.certificate", "EC Live")
    t0 = time.monotonic()
    seen = old
    while time.monotonic() - t0 < 3.0:
        rc, out = s_client(gw.smtp_port)
        certs = pem_certs(out)
        seen = fingerprint(certs[0]) if certs else None
        if seen == new:
            break
        time.sleep(0.1)
    assert seen == new, "tls.inbound.certificate change not applied within 3 s"
    # Implicit TLS too.
    rc, out = s_client(gw.tls_port, starttls=False)
    assert fingerprint(pem_certs(out)[0]) == new
    # Now the new one is in use and cannot be deleted; the Default Cert can.
    r = gw.cli("cert", "delete", "EC Live")
    assert r.rc != 0 and "tls.inbound.certificate" in r.output, r


def test_certificate_must_exist(make_gateway):
    gw = make_gateway(start=False)
    before = gw.cli_ok("settings", "show").stdout
    r = gw.cli("settings", "set", "tls.inbound.certificate", "No Such Cert")
    assert r.rc != 0, r
    assert "tls.inbound.certificate" in r.stderr, r
    assert gw.cli_ok("settings", "show").stdout == before


def test_starttls_inside_transaction(gw):
    """STARTTLS in the middle of a transaction is refused, or it resets the
    envelope: a sender given in plaintext never carries over into TLS."""
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        r = c.cmd("STARTTLS")
        if r.code == 220:
            c.starttls()
            assert c.ehlo().code == 250
            r = c.cmd("RCPT TO:<a@b.test>")
            assert r.code == 503, f"envelope survived STARTTLS: RCPT answered {r}"
        else:
            assert r.code == 503, r


def test_quit_over_tls_ends_with_221_then_close_notify(gw):
    """After STARTTLS, QUIT (pipelined behind NOOP) gets both replies and then
    a TLS close_notify before the TCP close: Python's ssl with
    suppress_ragged_eofs=False raises SSLEOFError on a close without one."""
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("STARTTLS").code == 220
        tls = insecure_context().wrap_socket(c.sock, server_hostname=HOSTNAME, suppress_ragged_eofs=False)
        c.sock = tls
        tls.sendall(b"EHLO client.postern.test\r\nNOOP\r\nQUIT\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, data
            chunk = tls.recv(65536)   # SSLEOFError here: closed without close_notify
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n")
    assert lines[-1] == b"", data
    finals = [ln[:4] for ln in lines if len(ln) >= 4 and ln[3:4] == b" "]
    assert finals == [b"250 ", b"250 ", b"221 "], data
