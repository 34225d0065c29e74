"""Alert kinds and destinations (SPEC §12; issue 14 item 4).

Real conditions, real destinations, all on loopback:

* an imported certificate that expires in 10 days raises
  `certificate-expiry` at start: the mail log, `/metrics`, `/api/v1/alerts`,
  a JSON POST to an HTTPS receiver (a certificate from the test CA, trusted
  through `tls.outbound.trusted_ca`), and an alert mail that Postern queues
  and delivers to a real SMTP receiver over verified TLS; after a restart
  the same certificate does not alert again (a second one, at 7 days, does);
* a downstream whose TLS handshake breaks three times raises
  `handshake-failures`, and a webhook that answers 500 first is tried again;
* a `tls = "verify"` domain whose MX presents a self-signed certificate
  raises `required-tls-deferred`;
* two nodes on one PostgreSQL store see the same expiring certificate:
  each logs it, the webhook receives it once (and one mail goes out); when
  one node dies, the other raises `node-unreachable`.
"""

from __future__ import annotations

import http.server
import json
import re
import ssl
import threading
from collections import Counter
from datetime import datetime

import pytest

from admin_client import PASSWORD, Admin, admin_context, wait_admin
from delivery_support import (
    delivery_gateway,
    log_events,
    mx_zone,
    parse_message,
    submit,
    wait_for,
    wait_outcome,
    wait_rcpt_state,
    zone,
)
from fixtures_pg import pg_database, pg_server  # noqa: F401 (fixtures)
from fixtures_postfix import free_port

HOOK_IP = "127.0.0.61"
NOC_IP = "127.0.0.62"
PEER_IP = "127.0.0.63"
NOC = "noc.test"
ALERT_TO = f"tls-team@{NOC}"


class WebhookReceiver:
    """A real HTTPS server that records each POST; `fail` maps an alert kind
    to how many of its first POSTs are answered 500."""

    def __init__(self, ip: str, port: int, cert, key):
        self.posts: list[dict] = []
        self.fail: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(length, 1 << 20))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                kind = body.get("kind", "") if isinstance(body, dict) else ""
                with receiver.lock:
                    failing = receiver.fail[kind] > 0
                    if failing:
                        receiver.fail[kind] -= 1
                    receiver.posts.append({"path": self.path, "status": 500 if failing else 200,
                                           "content_type": self.headers.get("Content-Type"),
                                           "user_agent": self.headers.get("User-Agent"),
                                           "body": body})
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server = http.server.ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = f"https://{ip}:{port}/postern-alerts?token=s3cret"

    def received(self, kind: str, subject: str | None = None, status: int | None = None) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if p["body"].get("kind") == kind
                    and (subject is None or p["body"].get("subject") == subject)
                    and (status is None or p["status"] == status)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def webhook(tls_ca, tmp_path):
    cert = tls_ca.issue("hooks.alerts.test", ips=[HOOK_IP], directory=tmp_path / "hook-cert")
    receiver = WebhookReceiver(HOOK_IP, free_port(HOOK_IP), cert.cert, cert.key)
    yield receiver
    receiver.stop()


@pytest.fixture
def world(dns_server, make_peer, tls_ca, tmp_path):
    """The alert mailbox (a Python SMTP peer for noc.test with a test-CA
    certificate) on the shared MX port; more peers join on the same port."""
    mx_port = free_port(NOC_IP, PEER_IP)
    cert = tls_ca.issue(f"mx.{NOC}", directory=tmp_path / "noc-cert")
    mailbox = make_peer(NOC_IP, mx_port, starttls="ok", cert=cert, hostname=f"mx.{NOC}")
    records = mx_zone(NOC, NOC_IP)
    dns_server.set_records(records)
    return {"mx_port": mx_port, "mailbox": mailbox, "dns": dns_server, "records": records}


def gateway(make_gateway, world, tls_ca, webhook=None, *, email=(ALERT_TO,), name="gw",
            start=True, domains=None, **kw):
    settings = {"alerts.email": ",".join(email)}
    if webhook is not None:
        settings["alerts.webhook"] = webhook.url
    return delivery_gateway(make_gateway, world["dns"], world["mx_port"], name=name, ca=tls_ca,
                            trusted_ca="Test CA", settings=settings, domains=domains, start=start,
                            **kw)


