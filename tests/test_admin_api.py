"""The admin JSON API (SPEC §8) against a running gateway over HTTPS:
first-start password, login and sessions (cookie attributes, no fixation,
lockout), API tokens and /metrics, CSRF, every route, validation errors
naming the field, certificate names that try path traversal, oversized
uploads, and that a settings change reaches SMTP within 2 seconds.
"""

import http.client
import json
import re
import smtplib
import threading
import time
import uuid

import pytest

from admin_client import (PASSWORD, Admin, admin_context, cert_path, new_token,
                          start_with_password, wait_admin)
from postern_testlib import insecure_context, make_message, openssl, queued_id

REQUIRE_TEXT = "5.7.0 Must issue a STARTTLS command first"


@pytest.fixture
def admin_gw(make_gateway):
    return start_with_password(make_gateway(start=False))


def logged_in(gw) -> Admin:
    a = Admin(gw, admin_context(gw))
    r = a.login()
    assert r.status == 200, r
    return a


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------

def test_first_start_prints_the_password_once(make_gateway):
    gw = make_gateway()
    wait_admin(gw)
    lines = re.findall(r"admin password for https://127\.0\.0\.1:(\d+)/ .*: (\S+)$",
                       gw.stderr(), re.M)
    assert len(lines) == 1, gw.stderr()
    port, password = lines[0]
    assert int(port) == gw.admin_port
    a = Admin(gw, admin_context(gw))
    assert a.login("not " + password).status == 401
    assert a.login(password).status == 200
    # Only a hash is stored.
    db = b"".join(f.read_bytes() for f in gw.data_dir.glob("postern.db*"))
    assert password.encode() not in db
    assert b"$argon2id$" in db
    gw.restart()
    wait_admin(gw)
    assert len(re.findall(r"admin password for", gw.stderr())) == 1, "printed again"
    assert Admin(gw).login(password).status == 200


def test_login_sets_a_secure_cookie_and_logout_ends_it(admin_gw):
    a = Admin(admin_gw, admin_context(admin_gw))
    r = a.login("wrong password")
    assert r.status == 401 and r.json()["field"] == "password", r
    r = a.login()
    assert r.status == 200, r
    cookie = r.header("Set-Cookie")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie, cookie
    assert re.match(r"postern_session=[0-9a-f]{64};", cookie), cookie
    assert a.get("/api/v1/settings").status == 200
    assert a.get("/").status == 200
    r = a.send_json("POST", "/api/v1/logout")
    assert r.status == 200, r
    a.cookies["postern_session"] = re.match(r"postern_session=([0-9a-f]+)", cookie).group(1)
    assert a.get("/api/v1/settings").status == 401


def test_session_id_changes_on_login(admin_gw):
    a = Admin(admin_gw)
    # A session id planted before login is not adopted.
    planted = "ab" * 32
    a.cookies["postern_session"] = planted
    assert a.login().status == 200
    first = a.cookies["postern_session"]
    assert first != planted
    # Logging in again from a live session gives a new id and ends the old one.
    assert a.login().status == 200
    second = a.cookies["postern_session"]
    assert second != first
    old = Admin(admin_gw)
    old.cookies["postern_session"] = first
    assert old.get("/api/v1/settings").status == 401
    assert a.get("/api/v1/settings").status == 200
    # The HTML login form rotates it too.
    form = Admin(admin_gw)
    form.cookies["postern_session"] = second
    page = form.get("/login")
    assert page.status == 303  # already logged in
    form.cookies.pop("postern_session")
    page = form.get("/login")
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    form.cookies["postern_session"] = second
    r = form.post_form("/login", {"csrf": token, "password": PASSWORD})
    assert r.status == 303 and r.header("Location") == "/", r
    assert form.cookies["postern_session"] not in (first, second)


def test_login_form_needs_its_token(admin_gw):
    a = Admin(admin_gw)
    r = a.post_form("/login", {"password": PASSWORD})
    assert r.status == 403, r
    assert "postern_session" not in a.cookies


def test_login_lockout(admin_gw):
    a = Admin(admin_gw)
    for i in range(5):
        r = a.login(f"wrong {i}")
        assert r.status == 401, r
    r = a.login()  # even the right password, now
    assert r.status == 429, r
    retry_after = int(r.header("Retry-After"))
    assert 1 <= retry_after <= 60
    assert "postern_session" not in a.cookies
    # The HTML form is limited the same way.
    page = a.get("/login")
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    r = a.post_form("/login", {"csrf": token, "password": PASSWORD})
    assert r.status == 429 and r.header("Retry-After"), r


def _burst_login(gw, passwords: list[str], then: str | None = None) -> tuple[list[int], int | None]:
    """Open one TLS connection per password (all from 127.0.0.1), then send
    every login at once (a barrier); `then` is sent on one more connection
    once every burst request is on the wire. Returns the burst's statuses
    and the status of `then`."""
    count = len(passwords)
    ready = threading.Barrier(count + 1, timeout=30)
    sent = threading.Semaphore(0)
    statuses: list[int] = []
    lock = threading.Lock()
    context = admin_context(gw)

    def login(password: str, wait: bool) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", gw.admin_port, context=context,
                                           timeout=60)
        try:
            conn.connect()  # TCP and the TLS handshake, before the burst
            if wait:
                ready.wait()
            conn.request("POST", "/api/v1/login", body=json.dumps({"password": password}),
                         headers={"Content-Type": "application/json"})
            if wait:
                sent.release()
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def worker(password: str):
        status = login(password, True)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=worker, args=(p,), daemon=True) for p in passwords]
    for t in threads:
        t.start()
    ready.wait()
    then_status = None
    if then is not None:
        for _ in range(count):
            assert sent.acquire(timeout=30), "a burst request was not sent"
        then_status = login(then, False)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a login request hung"
    return statuses, then_status


