"""Admin sessions, login limits and credentials shared by the nodes of a
cluster through a real PostgreSQL (SPEC §9): a login made on node A works
on node B and survives a restart of both; a token made on A works on B;
a logout or a password change reaches the other node within 2 s; a
lockout reached through A holds on B; the store keeps only hashes of
session ids; during a store outage open sessions and tokens still
authenticate from each node's local copy, and new logins are refused with
"cluster store unreachable".

Every test gets a fresh database on the throwaway server of fixtures_pg.
"""

from __future__ import annotations

import hashlib
import json

from admin_client import PASSWORD, Admin, new_token, wait_admin
from fixtures_pg import pg_database, pg_server  # noqa: F401 (fixtures)
from test_cluster import PROPAGATION, node, wait_for

NEW_PASSWORD = "a different battery staple"


def two_nodes(make_gateway, url):
    """Nodes A and B on one store, the admin password set through A."""
    a = node(make_gateway, "gw-a", url, start=False)
    a.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    a.start(timeout=120)
    b = node(make_gateway, "gw-b", url)
    wait_admin(a)
    wait_admin(b)
    return a, b


def same_browser(client: Admin, gw) -> Admin:
    """The browser of `client` (its cookies and CSRF token) talking to `gw`."""
    other = Admin(gw)
    other.cookies = dict(client.cookies)
    other.csrf = client.csrf
    return other


def session_state(client: Admin) -> int:
    return client.get("/api/v1/session").status


def test_a_login_on_a_is_used_on_b_and_the_store_keeps_only_its_hash(
        make_gateway, pg_server, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    on_a = Admin(a)
    assert on_a.login().status == 200
    on_b = same_browser(on_a, b)
    r = on_b.get("/api/v1/session")
    assert r.status == 200, r
    assert r.json() == {"auth": "session", "csrf_token": on_a.csrf}, r
    # A state-changing call on B with the session's CSRF token.
    r = on_b.send_json("PUT", "/api/v1/settings",
                       {**on_b.get("/api/v1/settings").json(),
                        "mta": {**on_b.get("/api/v1/settings").json()["mta"],
                                "max_recipients": 77}})
    assert r.status == 200, r
    assert json.loads(a.cli_ok("settings", "show", "--format", "json").stdout)[
        "mta"]["max_recipients"] == 77
    # ... and without it, refused there too.
    r = on_b.send_json("PUT", "/api/v1/settings", {}, csrf=False)
    assert r.status == 403, r
    # The store has the id's SHA-256, never the id itself.
    cookie = on_a.cookies["postern_session"]
    rows = pg_server.psql("SELECT id_hash FROM admin_sessions", url=pg_database).split()
    assert rows == ["sha256:" + hashlib.sha256(cookie.encode()).hexdigest()], rows
    dump = pg_server.psql("SELECT row_to_json(s)::text FROM admin_sessions s", url=pg_database)
    assert cookie not in dump and on_a.csrf not in dump, dump


def test_a_token_made_on_a_works_on_b_and_reaches_its_local_copy_within_2s(
        make_gateway, pg_server, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    token = new_token(a, "ci")
    assert Admin(b, token=token).get("/api/v1/settings").status == 200
    # Within 2 s the token is in B's local copy: B authenticates it with
    # the store down (a copy refreshed only every minute would not have it).
    cache = b.data_dir / "store-cache.json"
    token_hash = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    wait_for("the token in B's local copy",
             lambda: cache.is_file() and token_hash in cache.read_text(), PROPAGATION)
    pg_server.stop()
    try:
        r = Admin(b, token=token).get("/api/v1/settings", timeout=30)
        assert r.status == 200, r
    finally:
        pg_server.start()


def test_logout_on_a_ends_the_session_on_b_within_2s(make_gateway, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    on_a = Admin(a)
    assert on_a.login().status == 200
    on_b = same_browser(on_a, b)
    assert session_state(on_b) == 200
    r = on_a.send_json("POST", "/api/v1/logout")
    assert r.status == 200, r
    wait_for("B refuses the session logged out on A",
             lambda: session_state(on_b) == 401, PROPAGATION)
    assert session_state(same_browser(on_b, a)) == 401


def test_a_lockout_reached_through_a_holds_on_b(make_gateway, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    for i in range(5):
        r = Admin(a if i % 2 == 0 else b).login("wrong password!")
        assert r.status == 401, (i, r)
    # The sixth, through A: locked; and through B, even the right password.
    r = Admin(a).login("wrong password!")
    assert r.status == 429, r
    r = Admin(b).login()
    assert r.status == 429, r
    assert r.header("Retry-After"), r
    assert "too many failed logins" in r.json()["error"], r


def test_sessions_survive_a_restart_of_both_nodes(make_gateway, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    on_a = Admin(a)
    assert on_a.login().status == 200
    for g in (a, b):
        assert g.stop() == 0
    for g in (b, a):
        g.start(timeout=120)
        wait_admin(g)
    assert session_state(same_browser(on_a, b)) == 200
    assert session_state(same_browser(on_a, a)) == 200


def test_a_password_change_on_b_ends_the_older_sessions_on_a(make_gateway, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    old = Admin(a)
    assert old.login().status == 200
    assert session_state(old) == 200
    b.cli_ok("admin", "passwd", "--password-stdin", input=(NEW_PASSWORD + "\n").encode())
    wait_for("A refuses the session of the old password",
             lambda: session_state(old) == 401, PROPAGATION)
    assert Admin(a).login().status == 401, "the old password still logs in"
    # A session of the new password, on either node, stays.
    new = Admin(a)
    assert new.login(NEW_PASSWORD).status == 200
    assert session_state(same_browser(new, b)) == 200
    assert session_state(new) == 200


def test_open_sessions_work_through_a_store_outage_and_new_logins_get_503(
        make_gateway, pg_server, pg_database):
    a, b = two_nodes(make_gateway, pg_database)
    on_a = Admin(a)
    assert on_a.login().status == 200
    cookie = on_a.cookies["postern_session"]
    session_hash = "sha256:" + hashlib.sha256(cookie.encode()).hexdigest()
    cache = b.data_dir / "store-cache.json"
    wait_for("the new session in B's local copy",
             lambda: cache.is_file() and session_hash in cache.read_text(), PROPAGATION)
    assert cookie not in cache.read_text()
    pg_server.stop()
    try:
        # Made on A, used on B, from B's copy.
        r = same_browser(on_a, b).get("/api/v1/session", timeout=30)
        assert r.status == 200, r
        r = Admin(b).login()
        assert r.status == 503, r
        assert "cluster store unreachable" in r.json()["error"], r
        r = Admin(a).get("/login")
        assert r.status == 200, r
        form = Admin(a)
        page = form.get("/login").text
        token = form.cookies["postern_login_csrf"]
        assert token in page
        r = form.post_form("/login", {"csrf": token, "password": PASSWORD})
        assert r.status == 503 and "Cluster store unreachable" in r.text, r
    finally:
        pg_server.start()
    # Back: logins work again.
    wait_for("a login once the store is back", lambda: Admin(b).login().status == 200, 30,
             interval=0.5)