def import_cert(gw, name: str, tls_ca, tmp_path, days: int) -> None:
    pair = tls_ca.issue(f"{days}days.alerts.test", days=days, directory=tmp_path / f"cert-{name}")
    gw.cli_ok("cert", "import", "--name", name, "--cert", str(pair.cert), "--key", str(pair.key))


def admin_api(gw) -> Admin:
    gw.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    wait_admin(gw)
    api = Admin(gw, admin_context(gw))
    assert api.login().status == 200
    return api


def metric(gw, kind: str) -> int:
    token = gw.cli_ok("admin", "token", "create", "--name", f"metrics-{kind}").stdout.strip()
    text = Admin(gw, admin_context(gw), token=token).get("/metrics").text
    m = re.search(r'^postern_alerts_total\{kind="%s"\} (\d+)$' % re.escape(kind), text, re.M)
    assert m, text
    return int(m.group(1))


def alert_mails(mailbox, subject_part: str) -> list:
    return [m for m in mailbox.messages if subject_part.encode() in m.data]


def test_certificate_expiry_reaches_every_destination_once(world, webhook, make_gateway, tls_ca,
                                                           tmp_path):
    gw = gateway(make_gateway, world, tls_ca, webhook, start=False)
    import_cert(gw, "Expiring", tls_ca, tmp_path, days=10)
    gw.start()

    # The mail log, at start.
    [line] = wait_for(lambda: log_events(gw, "alert", kind="certificate-expiry", domain="Expiring"),
                      10, "the certificate-expiry alert in the mail log")
    assert re.search(r"expires at \d{4}-\d\d-\d\dT[\d:]+Z, in 10 days", line["detail"]), line["line"]
    assert "CN=10days.alerts.test" in line["detail"], line["line"]

    # The webhook: one JSON POST with every field.
    [post] = wait_for(lambda: webhook.received("certificate-expiry", "Expiring"), 15,
                      "the webhook POST")
    body = post["body"]
    assert post["content_type"] == "application/json", post
    assert post["path"] == "/postern-alerts?token=s3cret", post
    assert post["user_agent"].startswith("Postern/"), post
    assert body["host"] == "" and body["node"] and body["gateway"] == gw.hostname, body
    assert body["detail"] == line["detail"], body
    at = datetime.fromisoformat(body["at"].replace("Z", "+00:00"))
    assert at.tzinfo is not None and body["at"].endswith("Z"), body
    webhook_line = wait_for(lambda: log_events(gw, "alert-webhook", kind="certificate-expiry",
                                               domain="Expiring", result="sent"), 10,
                            "alert-webhook result=sent")
    assert webhook_line[0]["try"] == "1" and webhook_line[0]["webhook"] == HOOK_IP, webhook_line

    # The alert mail: queued by Postern, delivered over verified TLS.
    [queued] = wait_for(lambda: log_events(gw, "alert-mail", kind="certificate-expiry",
                                           domain="Expiring"), 10, "the alert mail queued")
    assert queued["to"] == ALERT_TO, queued["line"]
    delivered = wait_outcome(gw, queued["id"], ALERT_TO)
    assert delivered["event"] == "delivered" and delivered.get("verified") == "true", delivered["line"]
    [mail] = wait_for(lambda: alert_mails(world["mailbox"], "certificate-expiry: Expiring"), 10,
                      "the alert mail at the receiver")
    assert mail.tls and mail.mail_from == f"postmaster@{gw.hostname}", mail
    assert mail.rcpts == [ALERT_TO], mail.rcpts
    msg = parse_message(mail.data)
    assert msg["Subject"] == "[Postern alert] certificate-expiry: Expiring", msg["Subject"]
    assert msg["Auto-Submitted"] == "auto-generated" and msg["From"].addresses[0].addr_spec \
        == f"postmaster@{gw.hostname}", msg.items()
    assert msg["TLS-Required"] is None, "alerts about TLS must not waive TLS"
    content = msg.get_body(preferencelist=("plain",)).get_content()
    flat = " ".join(content.split())
    assert "Kind: certificate-expiry" in flat and "About: Expiring" in flat, content
    assert "in 10 days" in flat and "What to do: A certificate" in flat, content

    # /metrics and /api/v1/alerts.
    expiry_lines = log_events(gw, "alert", kind="certificate-expiry")
    assert metric(gw, "certificate-expiry") == len(expiry_lines), expiry_lines
    api = admin_api(gw)
    stored = wait_for(lambda: [a for a in api.get("/api/v1/alerts").json()["alerts"]
                               if a["kind"] == "certificate-expiry" and a["subject"] == "Expiring"],
                      10, "the alert in /api/v1/alerts")
    assert len(stored) == 1 and stored[0]["detail"] == line["detail"], stored

    # A restart checks again: the same certificate stays quiet; a second
    # one, within 7 days, alerts (which shows the check ran).
    gw.stop()
    import_cert(gw, "Soon", tls_ca, tmp_path, days=5)
    gw.start()
    wait_for(lambda: log_events(gw, "alert", kind="certificate-expiry", domain="Soon"), 10,
             "the 7-day alert after the restart")
    wait_for(lambda: webhook.received("certificate-expiry", "Soon"), 15, "the webhook POST for Soon")
    wait_for(lambda: alert_mails(world["mailbox"], "certificate-expiry: Soon"), 20,
             "the alert mail for Soon")
    assert len(log_events(gw, "alert", kind="certificate-expiry", domain="Expiring")) == 1, gw.log()
    assert len(webhook.received("certificate-expiry", "Expiring")) == 1, webhook.posts
    assert len(alert_mails(world["mailbox"], "certificate-expiry: Expiring")) == 1