def test_login_lockout_holds_under_a_concurrent_burst(admin_gw):
    """120 wrong passwords at once over 120 TLS connections from one
    address: at most 5 are checked (401), the rest refused (429); the right
    password sent right after, while the burst is being answered, is
    refused too."""
    statuses, right = _burst_login(admin_gw, [f"wrong {i}" for i in range(120)], then=PASSWORD)
    assert len(statuses) == 120
    checked = statuses.count(401)
    assert checked <= 5, f"{checked} wrong passwords were checked (limit 5)"
    assert checked >= 1
    assert statuses.count(429) == 120 - checked, sorted(set(statuses))
    assert right == 429, f"the right password got {right} past the limit"
    # Still locked for the HTML form too.
    a = Admin(admin_gw)
    page = a.get("/login")
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    r = a.post_form("/login", {"csrf": token, "password": PASSWORD})
    assert r.status == 429, r


def test_api_tokens_and_metrics(admin_gw):
    token = new_token(admin_gw, "ci")
    db = b"".join(f.read_bytes() for f in admin_gw.data_dir.glob("postern.db*"))
    assert token.encode() not in db, "token stored in clear"
    api = Admin(admin_gw, token=token)
    r = api.get("/api/v1/session")
    assert r.status == 200 and r.json() == {"auth": "token", "token_name": "ci"}, r
    # Bearer calls need no CSRF token.
    r = api.send_json("PUT", "/api/v1/settings", api.get("/api/v1/settings").json())
    assert r.status == 200, r
    assert Admin(admin_gw, token="pst_" + "0" * 64).get("/api/v1/settings").status == 401
    assert Admin(admin_gw, token="garbage").get("/api/v1/settings").status == 401
    r = Admin(admin_gw, token="x").request("GET", "/api/v1/settings",
                                          headers={"Authorization": "Basic YWRtaW46eA=="})
    assert r.status == 401 and "Bearer" in r.header("WWW-Authenticate"), r

    # Traffic for the counters.
    admin_gw.send_raw(token="metrics-plain")
    with smtplib.SMTP("127.0.0.1", admin_gw.smtp_port, timeout=10) as s:
        s.starttls(context=insecure_context())
        s.sendmail("c@d.test", ["a@b.test"], make_message("metrics-tls"))
    r = api.get("/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("text/plain"), r.headers
    text = r.text
    for pattern in [
        r'^postern_connections_total\{listener="starttls"\} [1-9]',
        r'^postern_messages_total\{direction="inbound",outcome="received",tls="yes"\} 1$',
        r'^postern_messages_total\{direction="inbound",outcome="received",tls="no"\} 1$',
        r'^postern_messages_total\{direction="outbound",outcome="delivered",tls="yes"\} 0$',
        r'^postern_tls_handshake_failures_total\{direction="inbound"\} \d+$',
        r"^postern_queue_messages 2$",
        r'^postern_queue_recipients\{state="pending"\} 2$',
        r"^# TYPE postern_messages_total counter$",
    ]:
        assert re.search(pattern, text, re.M), f"{pattern} not in\n{text}"
    # A failed inbound handshake counts.
    openssl("s_client", "-connect", f"127.0.0.1:{admin_gw.tls_port}", "-tls1_1",
            input=b"", timeout=20)
    assert re.search(r'failures_total\{direction="inbound"\} [1-9]', api.get("/metrics").text)
    # /metrics takes a token only: not a session, not nothing.
    session = logged_in(admin_gw)
    session.token = None
    assert session.get("/metrics").status == 401
    assert Admin(admin_gw).get("/metrics").status == 401
    # Revoked: gone at once.
    r = admin_gw.cli_ok("admin", "token", "list")
    assert r.stdout.startswith("ci "), r
    admin_gw.cli_ok("admin", "token", "revoke", "ci")
    assert api.get("/api/v1/settings").status == 401
    r = admin_gw.cli("admin", "token", "create", "--name", "bad\nname")
    assert r.rc != 0 and "token name" in r.stderr, r


def test_passwd_command(admin_gw):
    a = logged_in(admin_gw)
    r = admin_gw.cli("admin", "passwd", "--password-stdin", input=b"short\n")
    assert r.rc != 0 and "at least" in r.stderr, r
    admin_gw.cli_ok("admin", "passwd", "--password-stdin", input=b"a new long password\n")
    # Open sessions end when the password changes.
    deadline = time.monotonic() + 5
    while a.get("/api/v1/settings").status == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert a.get("/api/v1/settings").status == 401
    assert Admin(admin_gw).login(PASSWORD).status == 401
    assert Admin(admin_gw).login("a new long password").status == 200
    r = admin_gw.cli("admin", "passwd")  # no terminal
    assert r.rc != 0 and "--password-stdin" in r.stderr, r


def test_without_authentication_everything_but_login_is_closed(admin_gw):
    anonymous = Admin(admin_gw)
    doc = anonymous.get("/api/v1/openapi.json")
    assert doc.status == 200
    paths = doc.json()["paths"]
    public = {("/api/v1/login", "post"), ("/api/v1/openapi.json", "get")}
    checked = 0
    for path, item in paths.items():
        for method in item:
            if method not in ("get", "post", "put", "delete") or (path, method) in public:
                continue
            url = path.replace("{name}", "Default%20Cert").replace("{id}", "0000000000000000")
            body = b"{}" if method in ("post", "put") else None
            r = anonymous.request(method.upper(), url, body=body,
                                  headers={"Content-Type": "application/json"})
            assert r.status == 401, f"{method} {url}: {r}"
            assert "error" in r.json()
            checked += 1
    assert checked >= 20
    for page in ("/", "/settings/tls", "/settings/domains", "/certificates", "/queue",
                 "/tracking", "/tracking/x", "/certificates/Default%20Cert/export"):
        r = anonymous.get(page)
        assert r.status == 303 and r.header("Location") == "/login", f"{page}: {r}"
    for page in ("/settings/tls", "/certificates/generate", "/logout"):
        r = anonymous.post_form(page, {"csrf": "x"})
        assert r.status == 303 and r.header("Location") == "/login", f"{page}: {r}"
    assert anonymous.get("/login").status == 200
    assert anonymous.get("/static/style.css").status == 200


def test_csrf_is_required_for_cookie_sessions(admin_gw):
    a = logged_in(admin_gw)
    settings = a.get("/api/v1/settings").json()
    settings["mta"]["banner"] = "changed by CSRF"
    r = a.send_json("PUT", "/api/v1/settings", settings, csrf=False)
    assert r.status == 403 and r.json()["field"] == "X-CSRF-Token", r
    r = a.send_json("PUT", "/api/v1/settings", settings, headers={"X-CSRF-Token": "0" * 64})
    assert r.status == 403, r
    for method, path in [("DELETE", cert_path("Default Cert")), ("POST", "/api/v1/domains"),
                         ("POST", "/api/v1/logout")]:
        r = a.send_json(method, path, {}, csrf=False)
        assert r.status == 403, f"{method} {path}: {r}"
    assert a.get("/api/v1/settings").json()["mta"]["banner"] == ""
    # Forms: the csrf field.
    r = a.post_form("/settings/domains", {"name": "csrf.example", "tls": ""})
    assert r.status == 403, r
    r = a.post_form("/settings/domains", {"csrf": "f" * 64, "name": "csrf.example", "tls": ""})
    assert r.status == 403, r
    assert a.get("/api/v1/domains").json() == []
    token = a.page_csrf("/settings/domains")
    assert token == a.csrf
    r = a.post_form("/settings/domains", {"csrf": token, "name": "csrf.example", "tls": ""})
    assert r.status == 303, r
    assert [d["name"] for d in a.get("/api/v1/domains").json()] == ["csrf.example"]
    # A browser's cross-site marker is refused outright.
    r = a.request("POST", "/settings/domains", body=f"csrf={token}&name=x.example".encode(),
                  headers={"Content-Type": "application/x-www-form-urlencoded",
                           "Sec-Fetch-Site": "cross-site"})
    assert r.status == 403, r
    # And with the header it works (the current document: the one read
    # before the domain was added would delete it, and is refused).
    r = a.send_json("PUT", "/api/v1/settings", settings)
    assert r.status == 409 and r.json()["field"] == "domain", r
    r = a.send_json("PUT", "/api/v1/settings", a.get("/api/v1/settings").json())
    assert r.status == 200, r


# ---------------------------------------------------------------------------
# Every route
# ---------------------------------------------------------------------------

def wait_for_530(gw, within: float) -> float:
    start = time.monotonic()
    while True:
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=5) as s:
            s.ehlo()
            code, text = s.mail("c@d.test")
            if code == 530:
                assert text.decode() == REQUIRE_TEXT
                return time.monotonic() - start
        elapsed = time.monotonic() - start
        assert elapsed < within, f"MAIL still answered {code} after {elapsed:.1f}s"
        time.sleep(0.05)


