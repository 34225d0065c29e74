"""Helpers shared by the delivery tests (test_delivery_*.py, test_interop_upstream.py).

A delivery test builds its world on loopback: a zone in the `dns_server`
fixture pointing test domains at 127.0.0.x addresses, downstream MTAs
(private Postfix instances, the broken-TLS Python peer) all listening on one
shared MX port on different 127.0.0.x addresses, and a Postern gateway with
`[delivery] paused = false`, `mx_port` and `[dns] nameservers` pointing at
them (`delivery_gateway`).

What Postern did is read from its mail log (`log_events`, `wait_outcome`),
`postern queue list --json` (`queue_item`, `rcpt`) and `postern trace`;
what the downstream got is read from its Maildir / log (fixtures_postfix).

Every wait is bounded.
"""

from __future__ import annotations

import email
import email.policy
import re
import secrets
import time
from typing import Any, Callable

from fixtures_postfix import header_block, received_headers
from postern_testlib import Gateway, queued_id, raw_transaction

SENDER = "alice@origin.test"

# ---------------------------------------------------------------------------
# waiting


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll pred() until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# DNS zones


def mx_zone(domain: str, ip: str, host: str | None = None, pref: int = 10) -> dict:
    """`domain` MX -> `host` (default mx.<domain>) A -> `ip`."""
    host = host or f"mx.{domain}"
    return {domain: {"MX": [(pref, host)]}, host: {"A": ip}}


def zone(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        out.update(p)
    return out


# ---------------------------------------------------------------------------
# the gateway


def delivery_gateway(make_gateway, dns, mx_port: int, *, name: str = "gw", ca=None,
                     trusted_ca: str = "system, Test CA", settings: dict[str, str] | None = None,
                     domains: list[dict] | None = None, start: bool = True, **kw) -> Gateway:
    """A gateway that delivers: its MX lookups go to `dns`, MX delivery to `mx_port`.

    ca: a CertAuthority imported as "Test CA" and put in tls.outbound.trusted_ca.
    settings: `postern settings set KEY VALUE` before the start.
    domains: [[domain]] entries (dicts) imported before the start.
    """
    gw = make_gateway(name, start=False, paused=False, mx_port=mx_port,
                      nameservers=[dns.nameserver], **kw)
    if ca is not None:
        gw.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(ca.cert))
        gw.set("tls.outbound.trusted_ca", trusted_ca)
    for key, value in (settings or {}).items():
        gw.set(key, value)
    if domains:
        add_domains(gw, domains)
    if start:
        gw.start()
    return gw


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def add_domains(gw: Gateway, entries: list[dict]) -> None:
    """Append [[domain]] entries: settings export, edit, settings import (as an admin would)."""
    text = gw.cli_ok("settings", "export").stdout
    for entry in entries:
        text += "\n[[domain]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in entry.items())
    path = gw.root / f"settings-{secrets.token_hex(3)}.toml"
    path.write_text(text)
    gw.cli_ok("settings", "import", str(path))
    exported = gw.cli_ok("settings", "export").stdout
    for entry in entries:
        assert f'"{entry["name"]}"' in exported, f"[[domain]] {entry} not in the settings:\n{exported}"


# ---------------------------------------------------------------------------
# submitting


def message_bytes(subject: str, *, sender: str = SENDER, to: str = "bob@partner.test",
                  message_id: str | None = None, body: str = "") -> bytes:
    message_id = message_id or f"{secrets.token_hex(8)}@origin.test"
    text = (f"From: <{sender or 'mailer-daemon@origin.test'}>\r\n"
            f"To: <{to}>\r\n"
            f"Subject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            f"\r\n"
            f"{body or 'body of ' + subject}\r\n")
    return text.encode()


