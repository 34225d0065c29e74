"""Learned per-domain TLS levels and monitor rules (SPEC §10 items 4 and 7;
issue 14).

A real downstream first takes mail over verified TLS (a certificate from
the test CA, trusted through tls.outbound.trusted_ca) often enough for the
level to be learned — thresholds are settings, so `learn_min_span = "1s"`
stands in for a day — and then loses STARTTLS (Postfix reconfigured and
reloaded) or starts masking it (a Python peer answering EHLO with
`XXXXXXXA`, as a middlebox does):

* `learn = "monitor"` delivers, logs a `downgrade` and `starttls-missing`,
  and `postern policy show` lists the would-be failure;
* `learn = "enforce"` defers with a reason naming the learned level, and
  `postern policy forget` lets it go again;
* `postern policy pin` writes the `[[domain]]` rule (`settings show`, the
  API); a short `learn_expiry` forgets; `learn = "off"` learns nothing;
* `[[domain]] monitor = true` with `tls = "verify"` towards a self-signed
  downstream delivers, logs the would-be failure and counts it on the
  Domains page.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from admin_client import PASSWORD, Admin, admin_context, wait_admin
from delivery_support import (
    arrived_over_tls,
    delivery_gateway,
    log_events,
    mx_zone,
    submit,
    wait_for,
    wait_outcome,
    wait_rcpt_state,
    with_subject,
    zone,
)
from fixtures_postfix import free_port

IP = "127.0.0.41"
DOMAIN = "partner.test"
HOST = f"mx.{DOMAIN}"
LEARNING = {
    "tls.outbound.learn_min_deliveries": "3",
    "tls.outbound.learn_min_span": "1s",
}


@pytest.fixture
def partner(dns_server, make_downstream):
    port = free_port(IP)
    pf = make_downstream("partner", IP, port, domains=[DOMAIN], tls="ca")
    dns_server.set_records(zone(mx_zone(DOMAIN, IP)))
    return pf


def admin(gw) -> Admin:
    """A logged-in admin session (the password set through the CLI)."""
    gw.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    wait_admin(gw)
    a = Admin(gw, admin_context(gw))
    assert a.login().status == 200
    return a


def policy(gw, *args) -> dict | list:
    return json.loads(gw.cli_ok("policy", *args, "--json").stdout)


def deliver(gw, subject: str) -> dict:
    qid = submit(gw, f"bob@{DOMAIN}", subject)
    entry = wait_outcome(gw, qid, f"bob@{DOMAIN}")
    assert entry["event"] == "delivered", entry["line"]
    return entry


def learn_verified(gw) -> dict:
    """Three verified deliveries spread over more than learn_min_span; the
    evidence reaches the store within a second or two."""
    for i in range(3):
        if i == 2:
            time.sleep(1.2)   # learn_min_span = 1s: the span, not a wait for a result
        entry = deliver(gw, f"learning {i}")
        assert entry.get("verified") == "true", entry["line"]

    def learned():
        entries = [e for e in policy(gw, "list") if e["domain"] == DOMAIN]
        return entries and entries[0]["learned"]
    return wait_for(learned, 10, f"{DOMAIN} to be learned")


def reloads(gw) -> int:
    return gw.stderr().count("settings reloaded")


def set_live(gw, key: str, value: str) -> None:
    """settings set on a running gateway, and wait until it applied them
    (a new settings generation also retires idle connections)."""
    before = reloads(gw)
    gw.set(key, value)
    wait_for(lambda: reloads(gw) > before, 10, f"the gateway to apply {key}")


def drop_starttls(pf) -> None:
    pf.postconf(smtpd_tls_security_level="none")
    pf.reload()


def test_monitor_learns_then_delivers_a_downgrade_and_records_it(partner, dns_server, make_gateway,
                                                                 tls_ca):
    gw = delivery_gateway(make_gateway, dns_server, partner.port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING)
    assert "learn = \"monitor\"" in gw.cli_ok("settings", "show").stdout, "monitor is the default"
    learned = learn_verified(gw)
    assert learned["level"] == "verified" and learned["deliveries"] >= 3, learned

    shown = policy(gw, "show", DOMAIN)
    [row] = [h for h in shown["hosts"] if h["level"] == "verified"]
    assert row["host"] == HOST and row["deliveries"] == 3, shown
    assert row["last_seen"] - row["first_seen"] >= 1, shown

    drop_starttls(partner)
    set_live(gw, "tls.outbound.learn_expiry", "30d")
    entry = deliver(gw, "after the downgrade")
    assert "tls" not in entry, f"delivered in plaintext, as the other sources allow: {entry['line']}"
    [msg] = with_subject(partner.wait_for_messages(4, timeout=10), "after the downgrade")
    assert not arrived_over_tls(msg)

    [down] = log_events(gw, "downgrade", domain=DOMAIN)
    assert down["learned"] == "verified" and down["delivered"] == "none", down["line"]
    assert down["action"] == "delivered" and down["host"] == HOST, down["line"]
    assert "STARTTLS not offered" in down.get("reason", ""), down["line"]
    assert log_events(gw, "starttls-missing", domain=DOMAIN, host=HOST), gw.log()[-2000:]

    def recorded():
        verdicts = policy(gw, "show", DOMAIN)["verdicts"]
        return [v for v in verdicts if v["source"] == "learned"]
    [verdict] = wait_for(recorded, 10, "the downgrade in policy show")
    assert verdict["would_fail"] and verdict["requirement"] == "learned verified", verdict
    # a delivery below the learned level does not unlearn it
    assert policy(gw, "show", DOMAIN)["learned"]["level"] == "verified"

    # Alerts (SPEC §12): mail log, /metrics, /api/v1/alerts; the same
    # condition once an hour, so a second downgrade adds a log line, no alert.
    deliver(gw, "second downgrade")
    assert len(log_events(gw, "downgrade", domain=DOMAIN)) == 2
    kinds = sorted(e["kind"] for e in log_events(gw, "alert", domain=DOMAIN))
    assert kinds == ["downgrade", "starttls-missing"], gw.log()[-3000:]
    api = admin(gw)
    token = gw.cli_ok("admin", "token", "create", "--name", "metrics").stdout.strip()
    metrics = Admin(gw, admin_context(gw), token=token).get("/metrics").text
    assert 'postern_alerts_total{kind="downgrade"} 1' in metrics, metrics
    assert 'postern_alerts_total{kind="starttls-missing"} 1' in metrics, metrics
    # (Only this domain: other alerts, e.g. certificate-expiry, are not ours.)
    def domain_alerts():
        return [a for a in api.get("/api/v1/alerts").json()["alerts"] if a["subject"] == DOMAIN]
    alerts = wait_for(lambda: len(domain_alerts()) == 2 and domain_alerts(), 10, "alerts in the store")
    down = [a for a in alerts if a["kind"] == "downgrade"][0]
    assert down["subject"] == DOMAIN and down["host"] == HOST, down
    assert "below the learned level verified" in down["detail"], down


def test_enforce_defers_a_downgrade_naming_the_learned_level_and_forget_releases_it(
        partner, dns_server, make_gateway, tls_ca):
    gw = delivery_gateway(make_gateway, dns_server, partner.port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING)
    learn_verified(gw)
    drop_starttls(partner)
    set_live(gw, "tls.outbound.learn", "enforce")

    qid = submit(gw, f"bob@{DOMAIN}", "enforced")
    entry = wait_outcome(gw, qid, f"bob@{DOMAIN}")
    assert entry["event"] == "deferred", entry["line"]
    r = wait_rcpt_state(gw, qid, f"bob@{DOMAIN}", "deferred")
    err = r["last_error"]
    assert err.startswith(f"{HOST}[{IP}]: learned verify: "), err
    assert re.search(r"STARTTLS not offered", err), err
    assert with_subject(partner.messages(), "enforced") == [], "nothing may go out in plaintext"
    assert log_events(gw, "downgrade", domain=DOMAIN, action="deferred")
    [alert] = log_events(gw, "alert", kind="downgrade", domain=DOMAIN)
    assert "deferred" in alert["detail"], alert["line"]
    # deferred, not bounced: the queue lifetime decides
    assert not log_events(gw, "bounced", id=qid)

    probe = gw.cli("probe", DOMAIN).stdout
    assert "learned level: verified (tls.outbound.learn = enforce)" in probe, probe
    assert "requirement:     learned verify (set by learned)" in probe, probe

    out = gw.cli_ok("policy", "forget", DOMAIN)
    assert "forgot" in out.stderr, out
    assert not [e for e in policy(gw, "list") if e["domain"] == DOMAIN]
    again = gw.cli("policy", "forget", DOMAIN)
    assert again.rc != 0 and f"no learned entry for {DOMAIN}" in again.stderr, again

    # The gateway reloads the view within 2 s; then the retry goes out.
    def delivered():
        gw.cli_ok("queue", "retry", qid)
        time.sleep(0.5)
        return log_events(gw, "delivered", id=qid)
    wait_for(delivered, 15, "delivery after forget", interval=0.5)
    [msg] = with_subject(partner.wait_for_messages(4, timeout=10), "enforced")
    assert not arrived_over_tls(msg)


def test_pin_writes_the_domain_rule(partner, dns_server, make_gateway, tls_ca):
    gw = delivery_gateway(make_gateway, dns_server, partner.port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING)
    refused = gw.cli("policy", "pin", "nothing.test")
    assert refused.rc != 0 and "no learned entry for nothing.test" in refused.stderr, refused
    learn_verified(gw)
    out = gw.cli_ok("policy", "pin", DOMAIN)
    assert 'tls = "verify"' in out.stderr, out
    shown = gw.cli_ok("settings", "show").stdout
    assert re.search(r'\[\[domain\]\]\nname = "partner\.test"\nrelay = false\ntls = "verify"', shown), shown
    domains = admin(gw).get("/api/v1/domains").json()
    assert {"name": DOMAIN, "relay": False, "tls": "verify"} in domains, domains
    # the pinned rule is now the administrator's: a downgrade defers by it
    drop_starttls(partner)
    set_live(gw, "tls.outbound.learn", "off")
    qid = submit(gw, f"bob@{DOMAIN}", "pinned")
    err = wait_rcpt_state(gw, qid, f"bob@{DOMAIN}", "deferred")["last_error"]
    assert err.startswith(f"{HOST}[{IP}]: domain verify: "), err


def test_short_expiry_forgets(partner, dns_server, make_gateway, tls_ca):
    gw = delivery_gateway(make_gateway, dns_server, partner.port, ca=tls_ca, trusted_ca="Test CA",
                          settings={**LEARNING, "tls.outbound.learn_expiry": "4s",
                                    "tls.outbound.learn": "enforce"})
    learned = learn_verified(gw)
    assert learned["expires_at"] - learned["last_seen"] == 4, learned
    refused = gw.cli("settings", "set", "tls.outbound.learn_expiry", "1s")
    assert refused.rc != 0 and "must be longer than tls.outbound.learn_min_span" in refused.stderr, refused
    drop_starttls(partner)
    set_live(gw, "tls.outbound.learn_min_deliveries", "3")
    wait_for(lambda: policy(gw, "show", DOMAIN)["learned"] is None, 10, "the learned level to expire")
    # expired: enforce has nothing to enforce, the plaintext delivery goes out
    entry = deliver(gw, "after expiry")
    assert "tls" not in entry, entry["line"]
    assert not log_events(gw, "downgrade")


def test_learn_off_learns_nothing(partner, dns_server, make_gateway, tls_ca):
    gw = delivery_gateway(make_gateway, dns_server, partner.port, ca=tls_ca, trusted_ca="Test CA",
                          settings={**LEARNING, "tls.outbound.learn": "off"})
    for i in range(3):
        deliver(gw, f"off {i}")
    time.sleep(2.5)   # longer than the gateway's write interval: nothing may appear
    assert policy(gw, "list") == [], gw.cli_ok("policy", "list").stdout
    assert "nothing learned" in gw.cli_ok("policy", "list").stdout


def test_masked_ehlo_is_a_downgrade(dns_server, make_gateway, make_peer, tls_ca, tmp_path):
    """A middlebox that rewrites STARTTLS to XXXXXXXA: the host offered
    STARTTLS before, so it is reported, and the delivery is a downgrade."""
    port = free_port(IP)
    cert = tls_ca.issue(HOST, directory=tmp_path / "peer-cert")
    peer = make_peer(IP, port, starttls="ok", cert=cert, hostname=HOST)
    dns_server.set_records(zone(mx_zone(DOMAIN, IP)))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING)
    learn_verified(gw)
    peer.starttls = None
    peer.extensions = peer.extensions + ["XXXXXXXA"]
    set_live(gw, "tls.outbound.learn_expiry", "30d")
    deliver(gw, "masked")
    masked = [m for m in peer.messages if b"Subject: masked" in m.data]
    assert masked and not masked[0].tls
    assert log_events(gw, "starttls-missing", domain=DOMAIN, host=HOST), gw.log()[-2000:]
    [down] = log_events(gw, "downgrade", domain=DOMAIN)
    assert down["learned"] == "verified" and down["delivered"] == "none", down["line"]
    assert log_events(gw, "alert", kind="starttls-missing", domain=DOMAIN, host=HOST)


def test_monitor_rule_records_would_be_failures(dns_server, make_downstream, make_gateway, tls_ca):
    port = free_port(IP)
    pf = make_downstream("selfsigned", IP, port, domains=[DOMAIN], tls="selfsigned")
    dns_server.set_records(zone(mx_zone(DOMAIN, IP)))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, trusted_ca="Test CA",
                          domains=[{"name": DOMAIN, "tls": "verify", "monitor": True}])
    for i in range(2):
        entry = deliver(gw, f"monitored {i}")
        # delivered by the global mode (opportunistic), over TLS
        assert entry.get("tls", "").startswith("TLSv1."), entry["line"]
        assert entry.get("verified") == "false", entry["line"]
    assert len(pf.wait_for_messages(2, timeout=10)) == 2
    lines = log_events(gw, "monitor", domain=DOMAIN, verdict="would-fail")
    assert len(lines) == 2, gw.log()[-2000:]
    assert lines[0]["requirement"] == "domain verify", lines[0]["line"]
    assert lines[0]["reason"].startswith("certificate not verified"), lines[0]["line"]

    api = admin(gw)

    def counted():
        page = api.get("/settings/domains").text
        row = re.search(r'<tr data-domain="partner\.test".*?</tr>', page, re.S)
        return row and re.search(r'data-would-fail-24h="2"', row.group(0)) and row.group(0)
    row = wait_for(counted, 10, "the Domains page to count 2 would-be failures")
    assert 'data-would-fail-7d="2"' in row and 'data-attempts-7d="2"' in row, row
    assert "Monitor" in row, row

    # monitor = true needs a tls to evaluate
    bad = gw.cli("settings", "import", "/dev/stdin",
                 input=b'[[domain]]\nname = "x.test"\nmonitor = true\n')
    assert bad.rc != 0 and "domain[0].monitor" in bad.stderr, bad


def test_outbound_policies_page_in_chromium(dns_server, make_downstream, make_gateway, tls_ca, tmp_path):
    """The Outbound policies page in headless Chromium: both learned domains
    with their evidence, the filter, pin (the rule appears on the Domains
    page and in the settings), forget (gone from the store)."""
    from test_admin_browser import _missing, run
    if _missing() is not None:
        pytest.skip(_missing())
    port = free_port(IP, "127.0.0.42")
    make_downstream("partner", IP, port, domains=[DOMAIN], tls="ca")
    make_downstream("other", "127.0.0.42", port, domains=["other.test"], tls="selfsigned")
    dns_server.set_records(zone(mx_zone(DOMAIN, IP), mx_zone("other.test", "127.0.0.42")))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING, start=False)
    gw.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    gw.start()
    wait_admin(gw)
    learn_verified(gw)
    for i in range(3):
        if i == 2:
            time.sleep(1.2)
        qid = submit(gw, "bob@other.test", f"other {i}")
        assert wait_outcome(gw, qid)["event"] == "delivered"
    wait_for(lambda: any(e["domain"] == "other.test" and e["learned"] for e in policy(gw, "list")),
             10, "other.test to be learned")

    events = {e["event"]: e for e in run(gw, "policies", tmp_path)}
    rows = {r["domain"]: r for r in events["listed"]["rows"]}
    assert rows[DOMAIN]["level"] == "verified" and rows["other.test"]["level"] == "tls", rows
    assert f"{HOST} verified: 3" in rows[DOMAIN]["evidence"], rows
    assert events["filtered"]["domains"] == [DOMAIN], events["filtered"]
    assert events["domain-rule"]["mode"] == "Require TLS and verify certificate", events["domain-rule"]
    assert events["forgotten"]["domains"] == [DOMAIN], events["forgotten"]
    assert 'name = "partner.test"' in gw.cli_ok("settings", "show").stdout
    assert [e["domain"] for e in policy(gw, "list")] == [DOMAIN]


def test_policies_api(partner, dns_server, make_gateway, tls_ca):
    gw = delivery_gateway(make_gateway, dns_server, partner.port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING)
    api = admin(gw)
    assert api.get("/api/v1/policies").json() == {"learned": []}
    learn_verified(gw)
    [entry] = api.get("/api/v1/policies").json()["learned"]
    assert entry["domain"] == DOMAIN and entry["learned"]["level"] == "verified", entry
    shown = api.get(f"/api/v1/policies/{DOMAIN}").json()
    assert shown["hosts"][0]["host"] == HOST and shown["verdicts"] == [], shown
    missing = api.get("/api/v1/policies/nothing.test")
    assert missing.status == 404 and "no learned entry for nothing.test" in missing.json()["error"]
    # a cookie session needs the CSRF token for changes
    no_csrf = api.send_json("POST", f"/api/v1/policies/{DOMAIN}/pin", csrf=False)
    assert no_csrf.status == 403, no_csrf
    pinned = api.send_json("POST", f"/api/v1/policies/{DOMAIN}/pin")
    assert pinned.status == 200 and pinned.json() == {"name": DOMAIN, "relay": False, "tls": "verify"}
    assert any(d["name"] == DOMAIN for d in api.get("/api/v1/settings").json()["domain"])
    gone = api.send_json("DELETE", f"/api/v1/policies/{DOMAIN}")
    assert gone.status == 200 and gone.json()["forgotten_rows"] >= 1, gone
    assert api.get(f"/api/v1/policies/{DOMAIN}").status == 404
    assert api.send_json("DELETE", f"/api/v1/policies/{DOMAIN}").status == 404
    assert api.send_json("POST", f"/api/v1/policies/{DOMAIN}/pin").status == 404