def test_settings_routes_and_live_effect(admin_gw):
    a = logged_in(admin_gw)
    r = a.get("/api/v1/settings")
    assert r.status == 200
    settings = r.json()
    assert settings["tls"]["inbound"]["mode"] == "offer"
    assert set(settings) >= {"tls", "mta"}
    settings["tls"]["inbound"]["mode"] = "require"
    r = a.send_json("PUT", "/api/v1/settings", settings)
    assert r.status == 200, r
    assert r.json()["settings"]["tls"]["inbound"]["mode"] == "require"
    took = wait_for_530(admin_gw, 2.0)
    print(f"require applied after {took:.2f}s")
    r = admin_gw.cli_ok("settings", "show", "--format", "json")
    assert json.loads(r.stdout)["tls"]["inbound"]["mode"] == "require"


def test_certificate_routes(admin_gw):
    a = logged_in(admin_gw)
    r = a.get("/api/v1/certificates")
    assert r.status == 200
    rows = {c["name"]: c for c in r.json()}
    default = rows["Default Cert"]
    assert default["key_type"] == "RSA" and default["key_bits"] == 4096
    assert default["signature_algorithm"] == "sha256WithRSAEncryption"
    assert "tls.inbound.certificate" in default["used_by"]
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", default["sha256_fingerprint"])
    for field in ("subject", "issuer", "sans", "not_before", "not_after"):
        assert default[field], field
    assert "PRIVATE KEY" not in r.text

    r = a.send_json("POST", "/api/v1/certificates",
                    {"name": "EC P-384", "generate": {"key": "ecdsa-p384", "cn": "mx.postern.test",
                                                      "sans": ["mx.postern.test", "127.0.0.1"]}})
    assert r.status == 201, r
    created = r.json()
    assert created["key_type"] == "ECDSA P-384"
    assert created["signature_algorithm"] == "ecdsa-with-SHA384"
    assert created["sans"] == ["mx.postern.test", "127.0.0.1"]
    assert a.send_json("POST", "/api/v1/certificates",
                       {"name": "ec p-384", "generate": {"key": "ecdsa-p256"}}).status == 409

    r = a.get(cert_path("EC P-384"))
    assert r.status == 200 and "BEGIN CERTIFICATE" in r.json()["chain_pem"], r
    assert "PRIVATE KEY" not in r.text
    r = a.get(cert_path("EC P-384") + "?format=pem")
    assert r.status == 200 and r.text.startswith("-----BEGIN CERTIFICATE-----")
    assert r.header("Content-Disposition") == 'attachment; filename="EC_P-384.pem"'
    page = a.get("/certificates/EC%20P-384/export")
    assert page.status == 200 and page.text == r.text

    # Import: a chain with its key, and a CA without one.
    key = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256").stdout
    cert = openssl("req", "-new", "-x509", "-key", "/dev/stdin", "-subj", "/CN=imported.test",
                   "-days", "30", input=key).stdout
    r = a.send_json("POST", "/api/v1/certificates",
                    {"name": "Imported", "chain_pem": cert.decode(), "key_pem": key.decode()})
    assert r.status == 201 and r.json()["kind"] == "certificate", r
    r = a.send_json("POST", "/api/v1/certificates", {"name": "Partner CA", "chain_pem": cert.decode()})
    assert r.status == 201 and r.json()["kind"] == "ca", r
    other_key = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256").stdout
    r = a.send_json("POST", "/api/v1/certificates",
                    {"name": "Mismatch", "chain_pem": cert.decode(), "key_pem": other_key.decode()})
    assert r.status == 422 and r.json()["field"] == "key_pem", r
    assert "does not match" in r.json()["error"]

    # In use: refused with the key that uses it.
    settings = a.get("/api/v1/settings").json()
    settings["tls"]["outbound"]["trusted_ca"] = ["system", "Partner CA"]
    assert a.send_json("PUT", "/api/v1/settings", settings).status == 200
    r = a.send_json("DELETE", cert_path("Partner CA"))
    assert r.status == 409 and r.json()["field"] == "tls.outbound.trusted_ca", r
    assert "in use" in r.json()["error"]
    r = a.send_json("DELETE", cert_path("Default Cert"))
    assert r.status == 409 and r.json()["field"] == "tls.inbound.certificate", r
    assert a.send_json("DELETE", cert_path("EC P-384")).status == 204
    assert a.get(cert_path("EC P-384")).status == 404
    assert a.send_json("DELETE", cert_path("EC P-384")).status == 404
    # The CLI sees the same table.
    assert "Imported" in admin_gw.cli_ok("cert", "list").stdout


