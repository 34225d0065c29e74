"""SMTP smuggling (CVE-2023-51764 and relatives) end to end, through real MTAs
on both sides of the gateway:

  attacker socket -> upstream Postfix (127.0.0.20) -TLS-> Postern -> downstream Postfix (127.0.0.3)
  attacker socket -> Postern -> downstream Postfix (127.0.0.3)

The property: never two messages where the sender sent one. Per hop:

* Through the upstream: the upstream Postfix (3.7, default lenient:
  `smtpd_forbid_bare_newline = no`) takes a bare LF as a line end, so it
  ends DATA itself at `\\n.\\n`, `\\n.\\r\\n`, `\\r\\n.\\n`, `\\0\\n.\\n` and runs the
  smuggled commands as a second transaction of its own; everything else it
  keeps as one message (it stores a bare CR as a space, and unstuffs a
  `.\\0` line to `\\0`). `smtpd_forbid_bare_newline` is left at `no` on
  purpose: the lenient upstream is the attacker-friendly case (and its
  default exclusions, `$mynetworks`, would exempt the loopback attacker
  anyway). That is the upstream's interpretation, and this test
  does not hide it: it counts, per variant, the messages the upstream queued,
  the ones it relayed to Postern (their `queued as` IDs), the ones Postern
  accepted from it, and the ones the downstream received (matched by the
  downstream's queue ID in Postern's `delivered` reply), and requires them to
  be the same messages at every hop. The attacker's own message is exactly
  one at every hop; a message to the smuggled recipient reaches the
  downstream only if the upstream itself queued one.
* Direct to Postern: every look-alike with a bare CR or LF is refused with
  `550 5.5.2` and the downstream receives nothing; the NUL look-alikes and a
  body of dot lines (`.`, `..`, a lone `.` followed by a whole smuggled
  transaction) give exactly one message (or a `550 5.5.2` for the NUL ones),
  which the downstream stores byte for byte as sent after dot-unstuffing.
  The downstream Postfix is lenient as well: were Postern to relay a lone
  `.` line unstuffed, it would end DATA there and run the smuggled commands
  (the control test shows a second Postfix doing exactly that).
* At the end, once Postern has closed its idle connections to the
  downstream, the downstream's own session counters (`data=N` in its
  `disconnect from` lines) must add up to the messages Postern delivered:
  no DATA command was ever executed that Postern did not send.

One upstream / gateway / downstream trio serves the whole module; each
variant has its own recipients (`victim-<path>-<variant>@corp.test`, and
`victim2-...` for the smuggled envelope), so every test reads only its own
messages. Every wait is bounded; every address is loopback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from delivery_support import log_events, mx_zone, wait_for, wait_outcome
from fixtures_dns import DnsServer, wait_ready
from fixtures_postfix import DownstreamPostfix, UpstreamPostfix, delivered_to, free_port, received_headers
from postern_testlib import Gateway, Reply, SmtpConn, queued_id
from test_smuggling import BARE_ENDINGS, NUL_ENDINGS, SMUGGLED

DOMAIN = "corp.test"
UPSTREAM_IP = "127.0.0.20"
DOWNSTREAM_IP = "127.0.0.3"
ATTACKER = "attacker@evil.test"
DOT_LINES = "dot-lines"     # not a fake ending: a body of lines that need dot-stuffing

# ---------------------------------------------------------------------------
# the attack


@dataclass
class Attack:
    tag: str
    rcpt: str            # the attacker's envelope recipient
    rcpt2: str           # the recipient of the smuggled envelope
    data: bytes          # everything sent after the 354, final ".\r\n" included
    message: bytes       # what a strict receiver stores: the content, dot-unstuffed

    @property
    def rcpts(self) -> tuple[str, str]:
        return (self.rcpt, self.rcpt2)


def unstuff(content: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, receiving side: one leading dot removed
    from every CRLF-delimited line."""
    lines = content.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


def stuff(message: bytes) -> bytes:
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