def test_handshake_failures_alert_and_a_failing_webhook_is_retried(world, webhook, make_gateway,
                                                                    make_peer, tls_ca):
    domain, host = "broken.test", "mx.broken.test"
    make_peer(PEER_IP, world["mx_port"], starttls="broken", break_with="garbage", hostname=host)
    world["dns"].set_records(zone(world["records"], mx_zone(domain, PEER_IP)))
    webhook.fail["handshake-failures"] = 1
    gw = gateway(make_gateway, world, tls_ca, webhook, email=())
    for i in range(3):
        qid = submit(gw, f"bob@{domain}", f"broken {i}")
        # Opportunistic: the handshake fails, the mail goes in plaintext.
        assert wait_outcome(gw, qid)["event"] == "delivered"
        if i < 2:
            assert not log_events(gw, "alert", kind="handshake-failures"), gw.log()[-2000:]
    [alert] = wait_for(lambda: log_events(gw, "alert", kind="handshake-failures"), 10,
                       "the handshake-failures alert")
    assert alert["domain"] == domain and alert["host"] == host, alert["line"]
    assert alert["detail"].startswith(f"3 TLS handshake failures to {host} within 10 minutes"), alert
    # The webhook answered 500 first: tried again (10 s later) and sent.
    wait_for(lambda: webhook.received("handshake-failures", domain, status=200), 30,
             "the retried webhook POST", interval=0.5)
    tries = log_events(gw, "alert-webhook", kind="handshake-failures")
    assert [(t["try"], t["result"]) for t in tries] == [("1", "retrying"), ("2", "sent")], tries
    assert "HTTP status 500" in tries[0]["reason"], tries[0]["line"]
    assert [p["status"] for p in webhook.received("handshake-failures")] == [500, 200]
    # A fourth failure within the hour: counted, not alerted again.
    qid = submit(gw, f"bob@{domain}", "broken 4")
    assert wait_outcome(gw, qid)["event"] == "delivered"
    assert len(log_events(gw, "alert", kind="handshake-failures")) == 1
    assert metric(gw, "handshake-failures") == 1


