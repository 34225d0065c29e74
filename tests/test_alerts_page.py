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