def make_attack(path: str, tag: str) -> Attack:
    rcpt = f"victim-{path}-{tag.lower()}@{DOMAIN}"
    rcpt2 = f"victim2-{path}-{tag.lower()}@{DOMAIN}"
    assert b"victim2@corp.test" in SMUGGLED
    smuggled = SMUGGLED.replace(b"victim2@corp.test", rcpt2.encode())
    # With Message-ID and Date present, no MTA on the way adds a header.
    head = (f"From: {ATTACKER}\r\nSubject: first {path} {tag}\r\n"
            f"Message-ID: <{path}-{tag.lower()}@evil.test>\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n").encode()
    if tag == DOT_LINES:
        # Lines a sender must stuff; after unstuffing the message holds a
        # lone "." line followed by a whole SMTP transaction and its own
        # lone ".": relayed without stuffing, a next hop would see two messages.
        message = (head + b"first body\r\n.\r\n" + smuggled + b".\r\n..\r\n.hidden\r\n...\r\n. \r\n"
                   b"last line\r\n")
        return Attack(tag, rcpt, rcpt2, stuff(message) + b".\r\n", message)
    ending = {**BARE_ENDINGS, **NUL_ENDINGS}[tag]
    content = head + b"first body" + ending + smuggled
    return Attack(tag, rcpt, rcpt2, content + b".\r\n", unstuff(content))