def test_domain_routes(admin_gw):
    a = logged_in(admin_gw)
    assert a.get("/api/v1/domains").json() == []
    r = a.send_json("POST", "/api/v1/domains",
                    {"name": "corp.example", "relay": True, "next_hop": "[127.0.0.1]:2525",
                     "tls": "verify"})
    assert r.status == 201, r
    assert r.json() == {"name": "corp.example", "relay": True, "next_hop": "[127.0.0.1]:2525",
                        "tls": "verify"}
    r = a.send_json("POST", "/api/v1/domains", {"name": "*.corp.example"})
    assert r.status == 201, r
    r = a.send_json("POST", "/api/v1/domains", {"name": "CORP.example"})
    assert r.status == 409 and r.json()["field"] == "name", r
    r = a.send_json("PUT", "/api/v1/domains/corp.example",
                    {"name": "corp.example", "relay": False, "tls": "require"})
    assert r.status == 200 and r.json()["tls"] == "require", r
    assert "next_hop" not in r.json()
    r = a.send_json("PUT", "/api/v1/domains/none.example", {"name": "none.example"})
    assert r.status == 404, r
    settings = json.loads(admin_gw.cli_ok("settings", "show", "--format", "json").stdout)
    assert [d["name"] for d in settings["domain"]] == ["corp.example", "*.corp.example"]
    assert a.send_json("DELETE", "/api/v1/domains/%2A.corp.example").status == 204
    assert a.send_json("DELETE", "/api/v1/domains/%2A.corp.example").status == 404
    assert [d["name"] for d in a.get("/api/v1/domains").json()] == ["corp.example"]


def test_queue_routes(admin_gw):
    a = logged_in(admin_gw)
    first = admin_gw.send_raw(sender="alice@example.test", rcpts=["bob@corp.example"], token="q1")
    second = admin_gw.send_raw(sender="carol@example.test", rcpts=["dan@other.example"], token="q2")
    r = a.get("/api/v1/queue")
    assert r.status == 200
    assert [m["id"] for m in r.json()] == [first, second]
    item = r.json()[0]
    assert item["sender"] == "alice@example.test"
    assert item["message_id"] == "<q1@client.postern.test>"
    assert item["recipients"][0] == {"address": "bob@corp.example", "state": "pending",
                                     "attempts": 0, "next_attempt": None, "last_error": None}
    assert [m["id"] for m in a.get("/api/v1/queue?sender=ALICE").json()] == [first]
    assert [m["id"] for m in a.get("/api/v1/queue?recipient=dan@").json()] == [second]
    assert [m["id"] for m in a.get("/api/v1/queue?message_id=q2@").json()] == [second]
    assert [m["id"] for m in a.get("/api/v1/queue?state=pending").json()] == [first, second]
    assert a.get("/api/v1/queue?state=deferred").json() == []
    r = a.get("/api/v1/queue?state=lost")
    assert r.status == 422 and r.json()["field"] == "state", r
    r = a.get(f"/api/v1/queue/{first}")
    assert r.status == 200 and r.json()["id"] == first
    assert a.get("/api/v1/queue/NOTANID").status == 400
    assert a.get("/api/v1/queue/0000000000000000").status == 404
    r = a.send_json("POST", f"/api/v1/queue/{first}/retry")
    assert r.status == 202, r
    assert a.send_json("POST", "/api/v1/queue/0000000000000000/retry").status == 404
    r = a.send_json("DELETE", f"/api/v1/queue/{second}")
    assert r.status == 204, r
    assert admin_gw.queue_ids() == [first]
    assert a.send_json("DELETE", f"/api/v1/queue/{second}").status == 404
    # The pages show and change the same queue.
    page = a.get(f"/queue/{first}")
    assert page.status == 200 and "bob@corp.example" in page.text
    r = a.post_form(f"/queue/{first}/delete", {"csrf": a.csrf})
    assert r.status == 303, r
    assert admin_gw.queue_ids() == []


