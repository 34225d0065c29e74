"""TLS-RPT sending (RFC 8460; SPEC §11; issue 13 items 4 and 6) end to end.

The world, all on loopback:

* the test DNS server serves rcpt.test's MX (10 mx.bad.test, 20
  mx.good.test), its `_smtp._tls` record naming a mailto: and an https:
  destination, the MX of reports.test (mx.good.test), the address of the
  https endpoint, and the gateway's DKIM key record;
* two real Postfix downstreams on one MX port: mx.good.test (127.0.0.3,
  certificate from the test CA; it also takes the report mails for
  reports.test) and mx.bad.test (127.0.0.4, self-signed);
* a real HTTPS report endpoint (Python `http.server` + `ssl`, certificate
  from the test CA) on 127.0.0.10 at the gateway's `[delivery] https_port`,
  recording each POST, answering 500 to the first ones when told to;
* a Postern gateway with `[[domain]] rcpt.test tls = "verify"`: each
  message meets mx.bad.test first (certificate not trusted: a failed
  session) and is delivered by mx.good.test (a successful one).

The report mail is read from the Postfix Maildir, its DKIM signature
verified with dkimpy against the record the test DNS serves, and its
gzipped JSON checked field by field; the https POST is checked likewise.

The daily run (`tlsrpt.enabled`, nobody running `tlsrpt send`) is seen by
restarting the gateway with its wall clock on the next UTC day, seconds
before 00:10 (libfaketime, LD_PRELOAD): the report goes out by itself once
00:10 has passed, and once only.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import http.server
import json
import re
import ssl
import threading
import time

import dkim  # dkimpy: an independent DKIM verifier
import pytest
from dnslib import DNSRecord

from admin_client import Admin, new_token
from delivery_support import add_domains, submit, wait_for, wait_outcome
from fixtures_pg import pg_database, pg_server  # noqa: F401 (fixtures)
from fixtures_postfix import free_port

GOOD_IP, BAD_IP, REPORT_IP = "127.0.0.3", "127.0.0.4", "127.0.0.10"
GOOD_MX, BAD_MX = "mx.good.test", "mx.bad.test"
ENDPOINT = "tlsrpt.reports.test"
RUA_MAIL = "tlsrpt@reports.test"
SENDER_DOMAIN = "sender.test"
ZONE_LINE = re.compile(r'^(\S+)\. IN TXT ((?:"[^"]*" ?)+)$')
MESSAGES = 2


class ReportEndpoint:
    """A real HTTPS server taking POSTed reports; `fail_first` 500s first."""

    def __init__(self, ip: str, port: int, cert: str, key: str):
        self.posts: list[dict] = []
        self.fail_first = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                endpoint.posts.append({"path": self.path, "host": self.headers.get("Host"),
                                       "type": self.headers.get("Content-Type"), "body": body})
                status = 500 if len(endpoint.posts) <= endpoint.fail_first else 201
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = http.server.ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def day_bounds(day: str) -> tuple[int, int]:
    start = datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    return int(start.timestamp()), int(start.timestamp()) + 86400


@pytest.fixture
def world(dns_server, make_downstream, tls_ca, tmp_path):
    mx_port = free_port(GOOD_IP, BAD_IP)
    https_port = free_port(REPORT_IP)
    cert = tls_ca.issue(ENDPOINT, directory=tmp_path / "endpoint-cert")
    endpoint = ReportEndpoint(REPORT_IP, https_port, str(cert.cert), str(cert.key))
    good = make_downstream("good", GOOD_IP, mx_port, domains=["rcpt.test", "reports.test"],
                           hostname=GOOD_MX, tls="ca")
    bad = make_downstream("bad", BAD_IP, mx_port, domains=["rcpt.test"], hostname=BAD_MX,
                          tls="selfsigned")
    dns_server.set_records({
        GOOD_MX: {"A": GOOD_IP},
        BAD_MX: {"A": BAD_IP},
        "rcpt.test": {"MX": [(10, BAD_MX), (20, GOOD_MX)]},
        "_smtp._tls.rcpt.test": {"TXT": [
            "v=spf1 -all",
            f"v=TLSRPTv1; rua=mailto:{RUA_MAIL},https://{ENDPOINT}/v1/report"]},
        "reports.test": {"MX": [(10, GOOD_MX)]},
        ENDPOINT: {"A": REPORT_IP},
    })
    yield {"mx_port": mx_port, "https_port": https_port, "endpoint": endpoint, "good": good,
           "bad": bad, "dns": dns_server, "ca": tls_ca}
    endpoint.stop()


SETTINGS = {"mta.min_backoff": "1s", "mta.max_backoff": "2s",
            "tlsrpt.from": f"tlsrpt@{SENDER_DOMAIN}",
            "tlsrpt.organization": "Postern Test Org",
            "tlsrpt.contact": "noc@sender.test"}


def gateway(world, make_gateway, name="gw", store: str | None = None, setup: bool = True):
    """A delivering gateway (https_port = the endpoint's); `store` a PostgreSQL URL."""
    gw = make_gateway(name, fresh_store=store is not None, start=False, paused=False,
                      mx_port=world["mx_port"], nameservers=[world["dns"].nameserver])
    text = gw.config.read_text()
    assert "[delivery]\n" in text
    text = text.replace("[delivery]\n", f"[delivery]\nhttps_port = {world['https_port']}\n", 1)
    if store:
        text = f'store = "{store}"\nnode_name = "{name}"\n' + text
    gw.config.write_text(text)
    if setup:
        gw.cli_ok("cert", "import", "--name", "Test CA", "--cert", str(world["ca"].cert))
        gw.set("tls.outbound.trusted_ca", "Test CA")
        for key, value in SETTINGS.items():
            gw.set(key, value)
        add_domains(gw, [{"name": "rcpt.test", "tls": "verify"}])
    return gw


def with_dkim(world, gw) -> str:
    r = gw.cli_ok("dkim", "generate", "--domain", SENDER_DOMAIN, "--selector", "rpt")
    m = ZONE_LINE.match(r.stdout.strip())
    assert m, r
    name, record = m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))
    world["dns"].update({name: {"TXT": [record]}})
    gw.set("tlsrpt.dkim_key", name)
    return name


