"""The queue: per-recipient outcomes, bounces (RFC 3464 DSNs), retries with
backoff across a gateway restart, queue lifetime, connection reuse, and the
queue commands (`queue list --json|show|retry|delete`, `trace`) (SPEC §2, §6;
issue 3 items 1, 4-6).

partner.test is served by one downstream Postfix (127.0.0.3); the senders'
domain origin.test by another (127.0.0.10), where bounces arrive.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from delivery_support import (
    SENDER,
    check_dsn,
    delivery_gateway,
    log_events,
    mx_zone,
    queue_item,
    rcpt,
    smtpd_connects,
    submit,
    submit_many,
    wait_for,
    wait_gone,
    wait_outcome,
    wait_rcpt_state,
    with_subject,
    zone,
)
from fixtures_postfix import delivered_to, free_port

PARTNER_IP = "127.0.0.3"
ORIGIN_IP = "127.0.0.10"
FAST = {"mta.min_backoff": "1s", "mta.max_backoff": "2s"}


@pytest.fixture
def world(dns_server, make_downstream):
    """partner.test (127.0.0.3), origin.test (.10) and down.test (.8, nothing
    listening unless a test starts something) on one MX port; .6 is free for
    a Python peer."""
    port = free_port(PARTNER_IP, ORIGIN_IP, "127.0.0.8", "127.0.0.6")
    dns_server.set_records(zone(mx_zone("partner.test", PARTNER_IP), mx_zone("origin.test", ORIGIN_IP),
                                mx_zone("down.test", "127.0.0.8")))
    return {"port": port, "make": make_downstream}


def _partner(world, **kw):
    return world["make"]("partner", PARTNER_IP, world["port"], domains=["partner.test"], **kw)


def _origin(world):
    return world["make"]("origin", ORIGIN_IP, world["port"], domains=["origin.test"])


# ---------------------------------------------------------------------------
# bounces


def test_5xx_rcpt_bounces_that_recipient_only_with_a_dsn(world, dns_server, make_gateway):
    partner = _partner(world, recipient_access={"gone@partner.test": "550 5.1.1 No such user here"})
    origin = _origin(world)
    gw = delivery_gateway(make_gateway, dns_server, world["port"])
    rcpts = ["bob@partner.test", "gone@partner.test", "carol@partner.test"]
    q = submit(gw, rcpts, "three recipients")

    bounced = wait_outcome(gw, q, "gone@partner.test")
    assert bounced["event"] == "bounced", bounced["line"]
    assert re.search(r"550 5\.1\.1 .*No such user here", bounced["reason"]), bounced["line"]
    assert bounced["reason"].startswith(f"mx.partner.test[{PARTNER_IP}]: "), bounced["line"]
    for ok in ("bob@partner.test", "carol@partner.test"):
        assert wait_outcome(gw, q, ok)["event"] == "delivered"
    msgs = partner.wait_for_messages(2)
    assert sorted(delivered_to(m) for m in msgs) == ["bob@partner.test", "carol@partner.test"]

    # the bounce: queued at once, delivered from the null sender to the sender
    [bq] = wait_for(lambda: log_events(gw, "bounce-queued", **{"for": q}), 10, "bounce-queued")
    assert bq["to"] == f"<{SENDER}>", bq["line"]
    [dsn] = origin.wait_for_messages(1, timeout=15)
    assert delivered_to(dsn) == SENDER
    info = check_dsn(dsn, failed=["gone@partner.test"], original_subject="three recipients")
    r = info["recipients"]["gone@partner.test"]
    assert r["status"] == "5.1.1", r
    assert re.match(r"(?i)smtp;\s*550 5\.1\.1 .*No such user here", r["diagnostic"]), r
    assert "mx.partner.test" in r["remote_mta"], r
    assert "Message-ID:" in info["original_headers"].decode(errors="replace")
    assert re.search(r"from=<>", origin.log()), origin.log()[-2000:]
    delivered_bounce = wait_outcome(gw, bq["id"])
    assert delivered_bounce["event"] == "delivered" and delivered_bounce["from"] == "<>", \
        delivered_bounce["line"]
    # every recipient final: the message left the queue, and no second bounce
    wait_gone(gw, q)
    wait_gone(gw, bq["id"])
    assert len(log_events(gw, "bounce-queued")) == 1
    assert len(log_events(gw, "bounced", id=q)) == 1


def test_no_bounce_for_a_null_sender_message(world, dns_server, make_gateway):
    _partner(world, recipient_access={"gone@partner.test": "550 5.1.1 No such user here"})
    origin = _origin(world)
    gw = delivery_gateway(make_gateway, dns_server, world["port"])
    q = submit(gw, "gone@partner.test", "a bounce that bounces", sender="")
    entry = wait_outcome(gw, q)
    assert entry["event"] == "bounced" and entry["from"] == "<>", entry["line"]
    wait_gone(gw, q)
    time.sleep(1.5)   # give a (wrong) bounce time to show up
    assert log_events(gw, "bounce-queued") == []
    assert origin.messages() == []
    assert gw.queue() == []


def test_queue_lifetime_expiry_bounces(world, dns_server, make_gateway):
    """Downstream down, queue_lifetime 3s, backoff 1s..2s: deferred and
    retried until the lifetime ends, then bounced (4.4.7) with a DSN."""
    origin = _origin(world)
    gw = delivery_gateway(make_gateway, dns_server, world["port"],
                          settings={**FAST, "mta.queue_lifetime": "3s"})
    q = submit(gw, "bob@down.test", "never arrives")
    first = wait_outcome(gw, q)
    assert first["event"] == "deferred", first["line"]
    assert first["reason"].startswith("mx.down.test[127.0.0.8]: connection failed"), first["line"]

    bounced = wait_outcome(gw, q, events=("bounced",), timeout=15)
    deferred = log_events(gw, "deferred", id=q)
    assert len(deferred) >= 2, f"retried with backoff before expiry: {gw.log()}"
    t0 = dt.datetime.fromisoformat(deferred[0]["time"].replace("Z", "+00:00"))
    t1 = dt.datetime.fromisoformat(deferred[1]["time"].replace("Z", "+00:00"))
    assert 0.5 <= (t1 - t0).total_seconds() <= 3.5, (t0, t1)
    assert "connection failed" in bounced["reason"], bounced["line"]
    [dsn] = origin.wait_for_messages(1, timeout=15)
    info = check_dsn(dsn, failed=["bob@down.test"], status_prefix="4.", original_subject="never arrives")
    r = info["recipients"]["bob@down.test"]
    assert r["status"] == "4.4.7", r
    assert "lifetime" in r["diagnostic"] and "connection failed" in r["diagnostic"], r
    wait_gone(gw, q)


def test_5xx_after_data_bounces_every_recipient_in_one_dsn(world, dns_server, make_gateway, make_peer):
    """A 554 to the final dot refuses the message for all its recipients:
    both bounce at once, and one DSN lists both."""
    origin = _origin(world)
    peer = make_peer("127.0.0.6", world["port"], starttls=None, hostname="mx.picky.test",
                     replies={"DATA_END": "554 5.6.0 Message content rejected"})
    dns_server.update(mx_zone("picky.test", "127.0.0.6"))
    gw = delivery_gateway(make_gateway, dns_server, world["port"])
    q = submit(gw, ["one@picky.test", "two@picky.test"], "content rejected")
    for a in ("one@picky.test", "two@picky.test"):
        e = wait_outcome(gw, q, a)
        assert e["event"] == "bounced" and "554 5.6.0" in e["reason"], e["line"]
        assert "end of DATA" in e["reason"], e["line"]
    [dsn] = origin.wait_for_messages(1, timeout=15)
    info = check_dsn(dsn, failed=["one@picky.test", "two@picky.test"], original_subject="content rejected")
    assert {r["status"] for r in info["recipients"].values()} == {"5.6.0"}
    assert len(peer.sessions) == 1
    wait_gone(gw, q)


# ---------------------------------------------------------------------------
# retries


def test_retry_sends_only_to_recipients_still_pending(world, dns_server, make_gateway):
    """One message, three recipients: delivered, 450 at RCPT, and a domain
    whose MX is down. The queue shows each state; once the problems are
    gone, the retries deliver to the two others, and nobody gets a copy twice."""
    partner = _partner(world, recipient_access={"later@partner.test": "450 4.2.0 Mailbox busy"})
    gw = delivery_gateway(make_gateway, dns_server, world["port"], settings=FAST)
    q = submit(gw, ["bob@partner.test", "later@partner.test", "carol@down.test"], "partial")
    wait_rcpt_state(gw, q, "bob@partner.test", "delivered")
    later = wait_rcpt_state(gw, q, "later@partner.test", "deferred")
    assert later["last_error"].startswith(f"mx.partner.test[{PARTNER_IP}]: 450 4.2.0"), later
    carol = wait_rcpt_state(gw, q, "carol@down.test", "deferred")
    assert "connection failed" in carol["last_error"], carol

    # let a few retries happen, then fix both problems
    wait_for(lambda: (rcpt(gw, q, "later@partner.test") or {}).get("attempts", 0) >= 2, 10,
             "a second attempt")
    assert len(partner.messages(rcpt="bob@partner.test")) == 1
    partner.set_recipient_access({})
    # Postern keeps reusing its session with the smtpd process that still has
    # the old table (a retry every 2 s never lets it idle out): restart Postfix
    partner.restart()
    down = world["make"]("down", "127.0.0.8", world["port"], domains=["down.test"])
    wait_gone(gw, q, timeout=20)
    assert len(partner.messages(rcpt="bob@partner.test")) == 1, "bob got a second copy"
    assert len(partner.wait_for_messages(1, rcpt="later@partner.test")) == 1
    assert len(down.wait_for_messages(1)) == 1
    assert len(log_events(gw, "delivered", id=q)) == 3
    assert log_events(gw, "bounced", id=q) == []



def test_deferred_message_delivered_after_downstream_returns_across_restart(world, dns_server, make_gateway):
    partner = _partner(world)
    partner.stop()
    gw = delivery_gateway(make_gateway, dns_server, world["port"], settings=FAST)
    q = submit(gw, "bob@partner.test", "survives a restart")
    r = wait_rcpt_state(gw, q, "bob@partner.test", "deferred")
    assert r["last_error"].startswith(f"mx.partner.test[{PARTNER_IP}]: connection failed"), r
    assert r["attempts"] >= 1 and r["next_attempt"], r

    assert gw.stop() == 0
    # offline: the queue file still says deferred
    r = rcpt(gw, q, "bob@partner.test")
    assert r and r["state"] == "deferred", r
    attempts_before = r["attempts"]
    # `queue retry` without a running gateway works on the spool directly
    out = gw.cli_ok("queue", "retry")
    assert "1 message" in out.stdout, out
    assert rcpt(gw, q, "bob@partner.test")["next_attempt"] is None, queue_item(gw, q)
    partner.start()
    gw.start()
    out = gw.cli_ok("queue", "retry")
    assert "scheduled" in out.stdout, out
    entry = wait_outcome(gw, q, events=("delivered",), timeout=20)
    assert entry["relay"] == f"mx.partner.test[{PARTNER_IP}]:{world['port']}", entry["line"]
    wait_gone(gw, q)
    msgs = partner.wait_for_messages(1)
    assert len(with_subject(msgs, "survives a restart")) == 1
    time.sleep(0.5)
    assert len(partner.messages()) == 1, "delivered more than once"
    trace = gw.cli_ok("trace", q).stdout
    assert trace.count("delivery_attempt") >= attempts_before + 1, trace


def test_queue_retry_makes_a_deferred_message_due_now(world, dns_server, make_gateway):
    """With a one-hour backoff, only `queue retry ID` brings the next attempt."""
    partner = _partner(world)
    partner.stop()
    gw = delivery_gateway(make_gateway, dns_server, world["port"],
                          settings={"mta.min_backoff": "1h", "mta.max_backoff": "2h"})
    q = submit(gw, "bob@partner.test", "retry me")
    r = wait_rcpt_state(gw, q, "bob@partner.test", "deferred")
    nxt = dt.datetime.fromisoformat(r["next_attempt"].replace("Z", "+00:00"))
    assert nxt - dt.datetime.now(dt.timezone.utc) > dt.timedelta(minutes=50), r
    partner.start()
    time.sleep(1)
    assert queue_item(gw, q) is not None, "retried before its time"
    gw.cli_ok("queue", "retry", q)
    assert wait_outcome(gw, q, events=("delivered",), timeout=15)
    partner.wait_for_messages(1)
    wait_gone(gw, q)


# ---------------------------------------------------------------------------
# connection reuse


def test_connection_reuse_for_consecutive_messages(world, dns_server, make_gateway, report):
    """Messages to the same destination one after another go over one SMTP
    (and TLS) session; a burst needs fewer connections than messages."""
    partner = _partner(world, tls="selfsigned")
    gw = delivery_gateway(make_gateway, dns_server, world["port"])
    ids = []
    for i in range(4):
        q = submit(gw, f"user{i}@partner.test", f"in turn {i}")
        assert wait_outcome(gw, q)["event"] == "delivered"
        ids.append(q)
    partner.wait_for_messages(4)
    assert smtpd_connects(partner) == 1, partner.log()
    assert partner.log().count("TLS connection established from") == 1

    burst = submit_many(gw, "burst@partner.test", 8)
    for q in burst:
        assert wait_outcome(gw, q)["event"] == "delivered"
    partner.wait_for_messages(12)
    connects = smtpd_connects(partner)
    report(f"connection reuse: 4 sequential messages over 1 connection; with a burst of 8 "
           f"after them, {connects} connection(s) for 12 messages")
    assert connects < 1 + 8, f"{connects} connections for 12 messages:\n{partner.log()}"


def test_tls_session_resumption(world, dns_server, make_gateway, tls_ca):
    """A second TLS connection to the same host resumes the first one's
    session. Two domains share the MX host; one has its own [[domain]] tls
    mode, so its message needs a connection of its own (idle connections
    are kept per host and mode), while the TLS session is per host name."""
    port = world["port"]
    # smtpd_tls_loglevel 2 logs "Reusing old session" for a resumed session
    pf = world["make"]("shared", PARTNER_IP, port, domains=["partner.test", "other.test"], tls="selfsigned",
                       main_cf={"smtpd_tls_loglevel": "2"})
    dns_server.update(zone(mx_zone("partner.test", PARTNER_IP, host="mx.shared.test"),
                           mx_zone("other.test", PARTNER_IP, host="mx.shared.test")))
    gw = delivery_gateway(make_gateway, dns_server, port, domains=[{"name": "other.test", "tls": "require"}])
    q1 = submit(gw, "a@partner.test", "first session")
    assert wait_outcome(gw, q1)["event"] == "delivered"
    q2 = submit(gw, "b@other.test", "second session")
    assert wait_outcome(gw, q2)["event"] == "delivered"
    pf.wait_for_messages(2)
    assert smtpd_connects(pf) == 2, pf.log()
    log = pf.log()
    assert log.count("TLS connection established from") == 2, log
    assert log.count("Reusing old session") == 1, \
        f"the second TLS session was not resumed:\n{log[-3000:]}"
    # logged by the second connection, before its "established" line
    first, second = log.split("TLS connection established from")[:2]
    assert "Reusing old session" in second and "Reusing old session" not in first, log


# ---------------------------------------------------------------------------
# the queue commands


def test_queue_list_show_trace_delete(world, dns_server, make_gateway, tls_ca):
    partner = _partner(world, tls="ca")
    gw = delivery_gateway(make_gateway, dns_server, world["port"], ca=tls_ca,
                          settings={"tls.outbound.mode": "verify"})
    msgid = "queue-cli-1@origin.test"
    q = submit(gw, ["bob@partner.test", "carol@down.test"], "mixed", message_id=msgid)
    wait_rcpt_state(gw, q, "carol@down.test", "deferred")
    wait_rcpt_state(gw, q, "bob@partner.test", "delivered")

    [item] = [m for m in gw.queue() if m["id"] == q]
    assert {"id", "message_id", "sender", "size", "received_at", "recipients"} <= set(item), item
    assert item["message_id"] in (f"<{msgid}>", msgid), item
    assert item["sender"] == SENDER
    assert isinstance(item["size"], int) and item["size"] > 100, item
    received = dt.datetime.fromisoformat(item["received_at"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - received).total_seconds()) < 60, item
    by_addr = {r["address"]: r for r in item["recipients"]}
    assert set(by_addr) == {"bob@partner.test", "carol@down.test"}
    for r in by_addr.values():
        assert {"address", "state", "attempts", "next_attempt", "last_error"} <= set(r), r
    bob, carol = by_addr["bob@partner.test"], by_addr["carol@down.test"]
    assert bob["state"] == "delivered" and bob["attempts"] == 1 and bob["last_error"] is None, bob
    assert bob["next_attempt"] is None, bob
    assert carol["state"] == "deferred" and carol["attempts"] == 1, carol
    assert carol["last_error"].startswith("mx.down.test[127.0.0.8]: connection failed"), carol
    nxt = dt.datetime.fromisoformat(carol["next_attempt"].replace("Z", "+00:00"))
    assert nxt > received, carol

    # queue show: the same object
    shown = json.loads(gw.cli_ok("queue", "show", q).stdout)
    assert shown["id"] == q and shown["recipients"] == item["recipients"], shown
    # queue list (text)
    text = gw.cli_ok("queue", "list").stdout
    assert q in text and "carol@down.test" in text, text

    # trace, by queue ID and by Message-ID: every attempt with its TLS details
    trace = gw.cli_ok("trace", q).stdout
    assert gw.cli_ok("trace", f"<{msgid}>").stdout == trace
    assert gw.cli_ok("trace", msgid).stdout == trace
    kinds = [line.split()[1] for line in trace.splitlines() if line.strip()]
    assert kinds[0] == "received", trace
    assert {"delivery_attempt", "delivered", "deferred"} <= set(kinds), trace
    attempts = [json.loads(line[line.index("{"):])["attempt"]
                for line in trace.splitlines() if " delivery_attempt " in line]
    ok = [a for a in attempts if a["host"] == "mx.partner.test"]
    assert ok and ok[0]["tls_version"] == "TLSv1.3" and ok[0]["cipher"], ok
    assert ok[0]["cert_verified"] is True and ok[0]["mode"] == "verify", ok
    assert ok[0]["ip"] == PARTNER_IP and ok[0]["port"] == world["port"], ok
    assert ok[0]["reply"].startswith("250"), ok
    bad = [a for a in attempts if a["host"] == "mx.down.test"]
    assert bad and bad[0]["tls_version"] is None, bad

    # delete: gone from the queue, logged, and never delivered
    out = gw.cli_ok("queue", "delete", q)
    assert q in out.stdout, out
    assert queue_item(gw, q) is None
    assert log_events(gw, "deleted", id=q), gw.log()
    later = world["make"]("down", "127.0.0.8", world["port"], domains=["down.test"])
    gw.cli_ok("queue", "retry")
    time.sleep(1.5)
    assert later.messages() == []
    assert len(partner.messages()) == 1
    r = gw.cli("queue", "show", q)
    assert r.rc != 0, r
