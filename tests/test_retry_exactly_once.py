"""`postern queue retry` while a backlog drains never delivers a message
twice (issue 11 item 4).

The scene an administrator meets after an outage: 1,000 queued messages,
each for one recipient at up.test (a receiver that was down and is back)
and one at slow.test (a receiver that keeps answering 451 for a while).
While the backlog drains to both, `postern queue retry` runs again and
again, from several shells at once. Every message must arrive exactly once
at each receiver: a retry that rewrote a recipient's state while an attempt
was concluding used to turn `delivered` back into `deferred`, and the
message went out again.

A whole-queue retry sweeps the queue in the same order the runner drains
it, so the two rarely meet on one message at the wrong moment. To make
the race certain instead of rare, a sample of messages also gets a
`queue retry ID` from up.test's receiver itself, sent while that message's
attempt is waiting for the end-of-data reply, and the gateway holds that
retry's state edit for a while between reading and writing
(`POSTERN_TEST_RETRY_EDIT_PAUSE_MS`, a test-only knob). Under the
single-writer rule (docs/queue-format.md) that retry waits for the attempt
and changes nothing; with the old read-modify-write it wrote `deferred`
back over `delivered` and the sampled messages were delivered twice (see
the report of the `events` branch for the run on the old code).

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
DEADLINE = 50           # seconds for the whole drain
SLOW_OPENS_AFTER = 8    # seconds after up.test
RETRY_SHELLS = 2        # whole-queue `queue retry` loops running side by side
SAMPLE_EVERY = 100      # every 100th message also gets a targeted retry
# The targeted retry: up.test holds its end-of-data reply HOLD seconds after
# starting `queue retry ID`; the gateway holds that retry's edit PAUSE_MS
# between reading and writing the state, past the attempt's conclusion.
HOLD = 0.6
PAUSE_MS = 1500
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.M | re.I)


class Switch:
    """A receiver's RCPT answer: 451 until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def rcpt(self, session, arg) -> str:
        return "250 2.1.5 Ok" if self.open.is_set() else "451 4.3.2 Try again later"


def _message_id(data: bytes) -> str:
    found = MESSAGE_ID.search(data)
    return found.group(1).decode() if found else "<none>"


def _ids(peer) -> collections.Counter:
    return collections.Counter(_message_id(m.data) for m in list(peer.messages))


def test_retry_during_backlog_delivers_each_message_once(dns_server, make_peer, make_gateway,
                                                         monkeypatch):
    monkeypatch.setenv("POSTERN_TEST_RETRY_EDIT_PAUSE_MS", str(PAUSE_MS))
    port = free_port(UP_IP, SLOW_IP)
    up, slow = Switch(), Switch()
    sampled: dict[str, str] = {}          # Message-ID -> queue id
    targeted: list[threading.Thread] = []
    targeted_results: list = []
    holder: dict = {}

    def at_up_data(session, data: bytes) -> None:
        qid = sampled.pop(_message_id(data), None)
        if qid is None or "gw" not in holder:
            return
        t = threading.Thread(
            target=lambda: targeted_results.append(holder["gw"].cli("queue", "retry", qid,
                                                                    timeout=30)),
            daemon=True)
        targeted.append(t)
        t.start()
        time.sleep(HOLD)

    up_peer = make_peer(UP_IP, port, starttls=None, hostname="mx.up.test",
                        replies={"RCPT": up.rcpt, "DATA_RECEIVED": at_up_data})
    slow_peer = make_peer(SLOW_IP, port, starttls=None, hostname="mx.slow.test",
                          replies={"RCPT": slow.rcpt})
    dns_server.set_records(zone(mx_zone("up.test", UP_IP), mx_zone("slow.test", SLOW_IP)))
    gw = delivery_gateway(make_gateway, dns_server, port,
                          settings={"tls.outbound.mode": "none"})
    holder["gw"] = gw

    # The backlog: every message deferred at both receivers.
    queued: list[tuple[str, str]] = []
    for batch in range(MESSAGES // 100):
        queued += _submit_two(gw, 100, f"backlog {batch}")
    assert len({q for q, _ in queued}) == MESSAGES
    for i, (qid, message_id) in enumerate(queued):
        if i % SAMPLE_EVERY == SAMPLE_EVERY // 2:
            sampled[message_id] = qid
    sample_size = len(sampled)

    # The outage ends at up.test; slow.test comes back after a while.
    up.open.set()
    start = time.monotonic()
    stats = {"retries": 0, "failed": 0}
    errors: list[str] = []
    done = threading.Event()
    lock = threading.Lock()

    def drained() -> bool:
        return (len(up_peer.messages) >= MESSAGES and len(slow_peer.messages) >= MESSAGES
                and not gw.queue())

    def retry_loop() -> None:
        # Several administrators' shells at once, each running `queue retry`
        # over the whole queue while attempts conclude.
        while not done.is_set() and time.monotonic() - start < DEADLINE:
            r = gw.cli("queue", "retry", timeout=60)
            with lock:
                stats["retries"] += 1
                if r.rc != 0:
                    stats["failed"] += 1
                    errors.append(f"{time.monotonic() - start:.1f}s: {r.stderr.strip()[:200]}")
            time.sleep(0.05)

    threads = [threading.Thread(target=retry_loop, daemon=True) for _ in range(RETRY_SHELLS)]
    for t in threads:
        t.start()
    try:
        while time.monotonic() - start < DEADLINE:
            if not slow.open.is_set() and time.monotonic() - start > SLOW_OPENS_AFTER:
                slow.open.set()
            if slow.open.is_set() and drained():
                break
            time.sleep(0.2)
    finally:
        done.set()
        for t in threads + targeted:
            t.join(timeout=70)
    retries, failed = stats["retries"], stats["failed"]
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
    # The race was really provoked: every sampled message got its retry
    # while its attempt was running, and the retry succeeded.
    assert not sampled, f"{len(sampled)} sampled message(s) never reached up.test"
    assert len(targeted_results) == sample_size, targeted_results
    assert all(r.rc == 0 for r in targeted_results), [r.stderr for r in targeted_results]
    assert retries > 0
    assert failed == 0, (f"{failed} of {retries} `queue retry` runs failed on a draining queue: "
                         + "; ".join(errors[:3]))
    assert gw.queue() == [], "the queue should be empty"


def _submit_two(gw, n: int, subject: str) -> list[tuple[str, str]]:
    """n messages, each to bob@up.test and bob@slow.test, over one session;
    returns (queue id, Message-ID) of each."""
    ids = []
    with gw.connect() as c:
        assert c.ehlo().code == 250
        for i in range(n):
            data = message_bytes(f"{subject} {i}", to="bob@up.test")
            r = raw_transaction(c, SENDER, ["bob@up.test", "bob@slow.test"], data)
            assert r.code == 250, r
            ids.append((queued_id(r.first), _message_id(data)))
        c.cmd("QUIT")
    return ids