def deliver_known_sessions(world, gw) -> list[str]:
    """MESSAGES messages to rcpt.test: each fails at mx.bad.test, is delivered by mx.good.test."""
    qids = [submit(gw, "bob@rcpt.test", f"tlsrpt {i}") for i in range(MESSAGES)]
    for qid in qids:
        outcome = wait_outcome(gw, qid)
        assert outcome["event"] == "delivered", (outcome, gw.log()[-2000:])
    assert world["bad"].messages(rcpt="bob@rcpt.test") == []
    return qids


def dns_txt(world):
    """dkimpy's DNS lookup, answered by the test DNS server over UDP."""
    def lookup(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        reply = DNSRecord.parse(DNSRecord.question(name.rstrip("."), "TXT").send(
            "127.0.0.1", world["dns"].port, timeout=timeout))
        for rr in reply.rr:
            return b"".join(rr.rdata.data)
        return None
    return lookup


def report_mails(world) -> list[bytes]:
    return world["good"].messages(rcpt=RUA_MAIL)


def gzip_part(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, raw[:3000]
    return msg, parts[0]


def check_report(report: dict, day: str, start: int, end: int):
    """Field by field against RFC 8460 §4 and the sessions delivered."""
    assert set(report) == {"organization-name", "date-range", "contact-info", "report-id",
                           "policies"}, report
    assert report["organization-name"] == "Postern Test Org"
    assert report["contact-info"] == "noc@sender.test"
    assert report["report-id"].startswith(f"{day}.rcpt.test.") and report["report-id"].endswith(
        f"@{SENDER_DOMAIN}"), report
    rng = report["date-range"]
    assert rng["start-datetime"] == f"{day}T00:00:00Z", rng
    assert re.fullmatch(rf"{day}T\d\d:\d\d:\d\dZ", rng["end-datetime"]), rng
    by_host = {p["policy"]["mx-host"]: p for p in report["policies"]}
    assert set(by_host) == {GOOD_MX, BAD_MX}, report
    for host, policy in by_host.items():
        assert policy["policy"] == {"policy-type": "no-policy-found", "policy-domain": "rcpt.test",
                                    "mx-host": host}, policy
    good, bad = by_host[GOOD_MX], by_host[BAD_MX]
    assert good["summary"] == {"total-successful-session-count": MESSAGES,
                               "total-failure-session-count": 0}, good
    assert good["failure-details"] == []
    assert bad["summary"] == {"total-successful-session-count": 0,
                              "total-failure-session-count": MESSAGES}, bad
    [detail] = bad["failure-details"]
    assert detail["result-type"] == "certificate-not-trusted", detail
    assert detail["receiving-mx-hostname"] == BAD_MX
    assert detail["receiving-ip"] == BAD_IP
    assert detail["sending-mta-ip"].startswith("127."), detail
    assert detail["failed-session-count"] == MESSAGES
    assert detail["failure-reason-code"], detail


def wait_preview(gw, day: str):
    """`tlsrpt preview` once the attempts are in the store (the gateway
    records them in batches, a moment after delivery)."""
    def complete():
        r = gw.cli_ok("tlsrpt", "preview", "--date", day, "--domain", "rcpt.test")
        [report] = json.loads(r.stdout)
        total = sum(p["summary"]["total-successful-session-count"]
                    + p["summary"]["total-failure-session-count"] for p in report["policies"])
        return total >= 2 * MESSAGES
    wait_for(complete, 20, "the attempts recorded")
    return gw.cli_ok("tlsrpt", "preview", "--date", day)


def test_report_mailed_signed_and_posted(world, make_gateway):
    gw = gateway(world, make_gateway)
    with_dkim(world, gw)
    gw.start()
    deliver_known_sessions(world, gw)
    day = today()
    start, end = day_bounds(day)

    # preview: the JSON that would be sent, and where to (stderr); nothing sent.
    r = wait_preview(gw, day)
    [preview] = json.loads(r.stdout)
    check_report(preview, day, start, end)
    assert f"rcpt.test {day}: to mailto:{RUA_MAIL}, https://{ENDPOINT}/v1/report" in r.stderr, r
    assert report_mails(world) == [] and world["endpoint"].posts == []

    r = gw.cli_ok("tlsrpt", "send", "--date", day)
    assert re.search(rf"rcpt.test {day}: mailto:{RUA_MAIL}: queued as \S+", r.stdout), r
    assert f"rcpt.test {day}: https://{ENDPOINT}/v1/report: HTTP 201" in r.stdout, r

    # The https POST: gzipped JSON with the RFC media type, to https_port.
    [post] = world["endpoint"].posts
    assert post["type"] == "application/tlsrpt+gzip", post
    assert post["path"] == "/v1/report" and post["host"] == f"{ENDPOINT}:{world['https_port']}"
    posted = json.loads(gzip.decompress(post["body"]))
    check_report(posted, day, start, end)

    # The mail: at the real receiver, signed, multipart/report with the part.
    [raw] = world["good"].wait_for_messages(timeout=20, rcpt=RUA_MAIL)
    msg, part = gzip_part(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "rcpt.test"
    assert msg["TLS-Report-Submitter"] == SENDER_DOMAIN
    assert msg["TLS-Required"] == "No"
    assert msg["From"] == f"tlsrpt@{SENDER_DOMAIN}" and msg["To"] == RUA_MAIL
    assert msg["Subject"] == (f"Report Domain: rcpt.test Submitter: {SENDER_DOMAIN} "
                              f"Report-ID: <{posted['report-id']}>"), msg["Subject"]
    name = part.get_filename()
    assert re.fullmatch(rf"{SENDER_DOMAIN}!rcpt\.test!{start}!(\d+)\.json\.gz", name), name
    assert start < int(name.split("!")[3].split(".")[0]) <= end
    mailed = json.loads(gzip.decompress(part.get_content()))
    assert mailed == posted, "the mail and the POST carry the same report"
    sig = msg["DKIM-Signature"]
    assert sig and "d=sender.test" in sig.replace(" ", "") and "s=rpt" in sig.replace(" ", ""), sig
    assert dkim.verify(raw, dnsfunc=dns_txt(world)), "DKIM signature does not verify"
    # ... and a changed report breaks it (the verifier really checks).
    assert not dkim.verify(raw.replace(b"TLS-Report-Domain: rcpt.test",
                                       b"TLS-Report-Domain: rcpt.tesu"), dnsfunc=dns_txt(world))

    # Sent once: a second send changes nothing.
    r = gw.cli_ok("tlsrpt", "send", "--date", day)
    assert f"rcpt.test {day}: already sent by node" in r.stdout, r
    assert len(world["endpoint"].posts) == 1

    # The report mail's own delivery (to reports.test) is never counted.
    r = gw.cli_ok("tlsrpt", "preview", "--date", day, "--domain", "reports.test")
    [own] = json.loads(r.stdout)
    assert own["policies"] == [], own
    assert "would not be sent" in r.stderr

    # The API and the page show the day's counts and what was sent.
    admin = Admin(gw, token=new_token(gw))
    r = admin.get(f"/api/v1/tlsrpt?date={day}")
    assert r.status == 200, r
    [entry] = [d for d in r.json()["domains"] if d["domain"] == "rcpt.test"]
    assert (entry["successful"], entry["failed"]) == (MESSAGES, MESSAGES), entry
    assert entry["policies"] == [{"policy_type": "no-policy-found", "successful": MESSAGES,
                                  "failed": MESSAGES}], entry
    assert entry["report"]["report_id"] == posted["report-id"], entry
    sent = {s["destination"]: s for s in entry["sent"]}
    assert sent[f"https://{ENDPOINT}/v1/report"]["status"] == "sent", sent
    assert sent[f"https://{ENDPOINT}/v1/report"]["detail"] == "HTTP 201", sent
    # The mail was delivered (the receiver has it, above): the row says so,
    # from the queued message's own tracking events.
    def mailed_row():
        r = admin.get(f"/api/v1/tlsrpt?date={day}")
        [entry] = [d for d in r.json()["domains"] if d["domain"] == "rcpt.test"]
        row = {s["destination"]: s for s in entry["sent"]}[f"mailto:{RUA_MAIL}"]
        return row if row["status"] != "queued" else None
    mail_row = wait_for(mailed_row, 15, "the mailed report's row to show its delivery")
    assert mail_row["status"] == "sent", mail_row
    assert re.fullmatch(r"queued as \S+; delivered to \S+: 250.*", mail_row["detail"]), mail_row
    assert admin.get("/api/v1/tlsrpt?date=2026-13-01").status == 400
    page = admin.get(f"/tlsrpt?date={day}")
    assert page.status == 200, page
    html = page.text
    assert 'data-domain="rcpt.test"' in html and posted["report-id"] in html, html[:2000]
    assert f'data-destination="mailto:{RUA_MAIL}"' in html and 'data-status="sent"' in html


def test_unsigned_without_a_key_and_https_retried_after_500(world, make_gateway):
    gw = gateway(world, make_gateway).start()
    world["endpoint"].fail_first = 1
    deliver_known_sessions(world, gw)
    day = today()
    wait_preview(gw, day)
    r = gw.cli_ok("tlsrpt", "send", "--date", day, "--domain", "rcpt.test")
    assert re.search(rf"https://{ENDPOINT}/v1/report: HTTP 500 Internal Server Error; "
                     r"retrying in \d+s", r.stdout), r
    # The gateway's retry task posts again (backoff mta.min_backoff = 1s).
    wait_for(lambda: len(world["endpoint"].posts) >= 2, 30, "the retried POST")
    time.sleep(3)
    assert len(world["endpoint"].posts) == 2, "retried after success"
    first, second = world["endpoint"].posts
    assert first["body"] == second["body"] and second["type"] == "application/tlsrpt+gzip"
    [raw] = world["good"].wait_for_messages(timeout=20, rcpt=RUA_MAIL)
    msg, _ = gzip_part(raw)
    assert msg["DKIM-Signature"] is None, "signed without tlsrpt.dkim_key"


def test_two_nodes_racing_send_one_report(world, make_gateway, pg_database):
    """Two gateways on one PostgreSQL store run `tlsrpt send` for the same
    day at once: the claim lets exactly one send (one mail, one POST)."""
    a = gateway(world, make_gateway, name="node-a", store=pg_database)
    b = gateway(world, make_gateway, name="node-b", store=pg_database, setup=False)
    a.start(timeout=120)
    b.start(timeout=120)
    deliver_known_sessions(world, a)
    day = today()
    wait_preview(b, day)
    results: dict[str, str] = {}

    def send(gw, key):
        results[key] = gw.cli_ok("tlsrpt", "send", "--date", day, "--domain", "rcpt.test").stdout

    threads = [threading.Thread(target=send, args=(g, k)) for g, k in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    outputs = "\n".join(results.values())
    assert len(results) == 2, results
    assert outputs.count("queued as") == 1, outputs
    assert outputs.count("already sent by node node-") == 1, outputs
    assert len(world["endpoint"].posts) == 1, outputs
    world["good"].wait_for_messages(timeout=30, rcpt=RUA_MAIL)
    time.sleep(2)
    assert len(report_mails(world)) == 1


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def run_on_next_day(gw, after_midnight: int) -> None:
    """From the next start on, `gw` runs with its wall clock moved to the
    next UTC day, `after_midnight` seconds past 00:00 (libfaketime; its
    timers, on the monotonic clock, are left alone)."""
    now = time.time()
    target = (int(now) // 86400 + 1) * 86400 + after_midnight
    gw.extra_env = {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": f"+{target - now:.3f}",
                    "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_daily_run_sends_the_previous_days_report_by_itself(world, make_gateway):
    """With `tlsrpt.enabled`, nobody runs `tlsrpt send`: the gateway's own
    daily run sends the previous UTC day's report once 00:10 UTC has
    passed (mail and POST), and a restart the same day sends nothing again."""
    gw = gateway(world, make_gateway)
    gw.set("tlsrpt.enabled", "true")
    gw.start()
    deliver_known_sessions(world, gw)
    day = today()
    wait_preview(gw, day)
    # Today is not over: its report waits (the run sends yesterday's, and
    # yesterday had no sessions).
    time.sleep(5)
    assert world["endpoint"].posts == [] and report_mails(world) == []

    # The next day, 00:09:55: not yet due...
    assert gw.stop() == 0
    run_on_next_day(gw, 600 - 8)
    gw.start()
    time.sleep(4)
    assert world["endpoint"].posts == [], "sent before 00:10 UTC"
    # ... and a few seconds later it is, without a restart.
    wait_for(lambda: len(world["endpoint"].posts) >= 1, 30, "the daily run's POST")
    [post] = world["endpoint"].posts
    start, end = day_bounds(day)
    check_report(json.loads(gzip.decompress(post["body"])), day, start, end)
    [raw] = world["good"].wait_for_messages(timeout=30, rcpt=RUA_MAIL)
    _, part = gzip_part(raw)
    assert json.loads(gzip.decompress(part.get_content())) == json.loads(
        gzip.decompress(post["body"]))
    log = gw.stderr()
    assert re.search(rf"tlsrpt: rcpt.test {day}: https://{ENDPOINT}/v1/report: HTTP 201", log), \
        log[-3000:]

    # Restarted the same (fake) day: the claim says it was sent; nothing twice.
    assert gw.stop() == 0
    gw.start()
    time.sleep(6)
    assert len(world["endpoint"].posts) == 1 and len(report_mails(world)) == 1