def test_message_tracking_routes(admin_gw):
    a = logged_in(admin_gw)
    with smtplib.SMTP("127.0.0.1", admin_gw.smtp_port, timeout=10) as s:
        s.starttls(context=insecure_context())
        s.ehlo("tracked.client.test")
        s.sendmail("tracker@example.test", ["someone@corp.example"], make_message("track-1"))
    qid = admin_gw.queue_ids()[0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = a.get("/api/v1/messages?q=%3Ctrack-1%40client.postern.test%3E")
        if r.status == 200 and r.json():
            break
        time.sleep(0.1)
    found = r.json()
    assert [m["queue_id"] for m in found] == [qid], r
    m = found[0]
    assert m["sender"] == "tracker@example.test"
    assert m["recipients"] == ["someone@corp.example"]
    assert m["tls_version"] in ("TLSv1.3", "TLSv1.2") and m["cipher"], m
    assert m["status"] == "queued"
    for query in ("sender=tracker%40example", "recipient=someone%40corp", f"q={qid}",
                  "q=track-1%40client.postern.test", "since=2000-01-01T00%3A00"):
        assert [x["queue_id"] for x in a.get(f"/api/v1/messages?{query}").json()] == [qid], query
    assert a.get("/api/v1/messages?sender=nobody").json() == []
    assert a.get("/api/v1/messages?since=2999-01-01T00%3A00").json() == []
    r = a.get("/api/v1/messages?since=tomorrow")
    assert r.status == 422 and r.json()["field"] == "since", r
    r = a.get(f"/api/v1/messages/{qid}")
    assert r.status == 200
    detail = r.json()
    assert len(detail) == 1
    hop = detail[0]["hops"][0]
    assert hop["direction"] == "inbound" and hop["name"] == "tracked.client.test"
    assert hop["tls_version"] == m["tls_version"] and hop["cipher"] == m["cipher"]
    assert hop["verification"] == "no client certificate"
    assert detail[0]["events"][0]["kind"] == "received"
    assert a.get("/api/v1/messages/%3Ctrack-1%40client.postern.test%3E").json()[0]["queue_id"] == qid
    assert a.get("/api/v1/messages/nothing-here").status == 404
    stats = a.get("/api/v1/stats").json()
    assert stats["totals"]["received"] == 1
    assert stats["tls_inbound"] == {"tls": 1, "plaintext": 0}
    assert stats["queue"]["messages"] == 1
    assert len(stats["buckets"]) == 24
    page = a.get(f"/tracking/{qid}")
    assert page.status == 200 and m["cipher"] in page.text
    assert a.get("/").status == 200


def test_openapi_document_matches_the_routes(admin_gw):
    token = new_token(admin_gw)
    api = Admin(admin_gw, token=token)
    doc = Admin(admin_gw).get("/api/v1/openapi.json")
    assert doc.status == 200 and doc.header("Content-Type") == "application/json"
    spec = doc.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for route in ["/api/v1/settings", "/api/v1/certificates", "/api/v1/certificates/{name}",
                  "/api/v1/domains", "/api/v1/domains/{name}", "/api/v1/queue",
                  "/api/v1/queue/{id}", "/api/v1/queue/{id}/retry", "/api/v1/messages",
                  "/api/v1/messages/{id}", "/metrics"]:
        assert route in paths, route
    assert set(paths["/api/v1/settings"]) >= {"get", "put"}
    assert set(paths["/api/v1/certificates/{name}"]) >= {"get", "delete"}
    assert set(paths["/api/v1/domains/{name}"]) >= {"put", "delete"}
    # Every documented operation exists (no 404 "no route", no 405)...
    for path, item in paths.items():
        for method in item:
            if method not in ("get", "post", "put", "delete"):
                continue
            url = path.replace("{name}", "no-such-thing").replace("{id}", "0000000000000000")
            r = api.request(method.upper(), url, body=b"{}" if method in ("post", "put") else None,
                            headers={"Content-Type": "application/json"})
            assert r.status != 405 and "no route" not in r.text, f"{method} {url}: {r}"
    # ...and an undocumented one does not.
    r = api.get("/api/v1/nothing")
    assert r.status == 404 and "no route" in r.json()["error"]
    r = api.send_json("PATCH", "/api/v1/settings", {})
    assert r.status == 405


# ---------------------------------------------------------------------------
# Validation, traversal, size limits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,payload,status,field", [
    ("PUT", "/api/v1/settings", {"tls": {"inbound": {"mode": "always"}}}, 422, "tls.inbound.mode"),
    ("PUT", "/api/v1/settings", {"tls": {"outbound": {"mode": "strict"}}}, 422, "tls.outbound.mode"),
    ("PUT", "/api/v1/settings", {"tls": {"inbound": {"certificate": "Nope"}}}, 422,
     "tls.inbound.certificate"),
    ("PUT", "/api/v1/settings", {"tls": {"inbound": {"client_certificate": "require"}}}, 422,
     "tls.inbound.client_certificate"),
    ("PUT", "/api/v1/settings", {"mta": {"max_recipients": 0}}, 422, "mta.max_recipients"),
    ("PUT", "/api/v1/settings", {"mta": {"session_timeout": "5 minutes"}}, 422,
     "mta.session_timeout"),
    ("POST", "/api/v1/domains", {"name": "corp.example", "next_hop": "10.0.0.5:25"}, 422,
     "next_hop"),
    ("POST", "/api/v1/domains", {"name": "no such domain"}, 422, "name"),
    ("POST", "/api/v1/domains", {"name": "corp.example", "tls": "always"}, 422, "tls"),
    ("POST", "/api/v1/domains", {"nmae": "corp.example"}, 422, "nmae"),
    ("POST", "/api/v1/certificates", {"name": "k", "generate": {"key": "rsa1024"}}, 422, "key"),
    ("POST", "/api/v1/certificates", {"name": "", "generate": {"key": "ecdsa-p256"}}, 422, "name"),
    ("POST", "/api/v1/certificates", {"name": "x", "chain_pem": "not pem"}, 422, "chain_pem"),
    ("POST", "/api/v1/certificates", {"name": "x"}, 422, "chain_pem"),
])
def test_validation_errors_name_the_field(admin_gw, method, path, payload, status, field):
    token = new_token(admin_gw)
    api = Admin(admin_gw, token=token)
    before = api.get("/api/v1/settings").json()
    r = api.send_json(method, path, payload)
    assert r.status == status, r
    body = r.json()
    assert body["field"] == field or body["field"].startswith(field), body
    assert body["error"], body
    assert api.get("/api/v1/settings").json() == before, "changed despite the error"


