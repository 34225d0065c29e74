"""REQUIRETLS (RFC 8689) end to end, and `TLS-Required: No` (SPEC §5, §10
items 5-6; issue 13 items 1-3).

Inbound, with Python's smtplib: REQUIRETLS is advertised only after
STARTTLS, `MAIL FROM:<..> REQUIRETLS` is refused in plaintext and accepted
over TLS, and the flag is kept in the queue file (`queue show`, `trace`).

Outbound, every REQUIRETLS domain is a `[[domain]]` with a static
`next_hop` and `tls = "verify"` (which SPEC counts as authenticated
routing), each on its own 127.0.0.x address, all on one port:

| domain        | next hop (A)             | peer |
|---------------|--------------------------|------|
| rtls.test     | mx.rtls.test (127.0.0.41) | Python peer, test-CA cert, REQUIRETLS after STARTTLS |
| selfrtls.test | mx.selfrtls.test (.42)    | Python peer, self-signed cert, REQUIRETLS after STARTTLS |
| pf.test       | mx.pf.test (.43)          | Postfix, test-CA cert, no REQUIRETLS |
| down.test     | mx.down.test (.44)        | nothing listens |
| mx-only.test  | MX mx.mx-only.test (.41)  | the REQUIRETLS peer, but found by an unsigned MX lookup |

Bounces go back to alice@origin.test, whose MX is the same Postfix (.43),
so each DSN arrives at a real receiver and is checked there.
"""

from __future__ import annotations

import json
import os
import smtplib
from pathlib import Path

import pytest

from delivery_support import (
    SENDER,
    check_dsn,
    delivery_gateway,
    message_bytes,
    mx_zone,
    queue_item,
    submit,
    wait_for,
    wait_outcome,
    wait_rcpt_state,
    with_subject,
    zone,
)
from fixtures_postfix import free_port
from postern_testlib import insecure_context, queued_id

IPS = {"rtls": "127.0.0.41", "selfrtls": "127.0.0.42", "pf": "127.0.0.43", "down": "127.0.0.44"}
VERSION_2_FILE = Path(__file__).resolve().parent.parent / "crates/postern-spool/tests/data/version-2.msg"


def smtp_session(gw, tls: bool) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10)
    s.ehlo("client.origin.test")
    if tls:
        code, _ = s.starttls(context=insecure_context())
        assert code == 220
        s.ehlo("client.origin.test")
    return s


def send_requiretls(gw, rcpt: str, subject: str, *, extra_headers: str = "") -> str:
    """One message with MAIL FROM:<..> REQUIRETLS over STARTTLS; returns the queue ID."""
    data = message_bytes(subject, to=rcpt)
    if extra_headers:
        data = extra_headers.encode() + data
    s = smtp_session(gw, tls=True)
    try:
        assert s.has_extn("requiretls"), s.esmtp_features
        code, resp = s.mail(SENDER, ["REQUIRETLS"])
        assert code == 250, (code, resp)
        code, resp = s.rcpt(rcpt)
        assert code == 250, (code, resp)
        code, resp = s.data(data)
        assert code == 250, (code, resp)
        qid = queued_id(resp)
        assert qid, resp
    finally:
        s.quit()
    return qid


def queue_show(gw, qid: str) -> dict:
    return json.loads(gw.cli_ok("queue", "show", qid).stdout)


def trace_events(gw, qid: str, kind: str) -> list[dict]:
    out = []
    for line in gw.cli("trace", qid).stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1] == kind:
            out.append(json.loads(parts[3]))
    return out


def test_requiretls_is_offered_and_accepted_only_inside_tls(make_gateway):
    gw = make_gateway()
    plain = smtp_session(gw, tls=False)
    try:
        assert plain.has_extn("starttls")
        assert not plain.has_extn("requiretls"), plain.esmtp_features
        code, resp = plain.mail(SENDER, ["REQUIRETLS"])
        assert code == 530 and resp.startswith(b"5.7.10 REQUIRETLS"), (code, resp)
        # Nothing was started: a plain transaction goes on as usual.
        code, _ = plain.mail(SENDER)
        assert code == 250
        plain.rset()
    finally:
        plain.quit()

    qid = send_requiretls(gw, "bob@partner.test", "requiretls inbound")
    shown = queue_show(gw, qid)
    assert shown["requiretls"] is True and shown["tls_required_no"] is False, shown
    assert gw.spool_file(qid).read_bytes().startswith(b"POSTERN-SPOOL 3\n")
    received = wait_for(lambda: trace_events(gw, qid, "received"), 10, "the received event")
    assert received[0]["requiretls"] is True, received

    # A message without it stays in the previous format, flag false.
    other = submit(gw, "bob@partner.test", "plain inbound")
    assert queue_show(gw, other)["requiretls"] is False
    assert gw.spool_file(other).read_bytes().startswith(b"POSTERN-SPOOL 2\n")