def test_verify_domain_with_self_signed_peer_alerts_required_tls_deferred(world, make_gateway,
                                                                        make_peer, tls_ca):
    domain, host = "strict.test", "mx.strict.test"
    peer = make_peer(PEER_IP, world["mx_port"], starttls="ok", hostname=host)  # self-signed
    world["dns"].set_records(zone(world["records"], mx_zone(domain, PEER_IP)))
    gw = gateway(make_gateway, world, tls_ca, domains=[{"name": domain, "tls": "verify"}])
    qid = submit(gw, f"bob@{domain}", "strict")
    err = wait_rcpt_state(gw, qid, f"bob@{domain}", "deferred")["last_error"]
    assert "domain verify" in err, err
    [alert] = wait_for(lambda: log_events(gw, "alert", kind="required-tls-deferred"), 10,
                       "the required-tls-deferred alert")
    assert alert["domain"] == domain and alert["host"] == host, alert["line"]
    assert alert["detail"].startswith(f"deferred: domain verify could not be met at {host}["), alert
    assert not [m for m in peer.messages if b"Subject: strict" in m.data], "nothing sent"
    [queued] = wait_for(lambda: log_events(gw, "alert-mail", kind="required-tls-deferred"), 10,
                        "the alert mail")
    wait_for(lambda: alert_mails(world["mailbox"], f"required-tls-deferred: {domain}"), 20,
             "the alert mail at the receiver")
    assert wait_outcome(gw, queued["id"])["event"] == "delivered"


def test_two_nodes_send_one_webhook_per_condition(world, webhook, make_gateway, tls_ca, tmp_path,
                                                  pg_database):
    def node(name):
        g = make_gateway(name, fresh_store=True, start=False, paused=False,
                         mx_port=world["mx_port"], nameservers=[world["dns"].nameserver])
        text = g.config.read_text()
        g.config.write_text(f'store = "{pg_database}"\nnode_name = "{name}"\n' + text)
        return g

    first, second = node("gw-a"), node("gw-b")
    # Settings and certificates are the cluster's: made once, through one node.
    first.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(tls_ca.cert))
    first.set("tls.outbound.trusted_ca", "Test CA")
    first.set("alerts.webhook", webhook.url)
    first.set("alerts.email", ALERT_TO)
    import_cert(first, "Expiring", tls_ca, tmp_path, days=10)
    first.start(timeout=120)
    second.start(timeout=120)

    def settled(g):
        """This node logged the alert and decided about the webhook and the
        address: sent by it, or skipped as sent by the other."""
        return (log_events(g, "alert", kind="certificate-expiry", domain="Expiring")
                and log_events(g, "alert-webhook", kind="certificate-expiry", domain="Expiring")
                and log_events(g, "alert-mail", kind="certificate-expiry", domain="Expiring"))
    for g in (first, second):
        wait_for(lambda g=g: settled(g), 20, f"{g.root.name} to log and dispatch the alert")
    posts = webhook.received("certificate-expiry", "Expiring")
    assert len(posts) == 1, posts
    sent_by = [g for g in (first, second)
               if log_events(g, "alert-webhook", domain="Expiring", result="sent")]
    skipped_by = [g for g in (first, second)
                  if log_events(g, "alert-webhook", domain="Expiring", result="skipped")]
    assert len(sent_by) == 1 and len(skipped_by) == 1 and sent_by != skipped_by, \
        (first.log()[-2000:], second.log()[-2000:])
    assert posts[0]["body"]["node"] == sent_by[0].root.name, posts
    queued = [e for g in (first, second)
              for e in log_events(g, "alert-mail", domain="Expiring") if e.get("id")]
    assert len(queued) == 1, queued
    wait_for(lambda: alert_mails(world["mailbox"], "certificate-expiry: Expiring"), 20,
             "the alert mail")
    assert len(alert_mails(world["mailbox"], "certificate-expiry: Expiring")) == 1

    # A node that stops writing its registry row: the other one alerts
    # (30 s without a heartbeat, seen by a check every 10 s).
    assert not log_events(first, "alert", kind="node-unreachable")
    second.kill9()
    [gone] = wait_for(lambda: log_events(first, "alert", kind="node-unreachable"), 70,
                      "gw-a to see gw-b unreachable", interval=1)
    assert gone["domain"] == "gw-b" and gone["host"] == second.hostname, gone["line"]
    assert re.match(r"node gw-b \(\S+\) not seen for \d+ s$", gone["detail"]), gone["line"]
    [post] = wait_for(lambda: webhook.received("node-unreachable", "gw-b"), 15, "its webhook POST")
    assert post["body"]["node"] == "gw-a", post