# Each out-of-range value, the key the error must name and words of the
# allowed range it must give (16.4).
OUT_OF_RANGE = [
    ("mta.banner", "x" * 401, "at most 400 characters"),
    ("mta.banner", "mx.example \u202e ready", "printable ASCII"),
    ("mta.session_timeout", "1000000000d", "between 1s and 1h"),
    ("mta.queue_lifetime", "31d", "between 1s and 30d"),
    ("mta.min_backoff", "2d", "between 1s and 1d"),
    ("mta.tracking_retention", "10m", "between 1h and 3650d"),
    ("mta.max_message_size", str(1 << 40), "between 1024 bytes and 1073741824 bytes"),
    ("mta.max_recipients", "1000000", "between 1 and 100000"),
    ("mta.max_connections_per_client", "1001", "larger than mta.max_connections (1000)"),
]


def _as_json_value(key: str, value: str):
    return int(value) if value.isdigit() else value


@pytest.mark.parametrize("key,value,words", OUT_OF_RANGE, ids=[f"{k}={v[:20]}" for k, v, _ in OUT_OF_RANGE])
def test_settings_bounds_through_cli_and_api(admin_gw, tmp_path, key, value, words):
    """Out-of-range settings are refused with the key and the range by
    `settings set`, `settings import` and `PUT /api/v1/settings` alike;
    nothing changes."""
    before = admin_gw.cli_ok("settings", "export").stdout
    r = admin_gw.cli("settings", "set", key, value)
    assert r.rc != 0, r
    assert key in r.stderr and words in r.stderr, r

    section, name = key.split(".")
    document = json.loads(admin_gw.cli_ok("settings", "show", "--format", "json").stdout)
    document[section][name] = _as_json_value(key, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    r = admin_gw.cli("settings", "import", str(bad))
    assert r.rc != 0, r
    assert key in r.stderr and words in r.stderr, r

    api = Admin(admin_gw, token=new_token(admin_gw, f"bounds-{uuid.uuid4().hex[:8]}"))
    r = api.send_json("PUT", "/api/v1/settings", document)
    assert r.status == 422, r
    assert r.json()["field"] == key and words in r.json()["error"], r
    assert admin_gw.cli_ok("settings", "export").stdout == before, "changed despite the error"


def test_settings_bounds_accept_the_ends_of_each_range(admin_gw):
    for key, value in [("mta.banner", "m" * 400), ("mta.session_timeout", "1h"),
                       ("mta.queue_lifetime", "30d"), ("mta.max_backoff", "1d"),
                       ("mta.tracking_retention", "3650d"),
                       ("mta.max_connections_per_client", "20"), ("mta.max_connections", "20")]:
        admin_gw.set(key, value)
    r = admin_gw.cli("settings", "set", "mta.max_connections", "19")
    assert r.rc != 0 and "mta.max_connections_per_client" in r.stderr, r
    # The gateway reloads within a second; the long banner is served whole.
    deadline = time.monotonic() + 5
    while True:
        s = smtplib.SMTP(timeout=10)
        try:
            code, text = s.connect("127.0.0.1", admin_gw.smtp_port)
        finally:
            s.close()
        if text.decode() == "m" * 400 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 220 and text.decode() == "m" * 400, (code, text[:60])


@pytest.mark.parametrize("body,field", [
    ([], "settings"),
    ({"tls": []}, "tls"),
    ({"tls": {"inbound": []}}, "tls.inbound"),
    ({"mta": None}, "mta"),
    ({"domain": {"name": "corp.example"}}, "domain"),
    ({"domain": ["corp.example"]}, "domain[0]"),
    ({"tls": {"inbound": {"mode": "offer", "colour": "red"}}}, "tls.inbound.colour"),
    ({"relay": True}, "relay"),
])
def test_settings_of_the_wrong_shape_change_nothing(admin_gw, tmp_path, body, field):
    """`[]` and friends used to mean "every default", deleting every domain
    entry. Refused by the API (422 naming the field) and by `settings
    import`; nothing changes."""
    admin_gw.cli_ok("settings", "import", str(_domains_file(tmp_path)))
    before = admin_gw.cli_ok("settings", "export").stdout
    api = Admin(admin_gw, token=new_token(admin_gw))
    r = api.send_json("PUT", "/api/v1/settings", body)
    assert r.status == 422, r
    assert r.json()["field"] == field, r
    r = api.send_json("PUT", f"/api/v1/settings?confirm=delete-domains", body)
    assert r.status == 422 and r.json()["field"] == field, r
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(body))
    r = admin_gw.cli("settings", "import", str(bad))
    assert r.rc != 0 and field in r.stderr and "nothing was changed" in r.stderr, r
    assert admin_gw.cli_ok("settings", "export").stdout == before


def _domains_file(tmp_path):
    f = tmp_path / "domains.toml"
    f.write_text('[[domain]]\nname = "corp.example"\nrelay = true\n'
                 '[[domain]]\nname = "partner.example"\nnext_hop = "[127.0.0.1]:2525"\n')
    return f


