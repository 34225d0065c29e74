"""The Alerts page, the Dashboard banner and alert acknowledgement (SPEC
§8, §12; issue 14), and the Outbound policies page's MTA-STS cache and DANE
sections (SPEC §10), in headless Chromium.

The alerts are raised for real: a Python peer first takes verified TLS
often enough for the level to be learned (`learn_min_span = "1s"`), then
masks STARTTLS in its EHLO (`XXXXXXXA`, as a middlebox does), so the next
delivery raises `downgrade` and `starttls-missing`.
"""

from __future__ import annotations

import json
import re

import pytest

from admin_client import PASSWORD, Admin, admin_context, wait_admin
from delivery_support import (
    delivery_gateway,
    mx_zone,
    submit,
    wait_for,
    wait_outcome,
    zone,
)
from fixtures_postfix import free_port
from test_admin_browser import _missing, run
from test_learned import DOMAIN, HOST, IP, LEARNING, learn_verified, set_live

pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

KEEP = "keep.test"


def logged_in(gw) -> Admin:
    api = Admin(gw, admin_context(gw))
    assert api.login().status == 200
    return api


def test_alerts_page_banner_filter_acknowledge(dns_server, make_gateway, make_peer, tls_ca,
                                               tmp_path):
    port = free_port(IP)
    cert = tls_ca.issue(HOST, directory=tmp_path / "peer-cert")
    peer = make_peer(IP, port, starttls="ok", cert=cert, hostname=HOST)
    dns_server.set_records(zone(mx_zone(DOMAIN, IP)))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, trusted_ca="Test CA",
                          settings=LEARNING, start=False,
                          domains=[{"name": KEEP, "relay": True, "mta_sts": False}])
    gw.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    gw.start()
    wait_admin(gw)
    api = logged_in(gw)
    assert api.get("/api/v1/alerts").json() == {"alerts": [], "unacknowledged": 0}
    assert 'id="alert-banner"' not in api.get("/").text, "no banner without alerts"

    learn_verified(gw)
    peer.starttls = None
    peer.extensions = peer.extensions + ["XXXXXXXA"]
    set_live(gw, "tls.outbound.learn_expiry", "30d")
    qid = submit(gw, f"bob@{DOMAIN}", "masked")
    assert wait_outcome(gw, qid, f"bob@{DOMAIN}")["event"] == "delivered"
    listed = wait_for(lambda: api.get("/api/v1/alerts").json()["unacknowledged"] == 2
                      and api.get("/api/v1/alerts").json(), 10, "two alerts in the store")
    kinds = sorted(a["kind"] for a in listed["alerts"])
    assert kinds == ["downgrade", "starttls-missing"], listed
    assert all(a["acknowledged_at"] is None and a["node"] for a in listed["alerts"]), listed

    # The API refuses bad input clearly and changes nothing.
    bad_kind = api.get("/api/v1/alerts?kind=nope")
    assert bad_kind.status == 400 and bad_kind.json()["field"] == "kind", bad_kind
    unknown = api.send_json("POST", "/api/v1/alerts/999999/acknowledge")
    assert unknown.status == 404 and "no alert with id 999999" in unknown.json()["error"], unknown
    not_an_id = api.send_json("POST", "/api/v1/alerts/abc/acknowledge")
    assert not_an_id.status == 400 and not_an_id.json()["field"] == "id", not_an_id
    ids = [a["id"] for a in listed["alerts"]]
    mixed = api.send_json("POST", "/api/v1/alerts/acknowledge", {"ids": ids + [999999]})
    assert mixed.status == 404 and "999999" in mixed.json()["error"], mixed
    neither = api.send_json("POST", "/api/v1/alerts/acknowledge", {})
    assert neither.status == 422 and neither.json()["field"] == "body", neither
    no_csrf = api.send_json("POST", f"/api/v1/alerts/{ids[0]}/acknowledge", csrf=False)
    assert no_csrf.status == 403, no_csrf
    assert api.get("/api/v1/alerts").json()["unacknowledged"] == 2, "nothing was acknowledged"

    events = {e["event"]: e for e in run(gw, "alerts", tmp_path, DOMAIN=KEEP)}
    banner = events["banner"]
    assert banner["count"] == "2", banner
    assert "2 unacknowledged alert(s)" in banner["text"] and DOMAIN in banner["text"], banner
    rows = events["listed"]["rows"]
    assert sorted(r["kind"] for r in rows) == kinds, rows
    assert all(r["subject"] == DOMAIN and r["host"] == HOST and r["node"] for r in rows), rows
    assert all(r["acknowledged"] == "false" and r["todo"] for r in rows), rows
    [down] = events["filtered"]["rows"]
    assert down["kind"] == "downgrade", events["filtered"]
    [acked] = events["acknowledged-one"]["rows"]
    assert acked["acknowledged"] == "true" and "by admin" in acked["ack"], acked
    assert events["banner-after-one"]["count"] == "1"
    assert all(r["acknowledged"] == "true" for r in events["acknowledged-all"]["rows"])
    assert events["acknowledged-all"]["buttons"] == 0, events["acknowledged-all"]
    assert events["banner-after-all"]["banners"] == 0, "the banner is gone"

    after = api.get("/api/v1/alerts").json()
    assert after["unacknowledged"] == 0, after
    assert all(a["acknowledged_by"] == "admin" and a["acknowledged_at"] for a in after["alerts"])
    assert api.get("/api/v1/alerts?acknowledged=false").json()["alerts"] == []
    again = api.send_json("POST", f"/api/v1/alerts/{ids[0]}/acknowledge")
    assert again.status == 200 and again.json()["acknowledged_at"] == after["alerts"][
        [a["id"] for a in after["alerts"]].index(ids[0])]["acknowledged_at"], "the first stays"
    assert 'id="alert-banner"' not in api.get("/").text

    # The Domains form saved unchanged keeps mta_sts = false.
    assert events["domain-form"] == {"event": "domain-form", "at": events["domain-form"]["at"],
                                     "mta_sts": False, "dane": True}, events["domain-form"]
    assert "domain-saved" in events
    [entry] = [d for d in api.get("/api/v1/settings").json()["domain"] if d["name"] == KEEP]
    assert entry.get("mta_sts") is False and entry.get("relay") is True, entry


