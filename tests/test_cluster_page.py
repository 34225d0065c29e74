"""The admin Cluster page in headless Chromium, against two real nodes on
one throwaway PostgreSQL (SPEC §9): every node with its state, applied
settings version, presented certificate fingerprints and queue, the same
as `/api/v1/cluster` and `postern cluster status --json`; a stopped node
shown unreachable.
"""

from __future__ import annotations

import json

import pytest

from admin_client import Admin
from fixtures_pg import pg_database, pg_server  # noqa: F401 (fixtures)
from test_admin_browser import Scenario, _missing
from test_cluster import served_fingerprint, wait_for
from test_cluster_admin import two_nodes

pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def test_cluster_page_shows_both_nodes_as_the_api_and_the_cli_do(
        make_gateway, pg_server, pg_database, tmp_path):
    a, b = two_nodes(make_gateway, pg_database)
    api = Admin(a)
    assert api.login().status == 200

    def both_synchronized():
        r = api.get("/api/v1/cluster")
        assert r.status == 200, r
        view = r.json()
        states = {n["name"]: n["state"] for n in view["nodes"]}
        return states == {"gw-a": "synchronized", "gw-b": "synchronized"} and view

    view = wait_for("both nodes registered and synchronized", both_synchronized, 20,
                    interval=0.3)
    assert view["store"].startswith("postgres://") and pg_server.password not in view["store"]

    scenario = Scenario(a, "cluster", tmp_path, talk=True)
    shown = scenario.wait_event("nodes")
    assert [n["name"] for n in shown["nodes"]] == ["gw-a", "gw-b"], shown
    assert int(shown["version"]) == view["settings_version"], shown
    served = {"gw-a": served_fingerprint(a.smtp_port), "gw-b": served_fingerprint(b.smtp_port)}
    cli = {n["name"]: n for n in json.loads(b.cli_ok("cluster", "status", "--json").stdout)}
    for row in shown["nodes"]:
        name = row["name"]
        assert row["state"] == "synchronized", row
        assert int(row["applied"]) == view["settings_version"], row
        # The certificate each node really presents over STARTTLS is listed.
        fingerprints = [f.replace(":", "").lower() for f in row["fingerprints"]]
        assert served[name] in fingerprints, (row, served)
        # The same as the CLI says.
        assert sorted(row["fingerprints"]) == sorted(cli[name]["certificate_fingerprints"]), \
            (row, cli[name])
        assert row["queue"] == (f"{cli[name]['queue_messages']} message(s), "
                                f"{cli[name]['queue_deferred']} deferred"), row
        assert cli[name]["hostname"] in row["text"] and cli[name]["version"] in row["text"], row

    # B stops. Its row is not written any more; instead of waiting 30 s
    # for it to age, its last sighting is moved 31 s into the past.
    assert b.stop() == 0
    pg_server.psql("UPDATE nodes SET last_seen = last_seen - 31 WHERE name = 'gw-b'",
                   url=pg_database)
    scenario.send("stopped")
    after = scenario.wait_event("nodes-after")
    scenario.finish()
    states = {n["name"]: n["state"] for n in after["nodes"]}
    assert states == {"gw-a": "synchronized", "gw-b": "unreachable"}, after
    r = api.get("/api/v1/cluster")
    assert {n["name"]: n["state"] for n in r.json()["nodes"]} == states, r