def test_deleting_every_domain_needs_confirmation_and_changes_are_reported(admin_gw, tmp_path):
    admin_gw.cli_ok("settings", "import", str(_domains_file(tmp_path)))
    api = Admin(admin_gw, token=new_token(admin_gw))
    current = api.get("/api/v1/settings").json()
    assert len(current["domain"]) == 2

    # A partial document (no domain key) would delete both: refused.
    partial = {"tls": {"inbound": {"mode": "offer"}}}
    r = api.send_json("PUT", "/api/v1/settings", partial)
    assert r.status == 409, r
    assert r.json()["field"] == "domain", r
    assert "corp.example, partner.example" in r.json()["error"], r
    assert "?confirm=delete-domains" in r.json()["error"], r
    assert api.get("/api/v1/settings").json() == current
    r = api.send_json("PUT", "/api/v1/settings?confirm=yes", partial)
    assert r.status == 400 and r.json()["field"] == "confirm", r
    r = api.send_json("PUT", "/api/v1/settings?force=1", partial)
    assert r.status == 400 and r.json()["field"] == "force", r

    # Changing the relay set is allowed and reported.
    changed = json.loads(json.dumps(current))
    changed["domain"][0]["relay"] = False
    changed["domain"][1]["relay"] = True
    r = api.send_json("PUT", "/api/v1/settings", changed)
    assert r.status == 200, r
    answer = r.json()
    assert answer["settings"]["domain"] == changed["domain"], answer
    assert answer["changes"]["relay_domains_added"] == ["partner.example"], answer
    assert answer["changes"]["relay_domains_removed"] == ["corp.example"], answer
    assert answer["changes"]["deletes_every_domain"] is False
    assert any("no longer relay domains: corp.example" in w for w in answer["warnings"]), answer
    assert any("new relay domains" in w and "partner.example" in w
               for w in answer["warnings"]), answer
    # An unchanged document: no warnings.
    r = api.send_json("PUT", "/api/v1/settings", changed)
    assert r.status == 200 and r.json()["warnings"] == [], r

    # With the confirmation: deleted, and said so (answer and log).
    r = api.send_json("PUT", "/api/v1/settings?confirm=delete-domains", partial)
    assert r.status == 200, r
    answer = r.json()
    assert "domain" not in answer["settings"], answer
    assert answer["changes"]["deletes_every_domain"] is True
    assert answer["changes"]["domains_removed"] == ["corp.example", "partner.example"]
    assert any("every [[domain]] entry is deleted" in w for w in answer["warnings"]), answer
    assert "every [[domain]] entry is deleted (corp.example, partner.example)" in admin_gw.stderr()

    # `settings import` of a file without domains says what it deleted.
    admin_gw.cli_ok("settings", "import", str(_domains_file(tmp_path)))
    plain = tmp_path / "plain.toml"
    plain.write_text("[mta]\nmax_recipients = 11\n")
    r = admin_gw.cli_ok("settings", "import", str(plain))
    assert "warning: every [[domain]] entry is deleted (corp.example, partner.example)" \
        in r.stderr, r


