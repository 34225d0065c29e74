"""Hardening, as raw socket dialogs: SMTP smuggling (bare LF / CR around the
end-of-data dot), STARTTLS command injection, HTTP spoken to the SMTP port.
"""

import time

import pytest

from postern_testlib import capabilities, HOSTNAME

SMUGGLED = (b"MAIL FROM:<admin@corp.test>\r\n"
            b"RCPT TO:<victim2@corp.test>\r\n"
            b"DATA\r\n"
            b"From: admin@corp.test\r\n"
            b"Subject: smuggled\r\n"
            b"\r\n"
            b"smuggled body\r\n")

# End-of-data look-alikes that contain a bare CR or LF: the message must be
# refused with 550 5.5.2 and nothing queued.
BARE_ENDINGS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
    "LF.CR": b"\n.\r",
    "CRLF.NUL-LF": b"\r\n.\x00\n",
    "NUL-LF.LF": b"\x00\n.\n",
    "CRLF.CR-NUL": b"\r\n.\r\x00",
}

# Look-alikes with a NUL but no bare line ending: refusing (550) or keeping
# everything as one message are both acceptable; a second message is not.
NUL_ENDINGS = {
    "CRLF-NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\x00\r\n",
}


def smuggle(gw, ending: bytes):
    """One DATA transaction with a fake end of data followed by a second
    envelope, then the real end of data and QUIT in the same write. Returns
    the replies after 354 and whether the server closed the connection."""
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<attacker@evil.test>").code == 250
        assert c.cmd("RCPT TO:<victim@corp.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"From: attacker@evil.test\r\nSubject: first\r\n\r\nfirst body"
               + ending + SMUGGLED + b".\r\nQUIT\r\n")
        return c.read_all_replies(8)


@pytest.mark.parametrize("ending", list(BARE_ENDINGS.values()), ids=list(BARE_ENDINGS))
def test_smuggling_bare_endings_refused(gw, ending):
    replies, _closed = smuggle(gw, ending)
    assert replies, "no reply at all to the end of data"
    first = replies[0]
    assert first.code == 550 and first.lines[0].startswith("5.5.2"), \
        f"end of data with a bare line ending answered {first} (all: {replies})"
    rest = [r for r in replies[1:] if r.code != 221]
    assert not any(r.code < 400 for r in rest), f"smuggled commands were answered: {replies}"
    assert gw.queue() == [], "a message was queued"
    assert gw.spool_ids() == [], f"spool files exist: {gw.spool_ids()}"


@pytest.mark.parametrize("ending", list(NUL_ENDINGS.values()), ids=list(NUL_ENDINGS))
def test_smuggling_nul_endings_never_two_messages(gw, ending):
    replies, _closed = smuggle(gw, ending)
    assert replies, "no reply at all to the end of data"
    codes = [r.code for r in replies]
    assert 354 not in codes, f"smuggled DATA was answered: {replies}"
    queued = gw.queue()
    assert len(queued) <= 1, f"smuggling produced {len(queued)} messages"
    if replies[0].code == 250:
        assert len(queued) == 1
        body = gw.spool_file(queued[0]["id"]).read_bytes()
        assert b"smuggled body" in body, "the smuggled text must be part of the one message"
        assert codes[1:] in ([], [221]), f"extra replies: {replies}"
    else:
        assert replies[0].code == 550 and replies[0].lines[0].startswith("5.5.2"), replies
        assert queued == []


@pytest.mark.parametrize("body", [
    b"Subject: x\r\n\r\nline one\nline two\r\n",
    b"Subject: x\r\n\r\nline one\rline two\r\n",
    b"Subject: x\nX-Other: y\r\n\r\nbody\r\n",
], ids=["bare-LF-mid-body", "bare-CR-mid-body", "bare-LF-in-header"])
def test_bare_line_endings_in_body_refused(gw, body):
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        r = c.read_reply(10)
        assert r.code == 550 and r.lines[0].startswith("5.5.2"), r
        # The session goes on.
        assert c.cmd("NOOP").code == 250
    assert gw.queue() == []


def test_starttls_injection_rset(gw):
    with gw.connect() as c:
        assert c.ehlo().code == 250
        c.send(b"STARTTLS\r\nRSET\r\n")
        r = c.read_reply()
        assert r.code == 220, r
        # Nothing more may come in plaintext: the RSET must not be answered.
        extra = c.read_reply_or_none(0.3)
        assert extra is None, f"pipelined RSET answered in plaintext: {extra}"
        c.starttls()
        e = c.ehlo()
        assert e.code == 250 and len(e.lines) > 1 and e.lines[0].startswith(HOSTNAME), \
            f"first reply over TLS is not the EHLO answer (injected RSET answered?): {e}"
        assert "PIPELINING" in capabilities(e), e
        late = c.read_reply_or_none(0.5)
        assert late is None, f"an extra reply arrived over TLS: {late}"
        assert c.cmd("NOOP").code == 250


def test_starttls_injection_mail(gw):
    """An injected MAIL FROM must not start a transaction inside TLS."""
    with gw.connect() as c:
        assert c.ehlo().code == 250
        c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        assert c.read_reply().code == 220
        c.starttls()
        e = c.ehlo()
        assert e.code == 250 and e.lines[0].startswith(HOSTNAME), e
        r = c.cmd("RCPT TO:<a@b.test>")
        assert r.code == 503, f"RCPT without MAIL inside TLS answered {r}: injected MAIL was executed"
    assert gw.queue() == []


def test_http_request_to_smtp_port(gw):
    c = gw.connect(banner=False)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n")
        # Banner + at most one reply per HTTP line; stop early when all came.
        replies, closed = [], False
        deadline = time.monotonic() + 4
        while len(replies) < 5 and time.monotonic() < deadline:
            r = c.read_reply_or_none(deadline - time.monotonic())
            if r is None:
                closed = c.eof
                break
            replies.append(r)
        if not closed:
            closed = c.wait_closed(0.2)
    finally:
        c.close()
    after_banner = [r for r in replies if not (r.code == 220 and HOSTNAME in r.first)]
    assert not any(r.code < 400 for r in after_banner), f"HTTP lines answered positively: {replies}"
    assert closed or any(r.code == 500 for r in after_banner), \
        f"neither a 500 reply nor a closed connection: {replies}"
    assert gw.queue() == []