STS_DOMAIN, STS_MX, STS_IP, POLICY_IP = "sts-ok.test", "mx.sts-ok.test", "127.0.0.43", "127.0.0.44"
DANE_DOMAIN, DANE_MX, DANE_IP = "ee.test", "mx.ee.test", "127.0.0.45"


def test_policies_page_shows_the_mta_sts_cache_and_dane_status(dns_server, make_downstream,
                                                               make_gateway, tls_ca, tmp_path):
    """A delivery to a domain with a real MTA-STS policy host (enforce) and
    one to a DANE-EE domain (signed TLSA for a self-signed downstream): the
    Outbound policies page lists the cached policy and the DANE status, the
    filter narrows both, and /api/v1/policies/{domain} has the same."""
    from test_dane import spki_sha256, tlsa_owner
    from test_mta_sts import PolicyHost, policy

    mx_port = free_port(STS_IP, DANE_IP)
    https_port = free_port(POLICY_IP)
    cert = tls_ca.issue(f"mta-sts.{STS_DOMAIN}", directory=tmp_path / "policy-cert")
    host = PolicyHost(POLICY_IP, https_port, str(cert.cert), str(cert.key))
    host.responses[f"mta-sts.{STS_DOMAIN}"] = policy("enforce", STS_MX)
    try:
        make_downstream("sts", STS_IP, mx_port, domains=[STS_DOMAIN], hostname=STS_MX, tls="ca")
        ee = make_downstream("ee", DANE_IP, mx_port, domains=[DANE_DOMAIN], hostname=DANE_MX,
                             tls="selfsigned")
        record = f"3 1 1 {spki_sha256(ee.cert_file)}"
        dns_server.set_records({
            STS_DOMAIN: {"MX": [(10, STS_MX)]}, STS_MX: {"A": STS_IP},
            f"_mta-sts.{STS_DOMAIN}": {"TXT": ["v=STSv1; id=p1"]},
            f"mta-sts.{STS_DOMAIN}": {"A": POLICY_IP},
            DANE_DOMAIN: {"MX": [(10, DANE_MX)], "authenticated": True},
            DANE_MX: {"A": DANE_IP, "authenticated": True},
            tlsa_owner("ee", mx_port): {"TLSA": [record], "authenticated": True},
        })
        gw = delivery_gateway(make_gateway, dns_server, mx_port, ca=tls_ca, trusted_ca="Test CA",
                              start=False)
        text = gw.config.read_text()
        text = text.replace("[delivery]\n", f"[delivery]\nhttps_port = {https_port}\n", 1)
        gw.config.write_text(text.replace("[dns]\n", '[dns]\ndnssec = "trust-ad"\n', 1))
        gw.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
        gw.start()
        wait_admin(gw)
        for rcpt in (f"bob@{STS_DOMAIN}", f"bob@{DANE_DOMAIN}"):
            qid = submit(gw, rcpt, "policy sources")
            outcome = wait_outcome(gw, qid, rcpt)
            assert outcome["event"] == "delivered" and outcome.get("verified") == "true", outcome
        assert host.fetches[f"mta-sts.{STS_DOMAIN}"] == 1, host.fetches

        api = logged_in(gw)
        dane = wait_for(lambda: api.get(f"/api/v1/policies/{DANE_DOMAIN}").status == 200
                        and api.get(f"/api/v1/policies/{DANE_DOMAIN}").json()["dane"], 10,
                        "the DANE attempt in the store")
        assert dane["usages"] == ["DANE-EE"] and dane["verdict"] == "met", dane
        assert dane["host"] == DANE_MX and dane["tlsa"] == [record], dane
        sts = api.get(f"/api/v1/policies/{STS_DOMAIN}").json()
        assert sts["mta_sts"]["mode"] == "enforce" and sts["mta_sts"]["mx"] == [STS_MX], sts
        assert sts["mta_sts"]["id"] == "p1" and sts["mta_sts"]["max_age"] == 86400, sts
        assert sts["dane"] is None, sts
        assert api.get("/api/v1/policies/nothing.test").status == 404

        events = {e["event"]: e for e in run(gw, "policy-sources", tmp_path)}
        [row] = events["listed"]["mta_sts"]
        assert row["domain"] == STS_DOMAIN and row["mode"] == "enforce", row
        assert row["mx"] == STS_MX and row["policy-id"] == "p1" and "86400 s" in row["max-age"], row
        [drow] = events["listed"]["dane"]
        assert drow["domain"] == DANE_DOMAIN and drow["verdict"] == "met", drow
        assert drow["usage"] == "DANE-EE" and drow["host"] == DANE_MX, drow
        assert record in drow["tlsa"], drow
        assert events["filtered"] == {"event": "filtered", "at": events["filtered"]["at"],
                                      "mta_sts": 0, "dane": [DANE_DOMAIN]}, events["filtered"]
    finally:
        host.stop()
