"""Bounded memory per session, whatever the message size (issue 16 item 1,
SPEC §5): message bodies stream into the spool while they arrive and are
read back from disk for delivery.

Many clients send large bodies that never finish, while the gateway's
resident memory is read from /proc/<pid>/status: a bound, not a timing.
Before streaming, each in-flight message was held in RAM (a 48 MiB
transfer added ~48 MB of RSS), so these bounds failed by a wide margin.

Also: a message streamed and then abandoned by a disconnect leaves nothing
in queue/ (or tmp/), and a 30 MiB message is delivered byte-identical to a
downstream receiver.

Every loop is bounded in count and time; everything runs on loopback.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time

import pytest

from delivery_support import delivery_gateway, mx_zone, wait_outcome, zone
from fixtures_postfix import free_port
from postern_testlib import queued_id, raw_transaction

MIB = 1024 * 1024
# Lines of 1000 octets (998 + CRLF, RFC 5322's limit), some starting with a
# dot so that unstuffing is exercised.
LINE = b"x" * 998 + b"\r\n"
DOT_LINE = b".." + b"y" * 996 + b"\r\n"
PIECE = (LINE * 63 + DOT_LINE) * 4  # 256,000 octets on the wire
WOULD_BE = 48 * MIB


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def raise_fd_limit(needed: int) -> None:
    """The gateway inherits this process's limit: a socket and a spool file
    per session, twice over for the test's own sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def expect(reader: asyncio.StreamReader, code: str, what: str) -> None:
    """Read one (possibly multi-line) reply; it must start with `code`."""
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line.startswith(code.encode()), f"{what}: {line!r}"
        if line[3:4] != b"-":
            return


class Transfer:
    """One client in the middle of a message that never ends: DATA, or BDAT
    announcing the whole would-be size in one chunk."""

    def __init__(self, index: int, port: int, bdat: bool):
        self.index = index
        self.port = port
        self.bdat = bdat
        self.sent = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), 30)
        r, w = self.reader, self.writer
        await expect(r, "220", "banner")
        w.write(b"EHLO load.test\r\n")
        await expect(r, "250", "EHLO")
        w.write(b"MAIL FROM:<load@client.test>\r\nRCPT TO:<someone@partner.test>\r\n")
        await expect(r, "250", "MAIL")
        await expect(r, "250", "RCPT")
        if self.bdat:
            w.write(f"BDAT {WOULD_BE} LAST\r\n".encode())
        else:
            w.write(b"DATA\r\n")
            await expect(r, "354", "DATA")
        w.write(f"Subject: transfer {self.index}\r\nMessage-ID: <t{self.index}@client.test>\r\n\r\n"
                .encode())

    async def send(self, octets: int) -> None:
        assert self.writer is not None
        target = self.sent + octets
        while self.sent < target:
            self.writer.write(PIECE)
            self.sent += len(PIECE)
            await asyncio.wait_for(self.writer.drain(), 60)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def open_all(transfers: list[Transfer], parallel: int = 50) -> None:
    for i in range(0, len(transfers), parallel):
        await asyncio.gather(*(t.open() for t in transfers[i:i + parallel]))


async def send_all(transfers: list[Transfer], octets: int, watch=None, parallel: int = 100) -> None:
    """Every transfer sends `octets` more, `parallel` at a time (slow for each
    one); `watch()` runs after every group and may stop the run."""
    for i in range(0, len(transfers), parallel):
        await asyncio.gather(*(t.send(octets) for t in transfers[i:i + parallel]))
        if watch is not None:
            watch()


def settle_rss(pid: int) -> int:
    """RSS once the spool writes queued in the gateway have drained: the
    largest of a few readings a moment apart (bounded: 2 s)."""
    readings = []
    for _ in range(5):
        time.sleep(0.4)
        readings.append(rss_bytes(pid))
    return max(readings)


@pytest.fixture
def loaded_gateway(make_gateway):
    raise_fd_limit(8192)
    gw = make_gateway(start=False)
    gw.set("mta.max_connections", "1100")
    gw.set("mta.max_connections_per_client", "1100")
    gw.start()
    return gw


