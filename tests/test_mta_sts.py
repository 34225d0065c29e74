"""MTA-STS (RFC 8461; SPEC §10 item 3; issue 11 item 8) end to end.

The world, all on loopback:

* the test DNS server serves each domain's MX, its `_mta-sts` TXT record
  and the A record of `mta-sts.<domain>`;
* real HTTPS policy hosts (Python `http.server` + `ssl`, one thread each):
  127.0.0.10 with a certificate from the test CA naming every
  `mta-sts.<domain>`, 127.0.0.11 with a self-signed one; both on one port,
  which is the gateway's `[delivery] https_port`. Each counts the fetches
  per host name;
* two real Postfix downstreams on one MX port: mx.good.test (127.0.0.3,
  certificate from the test CA) and mx.bad.test (127.0.0.4, self-signed);
* a Postern gateway whose global mode is the default `opportunistic` and
  which trusts the test CA ("Test CA").

What Postern did is read from `queue list --json` (state, last_error), the
mail log and `postern trace` (each attempt's record carries what MTA-STS
said: policy, where from, a failed fetch with its RFC 8460 result type,
and the report-only verdicts); what the downstream got from its Maildir.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections import Counter

import pytest

from delivery_support import (
    arrived_over_tls,
    delivery_gateway,
    log_events,
    submit,
    tlsrpt_preview,
    wait_for,
    wait_outcome,
    wait_rcpt_state,
    with_subject,
)
from fixtures_postfix import free_port, make_self_signed

GOOD_IP, BAD_IP = "127.0.0.3", "127.0.0.4"
POLICY_IP, UNTRUSTED_POLICY_IP = "127.0.0.10", "127.0.0.11"
GOOD_MX, BAD_MX = "mx.good.test", "mx.bad.test"


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "version: STSv1\r\nmode: %s\r\n%smax_age: %d\r\n" % (
        mode, "".join(f"mx: {m}\r\n" for m in mx), max_age)


# domain -> (MX host, TXT id or None, policy host IP, response)
#   response: policy text (200 text/plain), or (status, headers, body)
DOMAINS = {
    "enforce-ok.test": (GOOD_MX, "a1", POLICY_IP, policy("enforce", GOOD_MX)),
    "enforce-wild.test": (GOOD_MX, "a1", POLICY_IP, policy("enforce", "*.good.test")),
    "enforce-badcert.test": (BAD_MX, "a1", POLICY_IP, policy("enforce", BAD_MX)),
    "enforce-nomatch.test": (GOOD_MX, "a1", POLICY_IP, policy("enforce", "mx.elsewhere.test")),
    "testing-badcert.test": (BAD_MX, "a1", POLICY_IP, policy("testing", BAD_MX)),
    "mode-none.test": (BAD_MX, "a1", POLICY_IP, policy("none")),
    "redirect.test": (BAD_MX, "a1", POLICY_IP,
                      (301, {"Location": "https://mta-sts.redirect.test/elsewhere"}, "moved")),
    "badsyntax.test": (BAD_MX, "a1", POLICY_IP,
                       "version: STSv1\r\nmode: enforce\r\nmx: mx.bad.test\r\nmax_age: soon\r\n"),
    "badtype.test": (BAD_MX, "a1", POLICY_IP,
                     (200, {"Content-Type": "text/html"}, policy("enforce", GOOD_MX))),
    "untrusted.test": (BAD_MX, "a1", UNTRUSTED_POLICY_IP, policy("enforce", GOOD_MX)),
    "nopolicy.test": (BAD_MX, None, POLICY_IP, None),
    "slow.test": (GOOD_MX, None, POLICY_IP, None),
    "cached.test": (GOOD_MX, "a1", POLICY_IP, policy("enforce", GOOD_MX)),
    "newid.test": (GOOD_MX, "a1", POLICY_IP, policy("enforce", GOOD_MX)),
    "off-global.test": (BAD_MX, "a1", POLICY_IP, policy("enforce", GOOD_MX)),
    "off-domain.test": (BAD_MX, "a1", POLICY_IP, policy("enforce", GOOD_MX)),
}


class PolicyHost:
    """A real HTTPS server answering /.well-known/mta-sts.txt by Host header."""

    def __init__(self, ip: str, port: int, cert: str, key: str):
        self.responses: dict[str, object] = {}
        self.fetches: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self):
                name = (self.headers.get("Host") or "").split(":")[0].lower()
                host.paths[self.path] += 1
                response = host.responses.get(name) if self.path == "/.well-known/mta-sts.txt" else None
                if self.path == "/.well-known/mta-sts.txt":
                    host.fetches[name] += 1
                if response is None:
                    status, headers, body = 404, {"Content-Type": "text/plain"}, "no policy"
                elif isinstance(response, str):
                    status, headers, body = 200, {"Content-Type": "text/plain; charset=utf-8"}, response
                else:
                    status, headers, body = response
                data = body.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = http.server.ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def zone_for(domains: dict) -> dict:
    records: dict = {GOOD_MX: {"A": GOOD_IP}, BAD_MX: {"A": BAD_IP}}
    for domain, (mx, sts_id, policy_ip, _) in domains.items():
        records[domain] = {"MX": [(10, mx)]}
        if sts_id is not None:
            records[f"_mta-sts.{domain}"] = {"TXT": ["v=spf1 -all", f"v=STSv1; id={sts_id}"]}
        records[f"mta-sts.{domain}"] = {"A": policy_ip}
    return records


@pytest.fixture
def world(dns_server, make_downstream, make_gateway, tls_ca, tmp_path):
    """Policy hosts, both downstreams, the zone; `world["gateway"](...)` makes the gateway."""
    mx_port = free_port(GOOD_IP, BAD_IP)
    https_port = free_port(POLICY_IP, UNTRUSTED_POLICY_IP)
    names = [f"mta-sts.{d}" for d in DOMAINS]
    trusted = tls_ca.issue(names[0], dns=names, directory=tmp_path / "policy-cert")
    untrusted = make_self_signed(tmp_path / "untrusted-cert", "mta-sts.untrusted.test")
    hosts = {POLICY_IP: PolicyHost(POLICY_IP, https_port, str(trusted.cert), str(trusted.key)),
             UNTRUSTED_POLICY_IP: PolicyHost(UNTRUSTED_POLICY_IP, https_port, str(untrusted.cert),
                                             str(untrusted.key))}
    for domain, (_, _, ip, response) in DOMAINS.items():
        if response is not None:
            hosts[ip].responses[f"mta-sts.{domain}"] = response
    good_domains = [d for d, v in DOMAINS.items() if v[0] == GOOD_MX]
    bad_domains = [d for d, v in DOMAINS.items() if v[0] == BAD_MX]
    good = make_downstream("good", GOOD_IP, mx_port, domains=good_domains, hostname=GOOD_MX, tls="ca")
    bad = make_downstream("bad", BAD_IP, mx_port, domains=bad_domains, hostname=BAD_MX,
                          tls="selfsigned")
    dns_server.set_records(zone_for(DOMAINS))

    def gateway(name="gw", settings=None, domains=None):
        gw = delivery_gateway(make_gateway, dns_server, mx_port, name=name, ca=tls_ca,
                              trusted_ca="Test CA", settings=settings, domains=domains, start=False)
        text = gw.config.read_text()
        assert "[delivery]\n" in text
        gw.config.write_text(text.replace("[delivery]\n", f"[delivery]\nhttps_port = {https_port}\n", 1))
        return gw.start()

    yield {"gateway": gateway, "hosts": hosts, "policy": hosts[POLICY_IP], "good": good, "bad": bad,
           "mx_port": mx_port, "https_port": https_port, "dns": dns_server}
    for h in hosts.values():
        h.stop()


def trace(gw, qid: str) -> str:
    return gw.cli_ok("trace", qid).stdout


def _dicts(value):
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _dicts(v)


def attempts(gw, qid: str) -> list[dict]:
    """The attempt records in `postern trace` (JSON after each line's columns)."""
    found = []
    for line in trace(gw, qid).splitlines():
        if "{" not in line:
            continue
        detail = json.loads(line[line.index("{"):])
        found += [d for d in _dicts(detail) if "host" in d and "requirement" in d]
    assert found, trace(gw, qid)
    return found


def last_attempt(gw, qid: str) -> dict:
    return attempts(gw, qid)[-1]


def delivered(world, gw, rcpt: str, subject: str, downstream: str) -> str:
    qid = submit(gw, rcpt, subject)
    outcome = wait_outcome(gw, qid)
    assert outcome["event"] == "delivered", (outcome, gw.log()[-2000:])
    msgs = with_subject(world[downstream].wait_for_messages(timeout=15, rcpt=rcpt), subject)
    assert len(msgs) == 1, f"{subject}: {len(msgs)} copies at {downstream}"
    return qid


def deferred(gw, rcpt: str, subject: str) -> tuple[str, str]:
    qid = submit(gw, rcpt, subject)
    state = wait_rcpt_state(gw, qid, rcpt, "deferred")
    return qid, state["last_error"]


def test_enforce(world):
    """enforce: a matching MX with a verifiable certificate is delivered over
    verified TLS; a self-signed one, or an MX outside the policy, is
    deferred with a reason naming host, source and failure — never sent in
    plaintext, never bounced."""
    gw = world["gateway"]()
    qid = delivered(world, gw, "bob@enforce-ok.test", "enforce ok", "good")
    raw = with_subject(world["good"].messages(rcpt="bob@enforce-ok.test"), "enforce ok")[0]
    assert arrived_over_tls(raw)
    a = last_attempt(gw, qid)
    assert (a["requirement"], a["source"], a["cert_verified"]) == ("MTA-STS enforce", "mta-sts", True), a
    assert a["mta_sts_lookup"]["from"] == "fetched" and a["mta_sts_lookup"]["policy"]["id"] == "a1", a
    delivered(world, gw, "bob@enforce-wild.test", "enforce wildcard", "good")

    _, reason = deferred(gw, "bob@enforce-badcert.test", "enforce badcert")
    assert reason.startswith(f"{BAD_MX}[{BAD_IP}]: MTA-STS enforce: certificate verification failed"), reason
    assert "not issued by a trusted CA" in reason, reason
    _, reason = deferred(gw, "bob@enforce-nomatch.test", "enforce nomatch")
    assert reason.startswith(f"{GOOD_MX}: MTA-STS enforce:"), reason
    assert "not an MX host of the MTA-STS policy" in reason, reason

    assert world["bad"].messages(rcpt="bob@enforce-badcert.test") == [], "sent despite enforce"
    assert world["good"].messages(rcpt="bob@enforce-nomatch.test") == [], "sent to an MX outside the policy"
    assert not [e for e in gw.log().splitlines() if " bounced " in e], gw.log()

    # The day's TLS-RPT report (RFC 8460 §4.3) names the policy applied:
    # type sts, the policy text line by line, and the failure's result type.
    served = ["version: STSv1", "mode: enforce", f"mx: {GOOD_MX}", "max_age: 86400"]
    [ok] = tlsrpt_preview(gw, "enforce-ok.test", 1)["policies"]
    assert ok["policy"] == {"policy-type": "sts", "policy-domain": "enforce-ok.test",
                            "policy-string": served, "mx-host": GOOD_MX}, ok
    assert ok["summary"] == {"total-successful-session-count": 1,
                             "total-failure-session-count": 0}, ok
    [bad] = tlsrpt_preview(gw, "enforce-badcert.test", 1)["policies"]
    assert bad["policy"]["policy-type"] == "sts", bad
    assert bad["policy"]["policy-string"] == [s.replace(GOOD_MX, BAD_MX) for s in served], bad
    assert bad["summary"]["total-failure-session-count"] >= 1, bad
    [detail] = bad["failure-details"]
    assert (detail["result-type"], detail["receiving-mx-hostname"], detail["receiving-ip"]) == (
        "certificate-not-trusted", BAD_MX, BAD_IP), detail
    # An MX outside the policy is never contacted, yet it is a failed
    # session of the policy: the report tells the domain its policy and its
    # MX records disagree.
    [nomatch] = tlsrpt_preview(gw, "enforce-nomatch.test", 1)["policies"]
    assert nomatch["policy"]["policy-type"] == "sts", nomatch
    assert nomatch["summary"]["total-successful-session-count"] == 0, nomatch
    [detail] = nomatch["failure-details"]
    assert (detail["result-type"], detail["receiving-mx-hostname"]) == (
        "validation-failure", GOOD_MX), detail
    # Nothing was contacted: no address on either end.
    assert "receiving-ip" not in detail and "sending-mta-ip" not in detail, detail
    assert "not an MX host of the MTA-STS policy" in detail["failure-reason-code"], detail
    # ... and the mail it holds back raises the deferral alert.
    [alert] = [a for a in log_events(gw, "alert", kind="required-tls-deferred")
               if a["domain"] == "enforce-nomatch.test"]
    assert alert["host"] == GOOD_MX, alert["line"]
    assert alert["detail"].startswith(f"deferred: MTA-STS enforce could not be met at {GOOD_MX}["), alert


def test_testing_and_none_deliver_by_the_base(world):
    """testing: delivered by the base requirement (opportunistic TLS to a
    self-signed MX) and the would-be failure recorded; mode none: delivered,
    nothing would fail."""
    gw = world["gateway"]()
    qid = delivered(world, gw, "bob@testing-badcert.test", "testing badcert", "bad")
    a = last_attempt(gw, qid)
    assert a["requirement"] == "global opportunistic" and a["mta_sts_lookup"]["policy"]["mode"] == "testing", a
    [would] = a["would_fail"]
    assert (would["requirement"], would["source"], would["result_type"]) == (
        "MTA-STS testing", "mta-sts", "certificate-not-trusted"), would
    assert "self-signed" in would["failure"], would

    qid = delivered(world, gw, "bob@mode-none.test", "mode none", "bad")
    a = last_attempt(gw, qid)
    assert a["mta_sts_lookup"]["policy"]["mode"] == "none" and not a.get("would_fail"), a


@pytest.mark.parametrize("domain, result_type, words", [
    ("redirect.test", "sts-policy-fetch-error", "HTTP status 301 (redirect to https://mta-sts.redirect.test/elsewhere"),
    ("badsyntax.test", "sts-policy-invalid", 'max_age "soon" is not a number'),
    ("badtype.test", "sts-policy-invalid", 'media type is "text/html", not text/plain'),
    ("untrusted.test", "sts-webpki-invalid", "certificate not valid for mta-sts.untrusted.test"),
])
def test_unusable_policy_is_no_policy_and_recorded(world, domain, result_type, words):
    """A redirect (not followed), bad syntax, a wrong media type, an
    untrusted policy host: no policy applies — delivered by the base to the
    self-signed MX, which an enforce policy would have refused — and the
    failure is recorded with its RFC 8460 result type."""
    gw = world["gateway"]()
    qid = delivered(world, gw, f"bob@{domain}", f"unusable {domain}", "bad")
    sts = last_attempt(gw, qid)["mta_sts_lookup"]
    assert sts["from"] == "none" and "policy" not in sts, sts
    assert sts["failure"]["result_type"] == result_type, sts
    assert words in sts["failure"]["detail"], sts
    assert world["policy"].paths["/elsewhere"] == 0, "the redirect was followed"


def test_no_txt_record_no_fetch(world):
    gw = world["gateway"]()
    qid = delivered(world, gw, "bob@nopolicy.test", "no txt", "bad")
    assert last_attempt(gw, qid)["mta_sts_lookup"] == {"txt": "none", "from": "none"}
    assert world["policy"].fetches["mta-sts.nopolicy.test"] == 0


def test_txt_timeout_is_not_repeated_for_every_message(world):
    """A name server that never answers the _mta-sts query: the first
    message waits for the resolver's timeout and goes by the base; the next
    ones do not ask again (the failure is remembered for a minute)."""
    world["dns"].update({"_mta-sts.slow.test": {"drop": True}})
    gw = world["gateway"]()

    def txt_queries():
        return sum(1 for name, rtype, _ in list(world["dns"].queries)
                   if name.rstrip(".").lower() == "_mta-sts.slow.test")

    qid = delivered(world, gw, "bob@slow.test", "slow 1", "good")
    assert "timed out" in last_attempt(gw, qid)["mta_sts_lookup"]["txt"].lower() or \
        "failed" in last_attempt(gw, qid)["mta_sts_lookup"]["txt"], last_attempt(gw, qid)
    asked = txt_queries()
    assert asked >= 1
    delivered(world, gw, "bob@slow.test", "slow 2", "good")
    delivered(world, gw, "bob@slow.test", "slow 3", "good")
    assert txt_queries() == asked


def test_cached_policy_survives_a_policy_host_outage_and_a_restart(world):
    """The policy is fetched once; with the policy host stopped (and the
    gateway restarted, so only the store remembers it) it is still
    enforced: the domain's MX moved to a host outside the policy is
    deferred, not delivered opportunistically."""
    gw = world["gateway"]()
    delivered(world, gw, "bob@cached.test", "cached 1", "good")
    delivered(world, gw, "bob@cached.test", "cached 2", "good")
    assert world["policy"].fetches["mta-sts.cached.test"] == 1
    for host in world["hosts"].values():
        host.stop()
    world["hosts"].clear()
    gw.restart()
    world["dns"].update({"cached.test": {"MX": [(10, BAD_MX)]}})
    qid, reason = deferred(gw, "bob@cached.test", "cached during outage")
    assert reason.startswith(f"{BAD_MX}: MTA-STS enforce:"), reason
    assert world["bad"].messages(rcpt="bob@cached.test") == []
    out = gw.cli_ok("probe", "cached.test").stdout
    assert "MTA-STS TXT:   v=STSv1; id=a1" in out, out
    assert "mode enforce" in out and "from cache" in out, out
    assert "MTA-STS mx:    mx.good.test" in out, out
    assert "not used:        mx.bad.test is not an MX host of the MTA-STS policy" in out, out


def test_new_id_refetches(world):
    """A new TXT id fetches the policy again (counted at the policy host),
    and the new policy applies; an unchanged id does not."""
    gw = world["gateway"]()
    delivered(world, gw, "bob@newid.test", "id 1", "good")
    delivered(world, gw, "bob@newid.test", "id 1 again", "good")
    policy_host = world["policy"]
    assert policy_host.fetches["mta-sts.newid.test"] == 1
    policy_host.responses["mta-sts.newid.test"] = policy("testing", GOOD_MX)
    world["dns"].update({"_mta-sts.newid.test": {"TXT": ["v=STSv1; id=b2"]}})
    qid = delivered(world, gw, "bob@newid.test", "id 2", "good")
    assert policy_host.fetches["mta-sts.newid.test"] == 2
    sts = last_attempt(gw, qid)["mta_sts_lookup"]
    assert (sts["from"], sts["policy"]["id"], sts["policy"]["mode"]) == ("fetched", "b2", "testing"), sts
    out = gw.cli_ok("probe", "newid.test").stdout
    assert "policy id b2 mode testing" in out and "report-only:     MTA-STS testing" in out, out


def test_switched_off_globally_and_per_domain(world):
    """tls.outbound.mta_sts = false, or [[domain]] mta_sts = false: the
    enforce policy is ignored (not even fetched) and mail goes to the
    self-signed MX by the base requirement."""
    gw = world["gateway"](settings={"tls.outbound.mta_sts": "false"})
    qid = delivered(world, gw, "bob@off-global.test", "off global", "bad")
    assert "mta_sts" not in last_attempt(gw, qid)
    assert "MTA-STS:       not consulted" in gw.cli_ok("probe", "off-global.test").stdout
    gw.stop()

    gw2 = world["gateway"](name="gw2", domains=[{"name": "off-domain.test", "mta_sts": False}])
    delivered(world, gw2, "bob@off-domain.test", "off domain", "bad")
    # The same gateway still honours other domains' policies.
    _, reason = deferred(gw2, "bob@enforce-badcert.test", "still enforced")
    assert "MTA-STS enforce" in reason, reason
    fetches = world["policy"].fetches
    assert fetches["mta-sts.off-global.test"] == 0 and fetches["mta-sts.off-domain.test"] == 0
    assert "mta_sts = false" in gw2.cli_ok("settings", "export").stdout