def submit(gw: Gateway, rcpts: list[str] | str, subject: str = "delivery test", *,
           sender: str = SENDER, message_id: str | None = None, body: str = "") -> str:
    """One message into the gateway (plaintext SMTP from 127.0.0.1); returns the queue ID."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    data = message_bytes(subject, sender=sender, to=rcpts[0], message_id=message_id, body=body)
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = raw_transaction(c, sender, rcpts, data)
        assert r.code == 250, r
        qid = queued_id(r.first)
        assert qid, r
        c.cmd("QUIT")
    return qid


def submit_many(gw: Gateway, rcpt: str, n: int, subject: str = "burst") -> list[str]:
    """n messages over one inbound SMTP session, as fast as the gateway takes them."""
    ids = []
    with gw.connect() as c:
        assert c.ehlo().code == 250
        for i in range(n):
            r = raw_transaction(c, SENDER, [rcpt], message_bytes(f"{subject} {i}", to=rcpt))
            assert r.code == 250, r
            ids.append(queued_id(r.first))
        c.cmd("QUIT")
    return ids


# ---------------------------------------------------------------------------
# the mail log

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _unquote(v: str) -> str:
    if v.startswith('"'):
        return re.sub(r"\\(.)", r"\1", v[1:-1])
    return v


def parse_log(text: str) -> list[dict[str, str]]:
    """Mail log lines as dicts: {"time", "event", key: value...}."""
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 2:
            continue
        entry = {"time": parts[0], "event": parts[1], "line": line}
        if len(parts) == 3:
            for k, v in _FIELD.findall(parts[2]):
                entry[k] = _unquote(v)
        out.append(entry)
    return out


def log_events(gw: Gateway, event: str | tuple[str, ...] | None = None, **match: str) -> list[dict]:
    """Mail log entries of `event` (or any of several) whose fields equal `match`."""
    events = (event,) if isinstance(event, str) else event
    return [e for e in parse_log(gw.log())
            if (events is None or e["event"] in events)
            and all(e.get(k) == v for k, v in match.items())]


OUTCOMES = ("delivered", "deferred", "bounced")


def wait_outcome(gw: Gateway, qid: str, rcpt: str | None = None, timeout: float = 20,
                 events: tuple[str, ...] = OUTCOMES) -> dict:
    """The first delivered/deferred/bounced mail log entry for queue ID (and recipient)."""
    match = {"id": qid}
    if rcpt:
        match["to"] = f"<{rcpt}>"
    try:
        return wait_for(lambda: (log_events(gw, events, **match) or [None])[0], timeout,
                        f"{'/'.join(events)} for {qid} {rcpt or ''} in mail.log")
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- mail.log tail --\n{gw.log()[-3000:]}") from None


# ---------------------------------------------------------------------------
# the queue


def queue_item(gw: Gateway, qid: str) -> dict | None:
    for item in gw.queue():
        if item["id"] == qid:
            return item
    return None


def rcpt(gw: Gateway, qid: str, address: str) -> dict | None:
    item = queue_item(gw, qid)
    if item is None:
        return None
    for r in item["recipients"]:
        if r["address"].lower() == address.lower():
            return r
    return None


def wait_rcpt_state(gw: Gateway, qid: str, address: str, state: str, timeout: float = 20) -> dict:
    def check():
        r = rcpt(gw, qid, address)
        return r if r and r["state"] == state else None
    try:
        return wait_for(check, timeout, f"{address} of {qid} to be {state}", interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; queue: {queue_item(gw, qid)}\n-- mail.log tail --\n"
                             f"{gw.log()[-3000:]}") from None


def wait_gone(gw: Gateway, qid: str, timeout: float = 20) -> None:
    wait_for(lambda: queue_item(gw, qid) is None, timeout, f"{qid} to leave the queue", interval=0.2)


# ---------------------------------------------------------------------------
# what the downstream got


def top_received(raw: bytes) -> str:
    """The downstream's own Received header (the first one)."""
    rcvd = received_headers(raw)
    assert rcvd, f"no Received header in\n{raw[:2000]!r}"
    return rcvd[0]


def arrived_over_tls(raw: bytes) -> bool:
    return "using TLS" in top_received(raw)


def subject_of(raw: bytes) -> str | None:
    m = re.search(r"^Subject:\s*(.*)$", header_block(raw), re.M | re.I)
    return m.group(1).strip() if m else None


def with_subject(msgs: list[bytes], subject: str) -> list[bytes]:
    return [m for m in msgs if subject_of(m) == subject]