def test_rss_growth_per_session_is_bounded_whatever_the_message_size(loaded_gateway, report):
    gw = loaded_gateway
    pid = gw.proc.pid
    n = 100
    transfers = [Transfer(i, gw.smtp_port, bdat=i % 2 == 1) for i in range(n)]

    async def scenario() -> tuple[int, int, int]:
        try:
            await open_all(transfers)
            base = settle_rss(pid)
            await send_all(transfers, 4 * MIB)
            at_4 = settle_rss(pid)
            await send_all(transfers, 8 * MIB)
            at_12 = settle_rss(pid)
            return base, at_4, at_12
        finally:
            for t in transfers:
                t.abort()

    base, at_4, at_12 = asyncio.run(asyncio.wait_for(scenario(), 300))
    per_4 = (at_4 - base) / n
    per_12 = (at_12 - base) / n
    report(f"RSS {base / MIB:.0f} MiB with {n} sessions in DATA/BDAT; after 4 MiB each "
           f"{at_4 / MIB:.0f} MiB ({per_4 / 1024:.0f} KiB per session); after 12 MiB each "
           f"{at_12 / MIB:.0f} MiB ({per_12 / 1024:.0f} KiB per session)")
    assert per_4 <= MIB, f"{per_4 / MIB:.2f} MiB of RSS per session after 4 MiB each"
    assert per_12 <= MIB, f"{per_12 / MIB:.2f} MiB of RSS per session after 12 MiB each"
    # Nothing of the abandoned messages stays in the spool.
    wait_spool_empty(gw)


def test_a_thousand_unfinished_48_mib_transfers_stay_under_1_5_gb(loaded_gateway, report):
    gw = loaded_gateway
    pid = gw.proc.pid
    n = 1000
    limit = 1500 * 1000 * 1000
    transfers = [Transfer(i, gw.smtp_port, bdat=i % 2 == 1) for i in range(n)]
    peak = [0]

    def watch() -> None:
        rss = rss_bytes(pid)
        peak[0] = max(peak[0], rss)
        # Stop early rather than push the machine into swap or the OOM killer.
        assert rss < limit, f"RSS {rss / 1e6:.0f} MB with transfers still being sent"

    async def scenario() -> None:
        try:
            await open_all(transfers)
            watch()
            # 3 MiB each (3 GB in all): the old code held every byte of it.
            await send_all(transfers, 3 * MIB, watch)
            peak[0] = max(peak[0], settle_rss(pid))
        finally:
            for t in transfers:
                t.abort()

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(scenario(), 600))
    sent = sum(t.sent for t in transfers)
    report(f"{n} unfinished transfers, {sent / 1e9:.2f} GB sent in {time.monotonic() - started:.0f} s: "
           f"peak RSS {peak[0] / 1e6:.0f} MB (bound {limit / 1e6:.0f} MB)")
    assert peak[0] < limit
    assert gw.running
    wait_spool_empty(gw, timeout=60)


def wait_spool_empty(gw, timeout: float = 20) -> None:
    """After the clients went away: nothing in queue/ or tmp/ (bounded wait)."""
    tmp = gw.data_dir / "spool" / "tmp"
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(os.listdir(gw.queue_dir)) + sorted(os.listdir(tmp))
        if not left:
            return
        assert time.monotonic() < deadline, f"left in the spool: {left[:10]}"
        time.sleep(0.2)


def test_streamed_message_aborted_by_disconnect_leaves_nothing(make_gateway):
    gw = make_gateway()
    # Small messages still work, before and after.
    with gw.connect() as c:
        c.ehlo()
        r = raw_transaction(c, "a@client.test", ["b@partner.test"], b"Subject: before\r\n\r\nhi\r\n")
        assert r.code == 250, r
    before = gw.spool_ids()
    assert len(before) == 1
    for verb in ("DATA", "BDAT"):
        c = gw.connect()
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@partner.test>").code == 250
        if verb == "DATA":
            assert c.cmd("DATA").code == 354
        else:
            c.send(f"BDAT {20 * MIB} LAST\r\n")
        c.send(b"Subject: never finished\r\n\r\n")
        for _ in range(32):  # 8 MiB: well past the session's buffers
            c.send(PIECE)
        c.close()
        wait_spool_empty_but(gw, before)
    with gw.connect() as c:
        c.ehlo()
        r = raw_transaction(c, "a@client.test", ["b@partner.test"], b"Subject: after\r\n\r\nhi\r\n")
        assert r.code == 250, r
    assert len(gw.spool_ids()) == 2