def send_attack(host: str, port: int, a: Attack, banner_from: str) -> tuple[list[Reply], int]:
    """One transaction whose DATA holds the fake ending, the smuggled
    envelope, the real end of data and QUIT, in one write (as in
    test_smuggling.smuggle). Returns the replies after the 354 and the
    client's local port."""
    with SmtpConn(port, host=host, timeout=5) as c:
        r = c.read_reply()
        assert r.code == 220 and banner_from in r.first, r
        local_port = c.sock.getsockname()[1]
        assert c.ehlo().code == 250
        assert c.cmd(f"MAIL FROM:<{ATTACKER}>").code == 250
        assert c.cmd(f"RCPT TO:<{a.rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(a.data + b"QUIT\r\n")
        replies, _closed = c.read_all_replies(10)
    assert replies, f"{a.tag}: no reply at all to the end of data"
    return replies, local_port


# ---------------------------------------------------------------------------
# the trio: one upstream, one gateway, one downstream for the module


@dataclass
class Trio:
    dns: DnsServer
    down: DownstreamPostfix
    gw: Gateway
    up: UpstreamPostfix


@pytest.fixture(scope="module")
def trio(tmp_path_factory, store_template):
    cleanups = []
    try:
        dns = DnsServer().start()
        cleanups.append(dns.stop)
        wait_ready(dns)
        port = free_port(DOWNSTREAM_IP)
        down = DownstreamPostfix("smug-down", DOWNSTREAM_IP, port, domains=[DOMAIN])
        cleanups.append(down.remove)
        down.start()
        dns.set_records(mx_zone(DOMAIN, DOWNSTREAM_IP))
        gw = Gateway(tmp_path_factory.mktemp("smuggling-e2e") / "gw", store_template=store_template,
                     paused=False, mx_port=port, nameservers=[dns.nameserver])
        cleanups.append(gw.kill9)
        gw.start()
        # The upstream relays everything to Postern over TLS. No connection
        # caching (one session per message), so that "every session that
        # carried a message has ended" comes at once.
        up = UpstreamPostfix("smug-up", UPSTREAM_IP, relay_port=gw.smtp_port, tls_level="encrypt",
                             main_cf={"smtp_connection_cache_on_demand": "no"})
        cleanups.append(up.remove)
        up.start()
        yield Trio(dns, down, gw, up)
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception:
                pass


@pytest.fixture(autouse=True)
def _attach_logs(request, trio):
    """A failed test gets the gateway's and both Postfixes' log tails (the
    conftest / fixtures_postfix report hooks read these attributes)."""
    request.node._postern_gateways = [trio.gw]
    request.node._postfix_instances = [[trio.up, trio.down]]


# ---------------------------------------------------------------------------
# reading each hop


_UP_STATUS = r"(?m)^.*: {qid}: to=<([^>]+)>, relay=(\S+), .*status=(\w+) \((.*)\)$"


def upstream_outcomes(up: UpstreamPostfix, qids: list[str], timeout: float = 20) -> dict[str, tuple]:
    """For each upstream queue ID, its final (recipient, status, reply): sent
    or bounced (a deferral is waited out, bounded)."""
    def final():
        log = up.log()
        out = {}
        for q in qids:
            done = [m for m in re.finditer(_UP_STATUS.format(qid=re.escape(q)), log)
                    if m.group(3) in ("sent", "bounced")]
            if not done:
                return None
            out[q] = (done[-1].group(1).lower(), done[-1].group(3), done[-1].group(4))
        return out
    try:
        return wait_for(final, timeout, f"a final status for upstream messages {qids}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- upstream maillog --\n{up.log()[-3000:]}") from None


def wait_sessions_closed(gw: Gateway, ip: str, timeout: float = 15) -> None:
    """Until every Postern session from `ip` that accepted a message has
    ended: the `accepted=N` of its `disconnect` lines add up to its
    `accepted` lines. A message Postern made of the tail of another would be
    logged before that session's disconnect, so it is in the count."""
    def closed():
        acc = len(log_events(gw, "accepted", client=f"[{ip}]"))
        disc = sum(int(e.get("accepted", "0")) for e in log_events(gw, "disconnect")
                   if e.get("client", "").startswith(f"{ip}:"))
        return acc == disc
    try:
        wait_for(closed, timeout, f"Postern's sessions from {ip} to end")
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- mail.log --\n{gw.log()[-3000:]}") from None


def wait_disconnect(gw: Gateway, client: str, timeout: float = 10) -> dict:
    try:
        return wait_for(lambda: (log_events(gw, "disconnect", client=client) or [None])[0], timeout,
                        f"Postern's disconnect line for {client}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- mail.log --\n{gw.log()[-3000:]}") from None


def accepted_for(gw: Gateway, a: Attack, client: str | None = None) -> list[dict]:
    wanted = {f"<{r}>" for r in a.rcpts}
    return [e for e in log_events(gw, "accepted") if e.get("to") in wanted
            and (client is None or e.get("client") == client)]


def postern_to_downstream_ids(gw: Gateway) -> set[str]:
    """The downstream's queue IDs from Postern's `delivered` replies."""
    return {queued_id(e.get("reply", "")) for e in log_events(gw, "delivered")
            if f"[{DOWNSTREAM_IP}]" in e.get("relay", "")} - {None}


def downstream_id(raw: bytes) -> str:
    """The downstream's queue ID, from its own (topmost) Received header."""
    top = received_headers(raw)[0]
    m = re.search(r"\(Postfix\) with \S+ id ([0-9A-Za-z]+)", top)
    assert m, top
    return m.group(1)


def deliver_all(trio: Trio, postern_ids: list[str]) -> dict[str, str]:
    """Wait for Postern's outcome of each message: delivered to the downstream.
    Returns Postern ID -> the downstream's queue ID."""
    out = {}
    for pid in postern_ids:
        o = wait_outcome(trio.gw, pid)
        assert o["event"] == "delivered", o["line"]
        did = queued_id(o.get("reply", ""))
        assert did, o["line"]
        out[pid] = did
    return out


def downstream_messages(trio: Trio, a: Attack, count: int, timeout: float = 15) -> list[bytes]:
    """The downstream's messages for the attack's two recipients, once there
    are (at least) `count` of them."""
    def mine():
        msgs = [m for m in trio.down.messages() if delivered_to(m) in a.rcpts]
        return msgs if len(msgs) >= count else None
    if count == 0:
        return [m for m in trio.down.messages() if delivered_to(m) in a.rcpts]
    try:
        return wait_for(mine, timeout, f"{count} message(s) for {a.rcpts} in the downstream")
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- downstream maillog --\n{trio.down.log()[-3000:]}") from None


def assert_downstream_only_from_postern(trio: Trio) -> None:
    """Every message the downstream's smtpd ever received is one Postern
    reported as delivered (by the downstream's own queue ID)."""
    wait_for(lambda: not trio.down.queue(), 10, "the downstream's queue to empty")
    made = set(re.findall(r"smtpd\[\d+\]: ([0-9A-Za-z]+): client=", trio.down.log()))
    extra = made - postern_to_downstream_ids(trio.gw)
    assert not extra, (f"the downstream received message(s) {sorted(extra)} that Postern never delivered"
                       f"\n-- downstream maillog --\n{trio.down.log()[-3000:]}")


def stored_as_sent(stored: bytes, message: bytes) -> None:
    """The downstream's Maildir copy is the message as sent (CRLF stored as
    LF by Postfix's virtual(8)), after the trace headers the MTAs prepend."""
    expected = message.replace(b"\r\n", b"\n")
    assert stored.endswith(expected), \
        f"the downstream's copy differs from what was sent:\nsent   {expected!r}\nstored {stored!r}"
    prefix = stored[: len(stored) - len(expected)]
    for line in prefix.split(b"\n")[:-1]:
        assert line[:1] in (b" ", b"\t") or re.match(
            rb"(Return-Path|X-Original-To|Delivered-To|Received):", line), \
            f"unexpected header {line!r} before the message:\n{stored!r}"


# ---------------------------------------------------------------------------
# 1. through the upstream Postfix

UPSTREAM_TAGS = [*BARE_ENDINGS, *NUL_ENDINGS, DOT_LINES]


@pytest.mark.parametrize("tag", UPSTREAM_TAGS)
def test_through_upstream_postfix_same_messages_at_every_hop(trio, tag, report):
    gw, up = trio.gw, trio.up
    a = make_attack("up", tag)
    replies, _ = send_attack(up.ip, up.port, a, "upstream smug-up")
    # What the upstream made of it: one 250 with a queue ID per message it queued.
    up_ids = [queued_id(r.first) for r in replies if r.code == 250 and queued_id(r.first)]
    assert up_ids, f"the upstream queued nothing: {replies}"
    assert len(up_ids) <= 2, replies

    # hop 1: the upstream relays each of its messages to Postern
    outcomes = upstream_outcomes(up, up_ids)
    for q, (rcpt, status, text) in outcomes.items():
        assert rcpt in a.rcpts, f"upstream message {q} is for {rcpt}"
        assert status == "sent" or "5.5.2" in text, f"upstream message {q}: {status} ({text})"
    relayed = {q: queued_id(text) for q, (_, status, text) in outcomes.items() if status == "sent"}
    assert all(relayed.values()), relayed

    # Postern accepted exactly those messages from the upstream, no more.
    wait_sessions_closed(gw, UPSTREAM_IP)
    accepted = accepted_for(gw, a)
    assert all(e["client"] == f"[{UPSTREAM_IP}]" for e in accepted), [e["line"] for e in accepted]
    assert sorted(e["id"] for e in accepted) == sorted(relayed.values()), (
        f"upstream relayed {relayed}, Postern accepted {[e['line'] for e in accepted]}")

    # hop 2: each accepted message is delivered to the downstream, once
    down_ids = deliver_all(trio, [e["id"] for e in accepted])
    msgs = downstream_messages(trio, a, len(accepted))
    assert sorted(downstream_id(m) for m in msgs) == sorted(down_ids.values()), (
        f"downstream holds {[downstream_id(m) for m in msgs]}, Postern delivered {down_ids}")

    # Per recipient: the same count at every hop; the attacker's message is one.
    counts = {}
    for r in a.rcpts:
        n_up = sum(1 for rc, _, _ in outcomes.values() if rc == r)
        n_rel = sum(1 for q in relayed if outcomes[q][0] == r)
        n_acc = sum(1 for e in accepted if e["to"] == f"<{r}>")
        n_down = sum(1 for m in msgs if delivered_to(m) == r)
        counts[r] = (n_up, n_rel, n_acc, n_down)
        assert n_rel == n_acc == n_down, f"{r}: upstream relayed {n_rel}, Postern accepted {n_acc}, " \
                                         f"downstream received {n_down}"
    assert counts[a.rcpt][0] == 1, f"the upstream queued {counts[a.rcpt][0]} messages for {a.rcpt}"
    if counts[a.rcpt2][0] == 0 and counts[a.rcpt][3] == 1:
        # One message at the upstream: the smuggled text stays inside it.
        [msg] = [m for m in msgs if delivered_to(m) == a.rcpt]
        assert b"smuggled body" in msg and b"RCPT TO:<" + a.rcpt2.encode() + b">" in msg, msg
    if tag == DOT_LINES:
        [msg] = msgs
        body = a.message.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        assert msg.endswith(b"\n\n" + body), f"dot lines changed on the way:\n{msg!r}"
    assert_downstream_only_from_postern(trio)

    n_up = len(up_ids)
    report(f"{tag}: upstream Postfix queued {n_up} message{'s' if n_up > 1 else ''}"
           f"{' (it ended DATA itself and ran the smuggled commands)' if n_up > 1 else ''}; "
           f"relayed {len(relayed)}, Postern accepted {len(accepted)}, downstream received {len(msgs)}")


# ---------------------------------------------------------------------------
# 2. straight to Postern, on to the downstream Postfix


@pytest.mark.parametrize("tag", list(BARE_ENDINGS))
def test_direct_bare_endings_refused_nothing_downstream(trio, tag):
    gw = trio.gw
    a = make_attack("direct", tag)
    replies, port = send_attack("127.0.0.1", gw.smtp_port, a, gw.hostname)
    first = replies[0]
    assert first.code == 550 and first.lines[0].startswith("5.5.2"), \
        f"end of data with a bare line ending answered {first} (all: {replies})"
    assert not any(r.code < 400 for r in replies[1:] if r.code != 221), \
        f"smuggled commands were answered: {replies}"
    disc = wait_disconnect(gw, f"127.0.0.1:{port}")
    assert disc["accepted"] == "0", disc["line"]
    assert accepted_for(gw, a) == []
    rejected = [e for e in log_events(gw, "rejected") if e.get("to") == f"<{a.rcpt}>"]
    assert len(rejected) == 1 and rejected[0]["reply"].startswith("550 5.5.2"), \
        [e["line"] for e in rejected]
    assert not [m for m in gw.queue() if set(r["address"] for r in m["recipients"]) & set(a.rcpts)]
    # Postern accepted nothing, so there is nothing in flight to wait for.
    assert downstream_messages(trio, a, 0) == []
    assert_downstream_only_from_postern(trio)


@pytest.mark.parametrize("tag", [*NUL_ENDINGS, DOT_LINES])
def test_direct_one_message_stored_downstream_as_sent(trio, tag):
    gw = trio.gw
    a = make_attack("direct", tag)
    replies, port = send_attack("127.0.0.1", gw.smtp_port, a, gw.hostname)
    disc = wait_disconnect(gw, f"127.0.0.1:{port}")
    codes = [r.code for r in replies]
    assert 354 not in codes, f"smuggled DATA was answered: {replies}"
    if replies[0].code == 550 and tag != DOT_LINES:
        # Refusing a NUL look-alike is allowed; then nothing goes anywhere.
        assert replies[0].lines[0].startswith("5.5.2"), replies
        assert disc["accepted"] == "0" and accepted_for(gw, a) == []
        assert downstream_messages(trio, a, 0) == []
        assert_downstream_only_from_postern(trio)
        return
    assert replies[0].code == 250, replies
    assert codes[1:] in ([], [221]), f"extra replies: {replies}"
    pid = queued_id(replies[0].first)
    assert pid, replies[0]
    assert disc["accepted"] == "1", disc["line"]
    accepted = accepted_for(gw, a)
    assert [(e["id"], e["to"]) for e in accepted] == [(pid, f"<{a.rcpt}>")], [e["line"] for e in accepted]

    down_ids = deliver_all(trio, [pid])
    [msg] = downstream_messages(trio, a, 1)
    assert delivered_to(msg) == a.rcpt and downstream_id(msg) == down_ids[pid], msg[:600]
    stored_as_sent(msg, a.message)
    assert b"smuggled body" in msg
    assert_downstream_only_from_postern(trio)
    assert downstream_messages(trio, a, 0) == [msg]


def test_control_unstuffed_relay_would_make_two_messages_downstream(make_downstream):
    """The control: the downstream Postfix is a next hop smuggling works
    against. The dot-lines message sent to it the way a relay that forgot
    dot-stuffing would send it becomes two messages there, one of them for
    the smuggled recipient; so the tests above would see it if Postern
    relayed a lone "." line unstuffed. (A separate instance, so that the
    trio's downstream only ever hears from Postern.)"""
    down = make_downstream("smug-control", "127.0.0.4", domains=[DOMAIN])
    a = make_attack("control", DOT_LINES)
    unstuffed = Attack(a.tag, a.rcpt, a.rcpt2, a.message + b".\r\n", a.message)
    replies, _ = send_attack(down.ip, down.port, unstuffed, "downstream smug-control")
    queued = [queued_id(r.first) for r in replies if r.code == 250 and queued_id(r.first)]
    assert len(queued) == 2, f"the unstuffed lone dot did not split the message: {replies}"
    msgs = down.wait_for_messages(2, timeout=15)
    assert sorted(delivered_to(m) for m in msgs) == sorted(a.rcpts), msgs
    [smuggled] = [m for m in msgs if delivered_to(m) == a.rcpt2]
    assert b"Subject: smuggled" in smuggled


# ---------------------------------------------------------------------------
# 3. the downstream's own count of DATA commands


def test_downstream_ran_one_data_per_postern_delivery(trio, report):
    """After the tests above (pytest runs them in file order): once Postern
    has closed its connections to the downstream (idle ones are closed after
    5 s), the downstream's per-session counters must add up to exactly the
    messages Postern delivered: a message split by the downstream would be
    one more `mail=` / `data=`."""
    down, gw = trio.down, trio.gw

    def all_closed():
        log = down.log()
        opened = len(re.findall(r"smtpd\[\d+\]: connect from ", log))
        ended = re.findall(r"smtpd\[\d+\]: disconnect from .*", log)
        return (ended,) if opened == len(ended) else None   # a tuple: no session at all is an answer too
    try:
        [ended] = wait_for(all_closed, 20, "Postern's connections to the downstream to close", interval=0.25)
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- downstream maillog --\n{down.log()[-3000:]}") from None

    def counter(name: str) -> int:
        # "data=1", or "data=1/2" (succeeded/attempted): every attempt counts.
        total = 0
        for line in ended:
            m = re.search(rf" {name}=(\d+)(?:/(\d+))?", line)
            if m:
                total += int(m.group(2) or m.group(1))
        return total

    delivered = [e for e in log_events(gw, "delivered") if f"[{DOWNSTREAM_IP}]" in e.get("relay", "")]
    if not delivered:
        pytest.skip("nothing was delivered: this check runs after the tests above")
    stored = down.messages()
    assert counter("mail") == counter("data") == len(delivered) == len(stored), (
        f"downstream sessions: mail={counter('mail')} data={counter('data')}; Postern delivered "
        f"{len(delivered)}; downstream stored {len(stored)}\n" + "\n".join(ended))
    assert_downstream_only_from_postern(trio)
    report(f"downstream: {len(ended)} sessions from Postern, data={counter('data')}, "
           f"{len(stored)} messages stored, Postern delivered {len(delivered)}")