def smtpd_connects(pf) -> int:
    """Connections the Postfix instance accepted (smtpd "connect from" lines)."""
    return len(re.findall(r"smtpd\[\d+\]: connect from ", pf.log()))


def parse_message(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def check_dsn(raw: bytes, *, failed: list[str], status_prefix: str = "5.",
              original_subject: str | None = None, to: str | None = SENDER) -> dict:
    """Assert `raw` is a well-formed RFC 3464 bounce for `failed`; returns a summary.

    multipart/report; report-type=delivery-status with a human-readable part,
    a message/delivery-status part (per-message fields, then one group per
    recipient: Final-Recipient, Action: failed, Status) and the original
    header section as text/rfc822-headers; sent from the null sender.
    """
    msg = parse_message(raw)
    head = header_block(raw)
    assert re.search(r"^Return-Path: <>\s*$", head, re.M | re.I), f"not from the null sender:\n{head}"
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status", msg["Content-Type"]
    parts = list(msg.iter_parts())
    types = [p.get_content_type() for p in parts]
    assert len(parts) >= 2 and types[0] == "text/plain", types
    assert "message/delivery-status" in types, types
    assert "text/rfc822-headers" in types, types
    assert msg["From"], "DSN without From"
    assert msg["Date"] and msg["Subject"], "DSN without Date/Subject"

    ds = parts[types.index("message/delivery-status")]
    # The email package parses message/delivery-status into header blocks:
    # the first is per-message, the others per recipient.
    blocks = [b for b in ds.get_payload()]
    assert len(blocks) >= 2, f"delivery-status has {len(blocks)} block(s)"
    per_message, per_rcpt = blocks[0], blocks[1:]
    assert per_message["Reporting-MTA"], f"no Reporting-MTA in {per_message.items()}"
    reported = {}
    for b in per_rcpt:
        fr = str(b["Final-Recipient"] or "")
        assert re.match(r"(?i)^rfc822;\s*\S+@\S+$", fr), f"Final-Recipient {fr!r}"
        addr = fr.split(";", 1)[1].strip().lower()
        assert str(b["Action"]).strip().lower() == "failed", b.items()
        status = str(b["Status"]).strip()
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status), f"Status {status!r}"
        reported[addr] = {"status": status, "diagnostic": str(b["Diagnostic-Code"] or ""),
                          "remote_mta": str(b["Remote-MTA"] or "")}
    assert sorted(reported) == sorted(a.lower() for a in failed), (reported, failed)
    for addr, r in reported.items():
        assert r["status"].startswith(status_prefix), (addr, r)

    human = parts[0].get_content()
    for addr in failed:
        assert addr.lower() in human.lower(), f"the notification text does not name {addr}:\n{human}"
    if to is not None:
        assert to.lower() in str(msg["To"]).lower(), f"DSN To: {msg['To']}"

    headers_part = parts[types.index("text/rfc822-headers")]
    original = headers_part.get_payload(decode=True) or headers_part.get_content().encode()
    if isinstance(original, str):
        original = original.encode()
    if original_subject is not None:
        assert f"Subject: {original_subject}".encode() in original, original[:1000]
    assert not re.search(rb"\r?\n\r?\n", original.strip()) and b"body of" not in original, \
        "text/rfc822-headers carries more than the header section"
    return {"message": msg, "recipients": reported, "human": human,
            "original_headers": original}



def tlsrpt_preview(gw: Gateway, domain: str, sessions: int, timeout: float = 20) -> dict:
    """Today's TLS-RPT report for `domain` (`postern tlsrpt preview`) once
    it counts `sessions` sessions: the gateway records attempts in batches,
    a moment after delivery."""
    import datetime
    import json

    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")

    def counted():
        r = gw.cli_ok("tlsrpt", "preview", "--date", day, "--domain", domain)
        [report] = json.loads(r.stdout)
        total = sum(p["summary"]["total-successful-session-count"]
                    + p["summary"]["total-failure-session-count"] for p in report["policies"])
        return report if total >= sessions else None
    return wait_for(counted, timeout, f"{sessions} TLS-RPT session(s) of {domain} recorded")
