"""Relay control for untrusted clients, and the limits of [mta]: message
size, recipients, command line length, session timeout, connections per
client.
"""

import socket
import time
import uuid

from fixtures_postfix import wait_until
from postern_testlib import SmtpConn, capabilities, queued_id

DOMAINS_TOML = """
[tls.inbound]
mode = "offer"

[[domain]]
name = "corp.test"
relay = true

[[domain]]
name = "*.sub.test"
relay = true

[[domain]]
name = "norelay.test"
relay = false
next_hop = "[127.0.0.1]:2500"
"""


def test_relay_denied_for_untrusted_client(make_gateway):
    gw = make_gateway(trusted_networks=[])
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        r = c.cmd("RCPT TO:<victim@unknown.test>")
        assert r.code == 554 and r.lines[0].startswith("5.7.1"), r
        assert "Relaying denied" in r.first, r
        r = c.cmd("DATA")
        assert r.code >= 500, f"DATA without accepted recipients answered {r}"
    assert gw.queue() == []


def test_relay_domains_from_import(make_gateway):
    gw = make_gateway(trusted_networks=["10.0.0.0/8"], start=False)
    f = gw.root / "domains.toml"
    f.write_text(DOMAINS_TOML)
    gw.cli_ok("settings", "import", str(f))
    exported = gw.cli_ok("settings", "export", "--format", "toml").stdout
    assert "corp.test" in exported and "*.sub.test" in exported, exported
    gw.start()

    cases = {
        "a@corp.test": 250,
        "a@CORP.TEST": 250,
        "a@other.test": 554,
        "a@x.corp.test": 554,      # exact entry does not cover subdomains
        "a@sub.test": 554,         # wildcard does not cover the domain itself
        "a@a.sub.test": 250,
        "a@b.a.sub.test": 250,
        "a@norelay.test": 554,     # entry without relay = true
    }
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        got = {rcpt: c.cmd(f"RCPT TO:<{rcpt}>").code for rcpt in cases}
        assert got == cases
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: relay\r\n\r\nto corp\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r
        qid = queued_id(r.first)
    (entry,) = [m for m in gw.queue() if m["id"] == qid]
    addrs = sorted(x["address"].strip("<>").lower() for x in entry["recipients"])
    assert addrs == sorted(["a@corp.test", "a@corp.test", "a@a.sub.test", "a@b.a.sub.test"]) or \
        addrs == sorted(["a@corp.test", "a@a.sub.test", "a@b.a.sub.test"]), entry