def wait_spool_empty_but(gw, keep: list[str], timeout: float = 20) -> None:
    tmp = gw.data_dir / "spool" / "tmp"
    deadline = time.monotonic() + timeout
    while True:
        extra = [n for n in os.listdir(gw.queue_dir) if n.split(".")[0] not in keep]
        extra += os.listdir(tmp)
        if not extra:
            return
        assert time.monotonic() < deadline, f"left in the spool: {extra}"
        time.sleep(0.1)
    # unreachable


def big_message(size: int) -> bytes:
    """A message of exactly `size` octets: headers, then lines of varied
    length (some starting with a dot, some 8-bit), CRLF line ends."""
    head = b"From: <alice@origin.test>\r\nTo: <bob@partner.test>\r\nSubject: thirty\r\n" \
           b"Message-ID: <thirty@origin.test>\r\nMIME-Version: 1.0\r\n" \
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    lines = []
    total = len(head)
    i = 0
    while total < size - 2000:
        n = 20 + (i * 37) % 900
        first = b"." if i % 11 == 0 else b"a"
        body = (b"%08d " % i) + bytes([0x61 + (i + k) % 26 for k in range(n)])
        if i % 17 == 0:
            body += "é".encode()
        line = first + body + b"\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    filler = size - total - 2
    lines.append(b"z" * filler + b"\r\n")
    out = head + b"".join(lines)
    assert len(out) == size
    return out