def test_bad_json_is_400(admin_gw):
    api = Admin(admin_gw, token=new_token(admin_gw))
    r = api.request("PUT", "/api/v1/settings", body=b"{broken",
                    headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json()["field"] == "body", r


def test_domain_form_shows_the_error_next_to_the_field(admin_gw):
    a = logged_in(admin_gw)
    r = a.post_form("/settings/domains", {"csrf": a.csrf, "name": "corp.example",
                                          "next_hop": "10.0.0.5:25", "tls": "verify"})
    assert r.status == 422, r
    m = re.search(r'<span class="field-error" role="alert" data-field="next_hop">([^<]*)</span>', r.text)
    assert m and "brackets" in m.group(1), r.text
    # What was typed is kept.
    assert 'value="10.0.0.5:25"' in r.text
    assert a.get("/api/v1/domains").json() == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/b", "a\\b", "x\x00y", " padded"])
def test_certificate_names_cannot_traverse(admin_gw, name):
    a = logged_in(admin_gw)
    r = a.send_json("POST", "/api/v1/certificates", {"name": name, "generate": {"key": "ecdsa-p256"}})
    assert r.status == 422 and r.json()["field"] == "name", r
    r = a.get(cert_path(name))
    assert r.status in (400, 404), r
    r = a.send_json("DELETE", cert_path(name))
    assert r.status in (400, 404), r
    # The upload form refuses it too, next to the name field.
    pem = a.get(cert_path("Default Cert") + "?format=pem").body
    r = a.post_multipart("/certificates/import", {"csrf": a.csrf, "name": name},
                         {"chain": ("chain.pem", pem)})
    assert r.status == 422, r
    assert 'data-field="name"' in r.text
    names = [c["name"] for c in a.get("/api/v1/certificates").json()]
    assert names == ["Default Cert", "Default Cert ECDSA"], names


HIDDEN_NAMES = [("x\u202etrec tluafeD", "U+202E"), ("\u2066Default Cert\u2069", "U+2066"),
                ("Partner\u200e CA", "U+200E"), ("Partner\u200b CA", "U+200B"),
                ("Partner\u0085CA", "U+0085"), ("Partner\x1b[31m CA", "U+001B")]


@pytest.mark.parametrize("name,code", HIDDEN_NAMES, ids=[c for _, c in HIDDEN_NAMES])
def test_certificate_names_with_control_or_bidi_characters_are_refused(admin_gw, tmp_path,
                                                                       name, code):
    """On every path that creates a certificate entry: API generate and
    import, the upload form, CLI generate and import; and in a generated
    certificate's common name."""
    a = logged_in(admin_gw)
    r = a.send_json("POST", "/api/v1/certificates", {"name": name, "generate": {"key": "ecdsa-p256"}})
    assert r.status == 422 and r.json()["field"] == "name" and code in r.json()["error"], r
    pem = a.get(cert_path("Default Cert") + "?format=pem").text
    r = a.send_json("POST", "/api/v1/certificates", {"name": name, "chain_pem": pem})
    assert r.status == 422 and r.json()["field"] == "name" and code in r.json()["error"], r
    r = a.post_multipart("/certificates/import", {"csrf": a.csrf, "name": name},
                         {"chain": ("chain.pem", pem.encode())})
    assert r.status == 422 and 'data-field="name"' in r.text and code in r.text, r
    r = admin_gw.cli("cert", "generate", "--name", name, "--key", "ecdsa-p256", "--cn", "mx.test")
    assert r.rc != 0 and code in r.stderr, r
    chain = tmp_path / "chain.pem"
    chain.write_text(pem)
    r = admin_gw.cli("cert", "import", "--name", name, "--cert", str(chain))
    assert r.rc != 0 and code in r.stderr, r
    # The common name of a generated certificate, with and without SANs.
    for sans in ([], ["mx.postern.test"]):
        r = a.send_json("POST", "/api/v1/certificates",
                        {"name": "Fine name", "generate": {"key": "ecdsa-p256", "cn": name,
                                                           "sans": sans}})
        assert r.status == 422 and r.json()["field"] == "cn" and code in r.json()["error"], r
    names = [c["name"] for c in a.get("/api/v1/certificates").json()]
    assert names == ["Default Cert", "Default Cert ECDSA"], names


def test_foreign_origin_is_refused_even_with_the_csrf_token(admin_gw):
    a = logged_in(admin_gw)
    own = f"https://127.0.0.1:{admin_gw.admin_port}"
    settings = a.get("/api/v1/settings").json()
    changed = json.loads(json.dumps(settings))
    changed["mta"]["banner"] = "changed cross-site"
    foreign = [{"Origin": "https://evil.example"}, {"Origin": "null"},
               {"Origin": f"http://127.0.0.1:{admin_gw.admin_port}"},
               {"Origin": f"https://127.0.0.1:{admin_gw.admin_port + 1}"},
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"}]
    for headers in foreign:
        r = a.send_json("PUT", "/api/v1/settings", changed, headers=headers)
        assert r.status == 403 and "refused" in r.json()["error"], (headers, r)
        r = a.request("POST", "/settings/domains",
                      body=f"csrf={a.csrf}&name=x.example&tls=".encode(),
                      headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
        assert r.status == 403, (headers, r)
        # Logging in from another site is refused too (login CSRF).
        r = Admin(admin_gw).send_json("POST", "/api/v1/login", {"password": PASSWORD},
                                      csrf=False, headers=headers)
        assert r.status == 403, (headers, r)
    assert a.get("/api/v1/settings").json() == settings
    assert a.get("/api/v1/domains").json() == []
    # Our own origin, or a browser's same-origin marker (Chromium sends
    # Origin: null from pages with Referrer-Policy: no-referrer), pass.
    for headers in [{"Origin": own}, {"Sec-Fetch-Site": "same-origin", "Origin": "null"},
                    {"Sec-Fetch-Site": "same-origin", "Origin": own}, {}]:
        r = a.send_json("PUT", "/api/v1/settings", changed, headers=headers)
        assert r.status == 200, (headers, r)
    # A Bearer client: no Origin needed, and no ambient credential to abuse.
    api = Admin(admin_gw, token=new_token(admin_gw))
    assert api.send_json("PUT", "/api/v1/settings", settings).status == 200
    r = api.send_json("PUT", "/api/v1/settings", settings,
                      headers={"Origin": "https://evil.example"})
    assert r.status == 200, r


def test_export_file_names_are_safe(admin_gw):
    a = logged_in(admin_gw)
    name = 'quote" and; semicolon'
    r = a.send_json("POST", "/api/v1/certificates", {"name": name, "generate": {"key": "ecdsa-p256"}})
    assert r.status == 201, r
    r = a.get(cert_path(name) + "?format=pem")
    assert r.status == 200
    assert r.header("Content-Disposition") == 'attachment; filename="quote__and__semicolon.pem"'


def test_oversized_uploads_are_refused(admin_gw):
    a = logged_in(admin_gw)
    big = ("-----BEGIN CERTIFICATE-----\n" + "A" * 300_000 + "\n-----END CERTIFICATE-----\n")
    r = a.send_json("POST", "/api/v1/certificates", {"name": "big", "chain_pem": big})
    assert r.status == 413, r
    r = a.post_multipart("/certificates/import", {"csrf": a.csrf, "name": "big"},
                         {"chain": ("chain.pem", big.encode())})
    assert r.status == 413, r
    assert "KiB" in r.text
    assert [c["name"] for c in a.get("/api/v1/certificates").json()] == ["Default Cert", "Default Cert ECDSA"]


def test_upload_form_imports_a_chain_and_key(admin_gw):
    a = logged_in(admin_gw)
    key = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256").stdout
    cert = openssl("req", "-new", "-x509", "-key", "/dev/stdin", "-subj", "/CN=upload.test",
                   "-days", "30", input=key).stdout
    r = a.post_multipart("/certificates/import", {"csrf": a.csrf, "name": "Uploaded"},
                         {"chain": ("chain.pem", cert), "key": ("key.pem", key)})
    assert r.status == 303 and r.header("Location") == "/certificates?ok=imported", r
    row = [c for c in a.get("/api/v1/certificates").json() if c["name"] == "Uploaded"][0]
    assert row["subject"] == "CN=upload.test" and row["has_private_key"]
    # Without the CSRF field: refused.
    r = a.post_multipart("/certificates/import", {"name": "Uploaded 2"},
                         {"chain": ("chain.pem", cert)})
    assert r.status == 403, r


def test_certificate_delete_in_use_message_on_the_page(admin_gw):
    a = logged_in(admin_gw)
    r = a.post_form("/certificates/Default%20Cert/delete", {"csrf": a.csrf})
    assert r.status == 409, r
    assert "in use by tls.inbound.certificate" in r.text