def test_requiretls_off_is_neither_offered_nor_accepted(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.requiretls", "false")
    gw.start()
    s = smtp_session(gw, tls=True)
    try:
        assert not s.has_extn("requiretls"), s.esmtp_features
        code, resp = s.mail(SENDER, ["REQUIRETLS"])
        assert code == 555 and b"REQUIRETLS" in resp, (code, resp)
    finally:
        s.quit()


@pytest.fixture
def world(dns_server, make_downstream, make_peer, make_gateway, tls_ca):
    port = free_port(*IPS.values())

    def ehlo_with_requiretls(session, arg):
        # REQUIRETLS only inside TLS, as RFC 8689 §2 asks.
        exts = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
        exts.append("REQUIRETLS" if session.tls else "STARTTLS")
        lines = [f"mx greets {arg.strip()}"] + exts
        return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{l}\r\n" for i, l in enumerate(lines)).rstrip("\r\n")

    rtls = make_peer(IPS["rtls"], port, starttls="ok", cert=tls_ca.issue("mx.rtls.test"),
                     hostname="mx.rtls.test", replies={"EHLO": ehlo_with_requiretls})
    selfrtls = make_peer(IPS["selfrtls"], port, starttls="ok", hostname="mx.selfrtls.test",
                         replies={"EHLO": ehlo_with_requiretls})
    pf = make_downstream("pf", IPS["pf"], port, domains=["pf.test", "origin.test"], tls="ca",
                         hostname="mx.pf.test")
    dns_server.set_records(zone(
        {f"mx.{name}.test": {"A": ip} for name, ip in IPS.items()},
        mx_zone("origin.test", IPS["pf"]),
        mx_zone("mx-only.test", IPS["rtls"], host="mx.rtls.test"),
    ))
    domains = [{"name": f"{name}.test", "next_hop": f"mx.{name}.test:{port}", "tls": "verify"}
               for name in IPS]
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, domains=domains)
    return {"gw": gw, "rtls": rtls, "selfrtls": selfrtls, "pf": pf, "port": port}


def test_delivered_with_requiretls_to_a_verified_peer_that_offers_it(world):
    gw, peer = world["gw"], world["rtls"]
    qid = send_requiretls(gw, "bob@rtls.test", "to the requiretls peer")
    outcome = wait_outcome(gw, qid, "bob@rtls.test")
    assert outcome["event"] == "delivered", outcome["line"]
    got = peer.wait_for_messages(1)[0]
    assert got.tls, got
    assert "REQUIRETLS" in got.mail_params.upper().split(), got.mail_params
    assert b"Subject: to the requiretls peer" in got.data


def test_postfix_without_requiretls_bounces_at_once_with_headers_only(world):
    gw, pf = world["gw"], world["pf"]
    qid = send_requiretls(gw, "carol@pf.test", "secret subject for postfix")
    outcome = wait_outcome(gw, qid, "carol@pf.test")
    assert outcome["event"] == "bounced", outcome["line"]
    assert "REQUIRETLS" in outcome["line"], outcome["line"]
    # The DSN comes back through the queue to origin.test's MX: the Postfix.
    dsns = wait_for(lambda: with_subject(pf.messages(), "Undelivered Mail Returned to Sender"), 30,
                    "the DSN at origin.test's MX")
    summary = check_dsn(dsns[0], failed=["carol@pf.test"], status_prefix="5.7.30",
                        original_subject="secret subject for postfix")
    assert "REQUIRETLS" in summary["recipients"]["carol@pf.test"]["diagnostic"], summary
    assert b"body of secret subject" not in dsns[0], "the DSN carries the body"
    # And carol never got it.
    assert not [m for m in pf.messages() if b"secret subject for postfix" in m and b"Delivered-To: carol" in m]