def stuff(message: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency: double a dot at the start of a line."""
    return b"".join(b"." + line if line.startswith(b".") else line
                    for line in message.split(b"\r\n")[:-1] for line in [line + b"\r\n"])


def test_30_mib_message_is_delivered_byte_identical(dns_server, make_gateway, make_peer):
    ip = "127.0.0.7"
    port = free_port(ip)
    dns_server.set_records(zone(mx_zone("partner.test", ip)))
    peer = make_peer(ip, port, starttls=None)
    gw = delivery_gateway(make_gateway, dns_server, port, settings={"tls.outbound.mode": "none"})
    message = big_message(30 * MIB)
    with gw.connect(timeout=120) as c:
        c.ehlo()
        r = raw_transaction(c, "alice@origin.test", ["bob@partner.test"], stuff(message))
        assert r.code == 250, r
        qid = queued_id(r.text)
    assert qid
    outcome = wait_outcome(gw, qid, "bob@partner.test", timeout=120)
    assert outcome["event"] == "delivered", outcome
    got = peer.wait_for_messages(1, timeout=30)[0]
    # What arrives is our Received: header, then the message exactly as sent.
    assert got.data.startswith(b"Received: from ")
    assert got.data.endswith(message)
    received = got.data[: len(got.data) - len(message)]
    assert received.count(b"\r\n") == received.count(b"\r\n\t") + 1, received
    assert "SIZE=" in got.mail_params and "BODY=8BITMIME" in got.mail_params, got.mail_params
    assert int(got.mail_params.split("SIZE=")[1].split()[0]) == len(got.data)


def test_messages_refused_mid_stream_leave_nothing(make_gateway):
    """Over the size limit or with a bare LF, found megabytes into the body:
    the 552/550 comes at the end of data, nothing is queued, and the
    session goes on."""
    gw = make_gateway(start=False)
    gw.set("mta.max_message_size", str(2 * MIB))
    gw.start()
    with gw.connect(timeout=30) as c:
        c.ehlo()
        for case in ("data-too-big", "bdat-too-big", "data-bare-lf", "bdat-bare-lf"):
            assert c.cmd("MAIL FROM:<a@client.test>").code == 250
            assert c.cmd("RCPT TO:<b@partner.test>").code == 250
            body = b"Subject: refused\r\n\r\n" + PIECE * 4  # 1 MB, clean
            if case.endswith("too-big"):
                body += PIECE * 8                          # 3 MB in all
            else:
                body += b"a bare\nline feed\r\n" + PIECE * 2
            if case.startswith("data"):
                assert c.cmd("DATA").code == 354
                c.send(body + b".\r\n")
            else:
                half = len(body) // 2
                c.send(f"BDAT {half}\r\n".encode() + body[:half])
                first = c.read_reply(30)
                c.send(f"BDAT {len(body) - half} LAST\r\n".encode() + body[half:])
                if first.code != 250:  # refused at once after the first chunk
                    assert case == "bdat-too-big" and first.code == 552, (case, first)
                    assert c.read_reply(30).code == 503, case  # no transaction left
                    wait_spool_empty(gw)
                    continue
            r = c.read_reply(30)
            expected = 552 if case.endswith("too-big") else 550
            assert r.code == expected, (case, r)
            wait_spool_empty(gw)
        r = raw_transaction(c, "a@client.test", ["b@partner.test"], b"Subject: fine\r\n\r\nok\r\n")
        assert r.code == 250, r
    assert len(gw.spool_ids()) == 1


def test_queue_file_of_the_previous_format_is_delivered(dns_server, make_gateway, make_peer):
    """A `POSTERN-SPOOL 1` file (SIZE in plain decimal), as the binary
    before streaming wrote it, left in queue/ by an upgrade: verified at
    start, delivered, removed. The current binary writes version 2."""
    import json
    import zlib

    ip = "127.0.0.7"
    port = free_port(ip)
    dns_server.set_records(zone(mx_zone("partner.test", ip)))
    peer = make_peer(ip, port, starttls=None)
    gw = delivery_gateway(make_gateway, dns_server, port, settings={"tls.outbound.mode": "none"},
                          start=False)
    message = (b"Received: from old.client.test ([192.0.2.9])\r\n\tby mx.postern.test (Postern) with ESMTP;"
               b" Thu, 1 Jan 2026 00:00:00 +0000\r\nSubject: left by the previous release\r\n"
               b"Message-ID: <v1@origin.test>\r\n\r\n.a line with a dot\r\nbody\r\n")
    envelope = {"sender": "alice@origin.test", "recipients": ["bob@partner.test"],
                "received_at": int(time.time()), "client_addr": "192.0.2.9:25", "helo": "old.client.test",
                "tls": None, "body": "7BIT", "smtputf8": False, "message_id": "<v1@origin.test>"}
    data = b"POSTERN-SPOOL 1\n" + json.dumps(envelope, separators=(",", ":")).encode() + \
        b"\nSIZE %d\n" % len(message) + message
    data += b"\nEND %08x\n" % zlib.crc32(data)
    gw.start()
    gw.stop()  # the spool directories exist now; plant the file while stopped
    qid = "01JZ3K5Q8M0ABCDE"
    path = gw.queue_dir / qid
    path.write_bytes(data)
    os.chmod(path, 0o600)
    gw.start()
    outcome = wait_outcome(gw, qid, "bob@partner.test", timeout=30)
    assert outcome["event"] == "delivered", outcome
    got = peer.wait_for_messages(1, timeout=10)[0]
    assert got.data == message
    assert not (gw.corrupt_dir / qid).exists()
    wait_spool_empty(gw)
    # New messages are written in version 2 (the peer is gone, so this one
    # stays queued, deferred).
    peer.stop()
    with gw.connect() as c:
        c.ehlo()
        r = raw_transaction(c, "alice@origin.test", ["bob@partner.test"], b"Subject: v2\r\n\r\nx\r\n")
        assert r.code == 250, r
        new = queued_id(r.text)
    head = (gw.queue_dir / new).read_bytes()[:16]
    assert head == b"POSTERN-SPOOL 2\n", head