def test_size_limit_at_mail(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.max_message_size", "10000")
    gw.start()
    with gw.connect() as c:
        caps = capabilities(c.ehlo())
        assert caps.get("SIZE") == "10000", caps
        r = c.cmd("MAIL FROM:<c@d.test> SIZE=20000")
        assert r.code == 552 and r.lines[0].startswith("5.3.4"), r
        r = c.cmd("MAIL FROM:<c@d.test> SIZE=5000")
        assert r.code == 250, r


def test_size_limit_on_data(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.max_message_size", "10000")
    gw.start()
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        body = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 400  # ~31 KB
        try:
            c.send(body + b".\r\n")
        except OSError:
            pass  # the server may answer and stop reading early
        r = c.read_reply(15)
        assert r.code == 552 and r.lines[0].startswith("5.3.4"), r
        # The session is still usable, and a message under the limit goes through.
        r = c.cmd("RSET")
        assert r.code == 250, r
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: small\r\n\r\nsmall\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r
        small = queued_id(r.first)
        # BDAT: the same limit.
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        c.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        r = c.read_reply(15)
        assert r.code == 552 and r.lines[0].startswith("5.3.4"), f"oversized BDAT answered {r}"
    assert gw.queue_ids() == [small], "an oversized message was queued"


def test_too_many_recipients(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.max_recipients", "3")
    gw.start()
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        for i in range(3):
            r = c.cmd(f"RCPT TO:<r{i}@b.test>")
            assert r.code == 250, r
        r = c.cmd("RCPT TO:<r3@b.test>")
        assert r.code == 452 and r.lines[0].startswith("4.5.3"), r
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: three\r\n\r\nthree\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r
        qid = queued_id(r.first)
    (entry,) = gw.queue()
    assert entry["id"] == qid
    assert sorted(x["address"].strip("<>") for x in entry["recipients"]) == \
        ["r0@b.test", "r1@b.test", "r2@b.test"]


def test_long_command_line(gw):
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = c.cmd("MAIL FROM:<" + "a" * 5000 + "@d.test>")
        assert r.code == 500 and r.lines[0].startswith("5.5.2"), r
        r = c.cmd("NOOP")
        assert r.code == 250, f"session broken after an over-long line: {r}"
        # An enormous line (beyond any sane buffer) is refused the same way.
        r = c.cmd("NOOP " + "b" * 200_000, timeout=10)
        assert r.code == 500 and r.lines[0].startswith("5.5.2"), r
        assert c.cmd("MAIL FROM:<c@d.test>").code == 250
        assert c.cmd("RCPT TO:<a@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: after long\r\n\r\nok\r\n.\r\n")
        r = c.read_reply(15)
        assert r.code == 250, r


def test_session_timeout(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.session_timeout", "2s")
    gw.start()
    idle = gw.connect()
    in_data = gw.connect()
    assert in_data.ehlo().code == 250
    assert in_data.cmd("MAIL FROM:<c@d.test>").code == 250
    assert in_data.cmd("RCPT TO:<a@b.test>").code == 250
    assert in_data.cmd("DATA").code == 354
    in_data.send(b"Subject: slow\r\n\r\nhalf a li")
    t0 = time.monotonic()
    try:
        for conn, what in ((idle, "idle after banner"), (in_data, "idle inside DATA")):
            r = conn.read_reply(6 - (time.monotonic() - t0))
            assert r.code == 421 and r.lines[0].startswith("4.4.2"), f"{what}: {r}"
            assert "timeout" in r.first.lower(), r
            assert conn.wait_closed(5 - (time.monotonic() - t0)), f"{what}: not closed after 421"
        elapsed = time.monotonic() - t0
        assert 1.0 <= elapsed <= 5.0, f"timed out after {elapsed:.1f}s with session_timeout = 2s"
    finally:
        idle.close()
        in_data.close()
    assert gw.queue() == []
    # A busy session is not cut: commands every second for 3 s.
    with gw.connect() as c:
        for _ in range(4):
            assert c.cmd("NOOP").code == 250
            time.sleep(1.0)


def test_connections_per_client(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.max_connections_per_client", "2")
    gw.start()
    first = gw.connect()
    second = gw.connect()
    try:
        third = SmtpConn(gw.smtp_port)
        r = third.read_reply()
        assert r.code == 421 and r.lines[0].startswith("4.7.0"), r
        assert third.wait_closed(3), "third connection not closed after 421"
        third.close()
        # The first two still work.
        assert first.ehlo().code == 250
        assert second.cmd("NOOP").code == 250
        # Freeing one slot admits a new connection.
        first.cmd("QUIT")
        first.close()
        deadline = time.monotonic() + 3
        code = None
        while time.monotonic() < deadline:
            with SmtpConn(gw.smtp_port) as c:
                code = c.read_reply().code
            if code == 220:
                break
            time.sleep(0.1)
        assert code == 220, "slot not freed after a connection closed"
    finally:
        first.close()
        second.close()


def test_tls_handshake_timeout(make_gateway):
    """A client that never sends its ClientHello is dropped after the session timeout."""
    gw = make_gateway(start=False)
    gw.set("mta.session_timeout", "2s")
    gw.start()
    stalled = gw.connect()
    assert stalled.ehlo().code == 250
    assert stalled.cmd("STARTTLS").code == 220
    raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=8)
    t0 = time.monotonic()
    try:
        assert stalled.wait_closed(6), "stalled STARTTLS handshake not closed"
        raw.settimeout(max(0.1, 6 - (time.monotonic() - t0)))
        try:
            while raw.recv(4096):
                pass
        except socket.timeout:
            raise AssertionError("stalled implicit-TLS connection not closed")
        except OSError:
            pass
        elapsed = time.monotonic() - t0
        assert elapsed <= 5.5, f"closed only after {elapsed:.1f}s"
    finally:
        stalled.close()
        raw.close()


def test_rejections_in_mail_log(make_gateway):
    gw = make_gateway(trusted_networks=[])
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<spammer@evil.test>").code == 250
        assert c.cmd("RCPT TO:<victim@unknown.test>").code == 554
        c.cmd("QUIT")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "victim@unknown.test" not in gw.log():
        time.sleep(0.1)
    log = gw.log()
    lines = [l for l in log.splitlines() if "victim@unknown.test" in l]
    assert lines, f"the relay rejection is not in mail.log:\n{log}"
    assert "554" in lines[0] or "Relaying denied" in lines[0], lines


def test_total_connection_limit(make_gateway):
    gw = make_gateway(start=False)
    # The per-client limit may not exceed the total (lowered first).
    gw.set("mta.max_connections_per_client", "2")
    gw.set("mta.max_connections", "2")
    gw.start()
    a, b = gw.connect(), gw.connect()
    try:
        with SmtpConn(gw.smtp_port) as third:
            r = third.read_reply_or_none(5)
            assert r is None or r.code == 421, f"third connection over max_connections = 2: {r}"
            assert third.wait_closed(3), "third connection not closed"
        assert a.cmd("NOOP").code == 250 and b.cmd("NOOP").code == 250
    finally:
        a.close()
        b.close()


def test_domain_import_applied_live(make_gateway):
    gw = make_gateway(trusted_networks=[])

    def rcpt_code():
        with gw.connect() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<c@d.test>")
            return c.cmd("RCPT TO:<a@corp.test>").code

    assert rcpt_code() == 554
    f = gw.root / "domains.toml"
    f.write_text(DOMAINS_TOML)
    gw.cli_ok("settings", "import", str(f))
    t0 = time.monotonic()
    code = None
    while time.monotonic() - t0 < 3:
        code = rcpt_code()
        if code == 250:
            break
        time.sleep(0.1)
    assert code == 250, "imported [[domain]] relay entry not applied within 3 s"


def test_trickling_client_times_out(make_gateway):
    """Slowloris: one byte every 0.5 s and never a line end. The session
    timeout bounds the time to receive a whole command line (or DATA line),
    not only the gap between two bytes (cf. Postfix smtpd_per_record_deadline),
    so such a client is dropped with 421 4.4.2 within a few timeouts."""
    gw = make_gateway(start=False)
    gw.set("mta.session_timeout", "2s")
    gw.start()
    in_command = gw.connect()
    assert in_command.ehlo().code == 250
    in_data = gw.connect()
    assert in_data.ehlo().code == 250
    assert in_data.cmd("MAIL FROM:<c@d.test>").code == 250
    assert in_data.cmd("RCPT TO:<a@b.test>").code == 250
    assert in_data.cmd("DATA").code == 354
    conns = {"command line": in_command, "DATA line": in_data}
    dropped: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 7 and len(dropped) < len(conns):
            for what, c in conns.items():
                if what in dropped:
                    continue
                try:
                    c.send(b"N" if what == "command line" else b"y")
                except OSError:
                    dropped[what] = time.monotonic() - t0
                    continue
                if c.wait_closed(0.25):
                    dropped[what] = time.monotonic() - t0
        assert set(dropped) == set(conns), \
            f"trickling client still connected after {time.monotonic() - t0:.1f}s " \
            f"with session_timeout = 2s (dropped: {dropped})"
        assert all(t <= 6 for t in dropped.values()), dropped
        for what, c in conns.items():
            if c.buf:
                assert b"421 4.4.2" in c.buf, (what, c.buf)
    finally:
        for c in conns.values():
            c.close()
    assert gw.queue() == []


def _connection_per_message(port: int, rounds: int, token: str) -> list[str]:
    """One client thread: `rounds` times connect, send one message, QUIT,
    reconnect at once after the 221. Returns every greeting that was not 220."""
    bad = []
    body = (f"Subject: {token}\r\n\r\nconnection per message\r\n.").encode()
    for i in range(rounds):
        with SmtpConn(port, timeout=30) as c:
            r = c.read_reply()
            if r.code != 220:
                bad.append(f"{token} round {i}: {r}")
                continue
            assert c.ehlo().code == 250
            assert c.cmd("MAIL FROM:<load@client.test>").code == 250
            assert c.cmd("RCPT TO:<bob@partner.test>").code == 250
            assert c.cmd("DATA").code == 354
            assert c.cmd(body).code == 250
            assert c.cmd("QUIT").code == 221
    return bad


def test_no_421_at_the_per_client_limit(make_gateway):
    """issue 10 item 5: 50 clients from 127.0.0.1 (exactly the default
    mta.max_connections_per_client), each reconnecting right after 221 for
    every message (50 x 20 messages): never a 421. The slot of a session is
    given back before its 221 is written."""
    from concurrent.futures import ThreadPoolExecutor

    gw = make_gateway()
    clients, rounds = 50, 20
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(_connection_per_message, gw.smtp_port, rounds, f"c{i}")
                   for i in range(clients)]
        bad = [line for f in futures for line in f.result(timeout=600)]
    assert bad == [], f"{len(bad)} refused greetings, e.g. {bad[:3]}"
    assert len(gw.queue_ids()) == clients * rounds
    refused = [l for l in gw.log().splitlines() if l.split(" ")[1:2] == ["refused"]]
    assert refused == [], refused[:3]


def test_limit_exempt_networks(make_gateway):
    """mta.limit_exempt_networks: clients in it are exempt from the
    per-client limit (not from the total); others get 421 past it."""
    for exempt, third_code in (("127.0.0.0/8", 220), ("10.0.0.0/8", 421)):
        gw = make_gateway(f"gw-{third_code}", start=False)
        gw.set("mta.max_connections_per_client", "2")
        gw.set("mta.limit_exempt_networks", exempt)
        gw.start()
        held = [gw.connect(), gw.connect()]
        try:
            with SmtpConn(gw.smtp_port) as third:
                r = third.read_reply()
                assert r.code == third_code, f"exempt {exempt}: {r}"
        finally:
            for c in held:
                c.close()
        gw.stop()


def _connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _greeting(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(512)
        if not chunk:
            break
        data += chunk
    return data


def test_trusted_clients_keep_a_reserved_share(make_gateway):
    """issue 16 item 7: untrusted clients may take max_connections minus a
    reserve (10%, at least 1); a trusted client still gets 220 when they
    have filled their share. trusted_networks covers only 127.0.0.2; the
    flood comes from 127.0.0.1."""
    gw = make_gateway(trusted_networks=["127.0.0.2/32"], start=False)
    gw.set("mta.max_connections_per_client", "10")
    gw.set("mta.max_connections", "10")
    gw.start()
    flood = []
    try:
        for i in range(9):
            s = _connect_from("127.0.0.1", gw.smtp_port)
            flood.append(s)
            g = _greeting(s)
            assert g.startswith(b"220 "), f"untrusted connection {i + 1} of 9: {g!r}"
        extra = _connect_from("127.0.0.1", gw.smtp_port)
        flood.append(extra)
        g = _greeting(extra)
        assert g.startswith(b"421 4.7.0"), f"untrusted connection past its share: {g!r}"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "reserved for smtp.trusted_networks" not in gw.log():
            time.sleep(0.1)
        assert "reserved for smtp.trusted_networks" in gw.log(), "refused for another reason"
        inside = _connect_from("127.0.0.2", gw.smtp_port)
        flood.append(inside)
        g = _greeting(inside)
        assert g.startswith(b"220 "), f"trusted client locked out by the flood: {g!r}"
        more = _connect_from("127.0.0.2", gw.smtp_port)
        flood.append(more)
        assert _greeting(more).startswith(b"421"), "the total cap still holds for trusted clients"
    finally:
        for s in flood:
            s.close()


def test_open_files_limit_is_checked_at_start_and_when_max_connections_changes(make_gateway):
    # 4,096 descriptors: enough for the default 1,000 connections (+ 1,024),
    # not for 5,000.
    gw = make_gateway(open_files=4096)
    assert "open-files limit: 4096 (hard limit 4096)" in gw.stderr(), gw.stderr()
    assert "is below the" not in gw.stderr(), gw.stderr()

    gw.set("mta.max_connections", "5000")
    short = "open-files limit 4096 is below the 6024 that mta.max_connections = 5000 needs"
    wait_until(lambda: short in gw.stderr(), 10, what="the open-files warning after the reload")
    # Connections are still served while the warning stands.
    with SmtpConn(gw.smtp_port) as c:
        assert c.banner().code == 220

    # Back within the limit: no new warning from that reload.
    gw.set("mta.max_connections", "2000")
    wait_until(lambda: gw.stderr().count("settings reloaded") == 2, 10, what="the second reload")
    time.sleep(1.5)
    assert gw.stderr().count("is below the") == 1, gw.stderr()

    # At start, with the setting stored: warned before any reload.
    gw.set("mta.max_connections", "5000")
    wait_until(lambda: gw.stderr().count(short) == 2, 10, what="the warning after the third reload")
    gw.stop()
    gw.start()
    start_text = gw.stderr().rsplit("===== start #2 =====", 1)[1]
    assert short in start_text, start_text