def test_self_signed_peer_bounces(world):
    gw, peer = world["gw"], world["selfrtls"]
    qid = send_requiretls(gw, "dave@selfrtls.test", "to the self-signed peer")
    outcome = wait_outcome(gw, qid, "dave@selfrtls.test")
    assert outcome["event"] == "bounced", outcome["line"]
    assert "certificate" in outcome["line"], outcome["line"]
    assert not peer.messages, "delivered despite an unverified certificate"


def test_unauthenticated_mx_bounces(world):
    """mx-only.test has no [[domain]] entry: its MX lookup is not DNSSEC-
    authenticated, so not even the REQUIRETLS peer behind it may be used."""
    gw, peer = world["gw"], world["rtls"]
    qid = send_requiretls(gw, "erin@mx-only.test", "by an unsigned MX")
    outcome = wait_outcome(gw, qid, "erin@mx-only.test")
    assert outcome["event"] == "bounced", outcome["line"]
    assert "not an authenticated route" in outcome["line"], outcome["line"]
    assert not peer.messages


def test_receiver_down_defers(world):
    gw = world["gw"]
    qid = send_requiretls(gw, "frank@down.test", "to nobody")
    state = wait_rcpt_state(gw, qid, "frank@down.test", "deferred")
    assert "mx.down.test" in state["last_error"], state
    item = queue_item(gw, qid)
    assert item is not None and item["requiretls"] is True, item


def test_without_requiretls_the_same_postfix_gets_the_message(world):
    """The control: a message without REQUIRETLS to the same Postfix is delivered."""
    gw, pf = world["gw"], world["pf"]
    qid = submit(gw, "carol@pf.test", "no requiretls to postfix")
    assert wait_outcome(gw, qid, "carol@pf.test")["event"] == "delivered"
    wait_for(lambda: with_subject(pf.messages(), "no requiretls to postfix"), 15, "delivery at Postfix")


def test_tls_required_no_is_stored_and_recorded_on_the_attempt(world):
    gw, peer = world["gw"], world["rtls"]
    data = b"TLS-Required: No\r\n" + message_bytes("relaxed", to="gina@rtls.test")
    s = smtp_session(gw, tls=False)
    try:
        s.mail(SENDER)
        s.rcpt("gina@rtls.test")
        code, resp = s.data(data)
        assert code == 250, (code, resp)
        qid = queued_id(resp)
    finally:
        s.quit()
    assert wait_outcome(gw, qid, "gina@rtls.test")["event"] == "delivered"
    got = peer.wait_for_messages(1)[0]
    assert "REQUIRETLS" not in got.mail_params.upper(), got.mail_params
    received = wait_for(lambda: trace_events(gw, qid, "received"), 10, "the received event")
    assert received[0]["tls_required_no"] is True, received
    attempts = wait_for(lambda: trace_events(gw, qid, "delivery_attempt"), 10, "the attempt event")
    assert attempts[0]["tls_required_no"] is True and attempts[0]["requiretls"] is False, attempts


def test_version_2_queue_file_of_the_previous_release_is_delivered(dns_server, make_gateway, make_peer):
    """crates/postern-spool/tests/data/version-2.msg, byte for byte as the
    release before REQUIRETLS wrote it, left in queue/ by an upgrade."""
    ip = "127.0.0.45"
    port = free_port(ip)
    dns_server.set_records(zone(mx_zone("example.net", ip)))
    peer = make_peer(ip, port, starttls=None)
    gw = delivery_gateway(make_gateway, dns_server, port, settings={"tls.outbound.mode": "none"},
                          start=False)
    gw.start()
    gw.stop()
    qid = "01JZ3K5Q8M0ABCDE"
    path = gw.queue_dir / qid
    path.write_bytes(VERSION_2_FILE.read_bytes())
    os.chmod(path, 0o600)
    gw.start()
    for rcpt in ("bob@example.net", "carol@example.net"):
        assert wait_outcome(gw, qid, rcpt, timeout=30)["event"] == "delivered"
    got = peer.wait_for_messages(1)[0]
    assert sorted(got.rcpts) == ["bob@example.net", "carol@example.net"]
    assert got.data == b"Subject: hello\r\nMessage-ID: <1@example.org>\r\n\r\nbody\r\n"
    assert "REQUIRETLS" not in got.mail_params.upper()
    assert not (gw.corrupt_dir / qid).exists()
