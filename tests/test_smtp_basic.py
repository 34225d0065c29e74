"""Plain SMTP service: a message sent from a trusted network is queued
(after fsync), listed by `queue list --json`, stored with a Received:
header; swaks and smtplib interoperate, with and without STARTTLS; EHLO
capabilities; the null sender; BDAT; dot-unstuffing; graceful shutdown.
"""

import re
import smtplib
import subprocess
import time
import uuid

from postern_testlib import (HOSTNAME, SmtpConn, capabilities, insecure_context, make_message,
                             queued_id, raw_transaction, run, unfold)


def smtplib_send(port: int, token: str, *, starttls: bool = False, sender="c@d.test",
                 rcpts=("a@b.test",), extra_body="") -> str:
    """Send one message with smtplib's low-level calls; returns the queue ID
    parsed from `250 2.0.0 Ok: queued as ID`."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.postern.test")
        if starttls:
            code, resp = s.starttls(context=insecure_context())
            assert code == 220, (code, resp)
            s.ehlo("client.postern.test")
        code, resp = s.mail(sender)
        assert code == 250, (code, resp)
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, (code, resp)
        code, resp = s.data(make_message(token, sender, rcpts[0], extra_body=extra_body))
        text = resp.decode()
        assert code == 250, (code, text)
        assert text.startswith("2.0.0 Ok: queued as "), text
        qid = queued_id(text)
        assert qid, text
        return qid


def received_headers(spool_text: str) -> list[str]:
    return re.findall(r"^Received:.*$", unfold(spool_text), re.M | re.I)


def test_plain_send_is_queued(gw):
    token = uuid.uuid4().hex
    qid = smtplib_send(gw.smtp_port, token, rcpts=("a@b.test", "x@y.test"))

    entries = {m["id"]: m for m in gw.queue()}
    assert qid in entries, f"{qid} not in queue list: {list(entries)}"
    m = entries[qid]
    for key in ("id", "message_id", "sender", "size", "received_at", "recipients"):
        assert key in m, f"queue list entry lacks {key!r}: {m}"
    assert m["sender"].strip("<>") == "c@d.test", m
    assert token in m["message_id"], m
    assert isinstance(m["size"], int) and m["size"] > 100, m
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", m["received_at"]), m
    rcpts = {r["address"].strip("<>").lower(): r for r in m["recipients"]}
    assert set(rcpts) == {"a@b.test", "x@y.test"}, m
    for r in rcpts.values():
        for key in ("state", "attempts", "next_attempt", "last_error"):
            assert key in r, f"recipient lacks {key!r}: {r}"
        assert r["state"] in ("pending", "deferred"), r

    spool = gw.spool_file(qid)
    assert spool.is_file(), f"no spool file {spool}; queue dir has {gw.spool_ids()}"
    text = spool.read_bytes().decode("utf-8", "replace")
    assert f"body {token}" in text, text[:2000]
    recv = received_headers(text)
    assert recv, f"no Received: header in spool file:\n{text[:2000]}"
    assert HOSTNAME in recv[0], recv
    assert re.search(r"^Received: from .*\bby mx\.postern\.test\b.*;\s*\w{3}, \d{1,2} \w{3} \d{4} "
                     r"\d\d:\d\d:\d\d [+-]\d{4}", recv[0]), f"Received: header not RFC 5321 shaped: {recv[0]}"
    assert re.search(r"\bwith E?SMTP\b", recv[0]) and "ESMTPS" not in recv[0], recv
    # prepended: before the client's own headers
    assert text.find("Received:") < text.find(f"Subject: test {token}"), text[:2000]

    assert qid in gw.log(), f"mail.log does not mention {qid}:\n{gw.log()}"


def swaks(port: int, *extra: str, token: str) -> subprocess.CompletedProcess:
    return run(["swaks", "--server", f"127.0.0.1:{port}", "--to", "a@b.test", "--from", "c@d.test",
                "--helo", "client.postern.test", "--header", f"Subject: swaks {token}",
                "--body", f"swaks body {token}", "--timeout", "10", *extra], timeout=40)


def test_swaks_plain(gw):
    token = uuid.uuid4().hex
    p = swaks(gw.smtp_port, token=token)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0, out
    assert "TLS started" not in out
    m = re.search(r"<[-~]\s+250 2\.0\.0 Ok: queued as (\S+)", out)
    assert m, out
    qid = m.group(1)
    assert qid in gw.queue_ids()
    assert f"swaks body {token}" in gw.spool_file(qid).read_text(errors="replace")


def test_swaks_starttls(gw):
    token = uuid.uuid4().hex
    p = swaks(gw.smtp_port, "--tls", token=token)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0, out
    assert re.search(r"TLS started with cipher TLSv1\.[23]", out), out
    m = re.search(r"->\s+STARTTLS.*?<-\s+220", out, re.S)
    assert m, out
    m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as (\S+)", out)  # <~ : read over TLS
    assert m, out
    qid = m.group(1)
    assert qid in gw.queue_ids()
    text = unfold(gw.spool_file(qid).read_text(errors="replace"))
    assert "ESMTPS" in received_headers(text)[0], text[:2000]


def test_swaks_implicit_tls(gw):
    token = uuid.uuid4().hex
    p = swaks(gw.tls_port, "--tlsc", token=token)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0, out
    assert "TLS started" in out, out
    m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as (\S+)", out)
    assert m, out
    qid = m.group(1)
    assert qid in gw.queue_ids()
    recv = received_headers(gw.spool_file(qid).read_text(errors="replace"))
    assert "ESMTPS" in recv[0] and re.search(r"\(using TLSv1\.3 with cipher TLS13_", recv[0]), recv


def test_starttls_received_header(gw):
    token = uuid.uuid4().hex
    qid = smtplib_send(gw.smtp_port, token, starttls=True)
    text = gw.spool_file(qid).read_text(errors="replace")
    recv = received_headers(text)
    assert recv, text[:2000]
    assert "ESMTPS" in recv[0], recv[0]
    assert re.search(r"\(using TLSv1\.3 with cipher TLS13_[A-Z0-9_]+\)", recv[0]), recv[0]


def test_banner_and_ehlo_capabilities(gw):
    with gw.connect(banner=False) as c:
        banner = c.read_reply()
        assert banner.first == f"220 {HOSTNAME} ESMTP Postern", banner
        e = c.ehlo()
        assert e.code == 250, e
        assert e.lines[0].startswith(HOSTNAME), e
        caps = capabilities(e)
        for cap in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS", "SMTPUTF8",
                    "CHUNKING"):
            assert cap in caps, f"{cap} not advertised: {e}"
        assert caps["SIZE"] == "52428800", e

        assert c.cmd("STARTTLS").code == 220
        c.starttls()
        e2 = c.ehlo()
        caps2 = capabilities(e2)
        assert "STARTTLS" not in caps2, f"STARTTLS advertised after TLS: {e2}"
        for cap in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"):
            assert cap in caps2, f"{cap} not advertised after STARTTLS: {e2}"
        # A second STARTTLS inside TLS is refused.
        assert c.cmd("STARTTLS").code >= 500


def test_null_sender_accepted(gw):
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = c.cmd("MAIL FROM:<>")
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: bounce\r\n\r\nnull sender\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r
        qid = queued_id(r.first)
    entries = {m["id"]: m for m in gw.queue()}
    assert qid in entries
    assert entries[qid]["sender"] in ("", "<>"), entries[qid]


def test_bdat_chunking(gw):
    token = uuid.uuid4().hex
    part1 = f"Subject: bdat {token}\r\nMessage-ID: <{token}@c>\r\n\r\nfirst chunk\r\n".encode()
    part2 = f"second chunk {token}\r\n.leading dot stays\r\n".encode()
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        c.send(f"BDAT {len(part1)}\r\n".encode() + part1)
        r = c.read_reply()
        assert r.code == 250, r
        c.send(f"BDAT {len(part2)} LAST\r\n".encode() + part2)
        r = c.read_reply(15)
        assert r.code == 250, r
        qid = queued_id(r.first)
        assert qid, r
        # The session continues: a single-chunk message, pipelined.
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        one = b"Subject: one chunk\r\n\r\nonly\r\n"
        c.send(f"BDAT {len(one)} LAST\r\n".encode() + one)
        r = c.read_reply(15)
        assert r.code == 250 and queued_id(r.first), r
    text = gw.spool_file(qid).read_bytes()
    assert b"first chunk\r\nsecond chunk " + token.encode() in text, text
    # BDAT data is not dot-stuffed: the line keeps its dot.
    assert b"\r\n.leading dot stays\r\n" in text, text
    assert qid in gw.queue_ids()


def test_dot_unstuffing(gw):
    token = uuid.uuid4().hex
    qid = smtplib_send(gw.smtp_port, token, extra_body=".single dot line\n..two dots line\n")
    text = gw.spool_file(qid).read_bytes()
    # smtplib stuffs them to ".." and "..."; the spool must hold the originals.
    assert re.search(rb"\r?\n\.single dot line\r?\n", text), text
    assert re.search(rb"\r?\n\.\.two dots line\r?\n", text), text


def test_pipelined_transaction(gw):
    """PIPELINING: the whole envelope in one write, replies in order."""
    with gw.connect() as c:
        assert c.ehlo().code == 250
        c.send(b"MAIL FROM:<c@d.test>\r\nRCPT TO:<a@b.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n")
        codes = [c.read_reply().code for _ in range(4)]
        assert codes == [250, 250, 250, 354], codes
        c.send(b"Subject: pipelined\r\n\r\nhi\r\n.\r\nRSET\r\nNOOP\r\n")
        r = c.read_reply(15)
        assert r.code == 250 and queued_id(r.first), r
        assert c.read_reply().code == 250
        assert c.read_reply().code == 250
        q = c.cmd("QUIT")
        assert q.code == 221, q
        assert c.wait_closed(3), "connection not closed after QUIT"


def test_sigterm_graceful_exit(gw):
    """SIGTERM: exit code 0 within the grace time, even with an idle session open."""
    c = gw.connect()
    assert c.ehlo().code == 250
    t0 = time.monotonic()
    rc = gw.stop(timeout=15)
    elapsed = time.monotonic() - t0
    c.close()
    assert rc == 0, f"exit code {rc} after SIGTERM"
    assert elapsed < 5 + 2, f"took {elapsed:.1f}s with shutdown_grace = 5s"


def test_sigint_graceful_exit(gw):
    gw.proc.send_signal(__import__("signal").SIGINT)
    try:
        rc = gw.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError("gateway did not exit within 10 s of SIGINT")
    assert rc == 0, f"exit code {rc} after SIGINT"


def test_shutdown_lets_open_transaction_finish(gw):
    """SIGTERM during DATA: no new connections, the open transaction may
    still finish within the grace time, then exit 0."""
    import signal
    c = gw.connect()
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<c@d.test>").code == 250
    assert c.cmd("RCPT TO:<a@b.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: during shutdown\r\n\r\nfirst half")
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert gw.running, "gateway exited at once although a transaction was open"
    refused = False
    try:
        with SmtpConn(gw.smtp_port, timeout=2) as n:
            r = n.read_reply_or_none(2)
            refused = r is None or r.code == 421
    except OSError:
        refused = True
    assert refused, "a new connection was served after SIGTERM"
    c.send(b" second half\r\n.\r\n")
    r = c.read_reply(5)
    assert r.code == 250, f"open transaction not allowed to finish: {r}"
    qid = queued_id(r.first)
    c.close()
    try:
        rc = gw.proc.wait(7)
    except subprocess.TimeoutExpired:
        raise AssertionError("gateway did not exit within the grace time")
    assert rc == 0, rc
    assert b"first half second half" in gw.spool_file(qid).read_bytes()
    gw.start()
    assert qid in gw.queue_ids()


def test_helo_and_custom_banner(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.banner", "mail.example.test ready")
    gw.start()
    with gw.connect(banner=False) as c:
        b = c.read_reply()
        assert b.first == "220 mail.example.test ready", b
        r = c.cmd("HELO client.postern.test")
        assert r.code == 250 and len(r.lines) == 1, r
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250


def test_smtputf8_and_8bit(gw):
    body = "Subject: Grüße\r\n\r\nÄpfel und Öl, 8-bit body\r\n".encode()
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = c.cmd("MAIL FROM:<jürgen@d.test>")
        assert 550 <= r.code <= 555, f"non-ASCII sender without SMTPUTF8 answered {r}"
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<jürgen@d.test> SMTPUTF8 BODY=8BITMIME").code == 250
        assert c.cmd("RCPT TO:<zoë@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r
        qid = queued_id(r.first)
    assert "Äpfel und Öl".encode() in gw.spool_file(qid).read_bytes()
    (entry,) = [m for m in gw.queue() if m["id"] == qid]
    assert entry["sender"].strip("<>") == "jürgen@d.test", entry
    assert entry["recipients"][0]["address"].strip("<>") == "zoë@b.test", entry


def test_nul_in_command_refused(gw):
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = c.cmd(b"MAIL FROM:<c\x00@d.test>")
        assert r.code == 500 and r.lines[0].startswith("5.5.2"), r
        assert c.cmd("NOOP").code == 250


def test_trace_shows_tls_details(gw):
    token = uuid.uuid4().hex
    qid = smtplib_send(gw.smtp_port, token, starttls=True)
    # Tracking is written just after the 250 (it never delays it): poll briefly.
    deadline = time.monotonic() + 3
    while True:
        r = gw.cli("trace", qid)
        if r.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.rc == 0 and qid in r.stdout, r
    assert "received" in r.stdout.lower(), r
    assert "TLSv1.3" in r.stdout or "TLS1.3" in r.stdout.replace("v", ""), r
    # by Message-ID as well
    r2 = gw.cli("trace", f"<{token}@client.postern.test>")
    r3 = gw.cli("trace", f"{token}@client.postern.test")
    assert (r2.rc == 0 and qid in r2.stdout) or (r3.rc == 0 and qid in r3.stdout), (r2, r3)


def test_data_dir_relative_to_config(gw):
    """The gateway and the CLI run from another directory (gw.cwd): all
    data lands in the config file's directory, nothing in the cwd."""
    gw.send_raw(token="where")
    assert (gw.root / "data" / "postern.db").is_file()
    assert gw.queue_ids()
    assert list(gw.cwd.iterdir()) == [], f"files written to the working directory: {list(gw.cwd.iterdir())}"


def test_dot_unstuffing_first_line(gw):
    """The very first line of DATA may be dot-stuffed too (no CRLF before it in the stream)."""
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = raw_transaction(c, "c@d.test", ["a@b.test"], b"..first line\r\nSubject: dot\r\n\r\nbody\r\n")
        assert r.code == 250, r
        qid = queued_id(r.first)
    text = gw.spool_file(qid).read_bytes()
    assert re.search(rb"\n\.first line\r\n", text) and b"..first line" not in text, text
