"""`postern queue retry` while a backlog drains never delivers a message
twice (issue 11 item 4).

The scene an administrator meets after an outage: 1,000 queued messages,
each for one recipient at up.test (a receiver that was down and is back)
and one at slow.test (a receiver that keeps answering 451 for a while).
While the backlog drains to both, the administrator runs `postern queue
retry` again and again. Every message must arrive exactly once at each
receiver: a retry that rewrote a recipient's state while an attempt was
concluding used to turn `delivered` back into `deferred`, and the message
went out again.

Both receivers are the Python SMTP peer on loopback; Message-IDs are
counted at the receivers. Every loop is bounded in rounds and time.
"""

from __future__ import annotations

import collections
import re
import threading
import time

from delivery_support import SENDER, delivery_gateway, message_bytes, mx_zone, zone
from postern_testlib import queued_id, raw_transaction
from fixtures_postfix import free_port

UP_IP = "127.0.0.3"
SLOW_IP = "127.0.0.4"
MESSAGES = 1000
DEADLINE = 240          # seconds for the whole drain
SLOW_OPENS_AFTER = 15   # seconds after up.test
# up.test takes a moment per message, as a real receiver does: the drain
# then overlaps many `queue retry` runs, which is what made the race likely.
DATA_END_DELAY = 0.05
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.M | re.I)


class Switch:
    """A receiver's RCPT answer: 451 until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def rcpt(self, session, arg) -> str:
        return "250 2.1.5 Ok" if self.open.is_set() else "451 4.3.2 Try again later"


def _slow_accept(session, arg) -> str:
    time.sleep(DATA_END_DELAY)
    return "250 2.0.0 Ok: queued"


def _ids(peer) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for m in list(peer.messages):
        found = MESSAGE_ID.search(m.data)
        counts[found.group(1).decode() if found else "<none>"] += 1
    return counts


def test_retry_during_backlog_delivers_each_message_once(dns_server, make_peer, make_gateway):
    port = free_port(UP_IP, SLOW_IP)
    up, slow = Switch(), Switch()
    up_peer = make_peer(UP_IP, port, starttls=None, hostname="mx.up.test",
                        replies={"RCPT": up.rcpt, "DATA_END": _slow_accept})
    slow_peer = make_peer(SLOW_IP, port, starttls=None, hostname="mx.slow.test",
                          replies={"RCPT": slow.rcpt})
    dns_server.set_records(zone(mx_zone("up.test", UP_IP), mx_zone("slow.test", SLOW_IP)))
    gw = delivery_gateway(make_gateway, dns_server, port,
                          settings={"tls.outbound.mode": "none"})

    # The backlog: every message deferred at both receivers.
    queued = []
    for batch in range(MESSAGES // 100):
        queued += _submit_two(gw, 100, f"backlog {batch}")
    assert len(set(queued)) == MESSAGES

    # The outage ends at up.test; slow.test comes back after a while.
    up.open.set()
    start = time.monotonic()
    retries = failed = 0
    errors: list[str] = []
    while time.monotonic() - start < DEADLINE:
        if not slow.open.is_set() and time.monotonic() - start > SLOW_OPENS_AFTER:
            slow.open.set()
        r = gw.cli("queue", "retry", timeout=60)
        retries += 1
        if r.rc != 0:
            failed += 1
            errors.append(f"{time.monotonic() - start:.1f}s: {r.stderr.strip()[:200]}")
        if len(up_peer.messages) >= MESSAGES and len(slow_peer.messages) >= MESSAGES \
                and not gw.queue():
            break
        time.sleep(0.05)
    # Late duplicates have a moment to show up.
    time.sleep(2)

    problems = []
    for name, peer in (("up.test", up_peer), ("slow.test", slow_peer)):
        ids = _ids(peer)
        twice = {k: v for k, v in ids.items() if v > 1}
        if twice:
            problems.append(f"{name}: {len(twice)} message(s) delivered more than once, "
                            f"e.g. {list(twice.items())[:3]}")
        if len(ids) != MESSAGES:
            problems.append(f"{name}: {len(ids)} distinct messages arrived, not {MESSAGES}")
    assert not problems, "\n".join(problems) + f"\n({retries} retries, {failed} failed)"
    assert failed == 0, (f"{failed} of {retries} `queue retry` runs failed on a draining queue: "
                         + "; ".join(errors[:3]))
    assert gw.queue() == [], "the queue should be empty"


def _submit_two(gw, n: int, subject: str) -> list[str]:
    """n messages, each to bob@up.test and bob@slow.test, over one session."""
    ids = []
    with gw.connect() as c:
        assert c.ehlo().code == 250
        for i in range(n):
            data = message_bytes(f"{subject} {i}", to="bob@up.test")
            r = raw_transaction(c, SENDER, ["bob@up.test", "bob@slow.test"], data)
            assert r.code == 250, r
            ids.append(queued_id(r.first))
        c.cmd("QUIT")
    return ids
