"""Several nodes sharing one installation through a real PostgreSQL
(SPEC §9): one Default Cert when nodes start together on an empty
database, settings and certificates changed through one node applied by
the other within 2 s without dropping its sessions, tracking found from
any node, API tokens and the admin password shared, the node registry and
`postern cluster status`, `store copy`, tracking through a store outage,
and TLS to the store required by default.

The PostgreSQL server is the throwaway one of fixtures_pg (TLS from a test
CA, scram-sha-256); every test gets a fresh database.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
import uuid

import pytest

from fixtures_pg import pg_database, pg_server  # noqa: F401 (fixtures)
from postern_testlib import (RSA_SIGALGS, SmtpConn, fingerprint, openssl, pem_certs, s_client)

# SPEC §9: a change made on any node is applied by every node within 2 s.
PROPAGATION = 2.0


def node(make_gateway, name: str, store_url: str, start: bool = True, **kw):
    """A gateway whose `store` is the PostgreSQL URL, named `name`."""
    g = make_gateway(name, fresh_store=True, start=False, **kw)
    text = g.config.read_text()
    g.config.write_text(f'store = "{store_url}"\nnode_name = "{name}"\n' + text)
    if start:
        g.start(timeout=120)
    return g


def served_fingerprint(port: int, rsa_only: bool = True) -> str:
    rc, out = s_client(port, *(RSA_SIGALGS if rsa_only else ()), starttls=True)
    certs = pem_certs(out)
    assert certs, f"s_client saw no certificate (rc={rc}):\n{out}"
    return fingerprint(certs[0])


def wait_for(what: str, check, timeout: float, interval: float = 0.05):
    """Poll `check()` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def test_nodes_starting_together_create_one_default_cert(make_gateway, pg_server, pg_database):
    a = node(make_gateway, "gw-a", pg_database, start=False)
    b = node(make_gateway, "gw-b", pg_database, start=False)
    errors: list[BaseException] = []

    def start(g):
        try:
            g.start(timeout=120)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(g,)) for g in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not errors, errors
    count = pg_server.psql("SELECT count(*) FROM certificates WHERE name = 'Default Cert'",
                           url=pg_database)
    assert count == "1", count
    # Exactly one generation, by one node (the other found it done).
    generated = [g for g in (a, b) if "created Default Cert in the store" in g.stderr()]
    assert len(generated) == 1, [g.stderr()[-1500:] for g in (a, b)]
    # Both present that one certificate, RSA and ECDSA alike.
    assert served_fingerprint(a.smtp_port) == served_fingerprint(b.smtp_port)
    assert served_fingerprint(a.smtp_port, rsa_only=False) == \
        served_fingerprint(b.smtp_port, rsa_only=False)
    exported = pem_certs(a.cli_ok("cert", "export", "Default Cert").stdout)[0]
    assert fingerprint(exported) == served_fingerprint(b.smtp_port)
    # The store's password appears in no log.
    for g in (a, b):
        assert pg_server.password not in g.stderr()
        assert pg_server.password not in g.log()


def test_setting_on_a_applies_on_b_without_dropping_its_session(make_gateway, pg_database):
    a = node(make_gateway, "gw-a", pg_database)
    b = node(make_gateway, "gw-b", pg_database)
    # A session open on B across the change.
    held = b.connect()
    assert held.ehlo().code == 250
    a.cli_ok("settings", "set", "mta.banner", "Cluster banner from A")
    changed_at = time.monotonic()

    def banner_on_b():
        with b.connect(banner=False) as c:
            return c.read_reply().first

    first = wait_for("B greets with the banner set on A",
                     lambda: "Cluster banner from A" in banner_on_b() and banner_on_b(),
                     PROPAGATION)
    assert time.monotonic() - changed_at <= PROPAGATION + 0.5
    assert first.startswith("220 "), first
    # The held session carries on and its message is accepted.
    assert held.cmd("MAIL FROM:<c@d.test>").code == 250
    assert held.cmd("RCPT TO:<a@b.test>").code == 250
    assert held.cmd("DATA").code == 354
    r = held.cmd("Subject: held\r\n\r\nacross the reload\r\n.")
    assert r.code == 250, r
    held.cmd("QUIT")
    held.close()


def test_certificate_imported_through_b_is_presented_by_a(make_gateway, pg_database, tmp_path):
    a = node(make_gateway, "gw-a", pg_database)
    b = node(make_gateway, "gw-b", pg_database)
    key, crt = tmp_path / "mx.key", tmp_path / "mx.pem"
    p = openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=mx.cluster.test", "-addext", "subjectAltName=DNS:mx.cluster.test",
                "-keyout", str(key), "-out", str(crt), timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    wanted = fingerprint(crt.read_text())
    assert served_fingerprint(a.smtp_port) != wanted
    b.cli_ok("cert", "import", "--name", "Cluster MX", "--cert", str(crt), "--key", str(key))
    b.cli_ok("settings", "set", "tls.inbound.certificate", "Cluster MX")
    wait_for("A presents the certificate imported through B",
             lambda: served_fingerprint(a.smtp_port) == wanted, PROPAGATION + 1.0, interval=0.1)


def test_message_received_on_a_is_traced_from_b(make_gateway, pg_database):
    a = node(make_gateway, "gw-a", pg_database)
    b = node(make_gateway, "gw-b", pg_database)
    message_id = "<cluster-trace-1@postern.test>"
    with smtplib.SMTP("127.0.0.1", a.smtp_port, timeout=10) as s:
        s.ehlo("client.postern.test")
        s.sendmail("alice@d.test", ["bob@b.test"],
                   f"Message-ID: {message_id}\r\nSubject: trace\r\n\r\nbody\r\n")
    trace = wait_for("B traces the message received on A",
                     lambda: (r := b.cli("trace", message_id)).rc == 0 and r.stdout,
                     10, interval=0.2)
    assert "received" in trace, trace
    assert '"node":"gw-a"' in trace.replace(" ", ""), trace
    assert "gw-b" not in trace, trace


def status_lines(g) -> dict[str, str]:
    out = g.cli_ok("cluster", "status").stdout
    return {m.group(1): m.group(2)
            for m in re.finditer(r"^(\S+)\s+(synchronized|behind|unreachable)\b", out, re.M)}


def test_cluster_status_synchronized_then_unreachable_after_kill9(make_gateway, pg_database):
    a = node(make_gateway, "gw-a", pg_database)
    b = node(make_gateway, "gw-b", pg_database)
    wait_for("both nodes synchronized",
             lambda: status_lines(a) == {"gw-a": "synchronized", "gw-b": "synchronized"},
             15, interval=0.3)
    out = b.cli_ok("cluster", "status").stdout
    served = served_fingerprint(a.smtp_port)
    flat = re.sub(r"[^0-9a-f\n]", "", out.lower())
    assert served in flat, out
    # A change: both apply it and are synchronized again at the new version.
    a.cli_ok("settings", "set", "mta.max_recipients", "77")
    wait_for("both synchronized at the new version",
             lambda: status_lines(b) == {"gw-a": "synchronized", "gw-b": "synchronized"},
             15, interval=0.3)
    b.kill9()
    # Unreachable once not seen for 30 s.
    states = wait_for("B unreachable after kill -9",
                      lambda: (s := status_lines(a)).get("gw-b") == "unreachable" and s,
                      60, interval=1.0)
    assert states["gw-a"] == "synchronized", states


def test_store_url_without_sslmode_refuses_a_server_without_tls(make_gateway, pg_server):
    assert pg_server.plain_url, "POSTERN_TEST_PG_PLAIN_URL missing"
    g = node(make_gateway, "gw-plain", pg_server.plain_url, start=False)
    r = g.cli("cert", "list")
    assert r.rc != 0, r
    assert "TLS" in r.stderr and "sslmode" in r.stderr, r
    assert "cluster store unreachable" in r.stderr, r
    assert pg_server.password not in r.stderr + r.stdout, r
    # Written on purpose, plaintext works.
    name = "p_" + uuid.uuid4().hex[:16]
    pg_server.psql(f"CREATE DATABASE {name}", url=pg_server.plain_url)
    plain_db = pg_server.plain_url.rsplit("/", 1)[0] + f"/{name}?sslmode=disable"
    h = node(make_gateway, "gw-plain-ok", plain_db, start=False)
    r = h.cli("cert", "list")
    assert r.rc == 0, r
    assert "Default Cert" in r.stdout, r


def test_store_copy_moves_an_embedded_installation_and_refuses_a_second_time(
        make_gateway, pg_server, pg_database, tmp_path):
    solo = make_gateway("solo")
    solo.cli_ok("settings", "set", "mta.max_recipients", "33")
    token = solo.cli_ok("admin", "token", "create", "--name", "ci").stdout.strip()
    assert token
    message_id = "<copied-1@postern.test>"
    with smtplib.SMTP("127.0.0.1", solo.smtp_port, timeout=10) as s:
        s.sendmail("alice@d.test", ["bob@b.test"],
                   f"Message-ID: {message_id}\r\nSubject: copy\r\n\r\nbody\r\n")
    wait_for("the message is traced on the embedded store",
             lambda: solo.cli("trace", message_id).rc == 0, 10, interval=0.2)
    served = served_fingerprint(solo.smtp_port)
    assert solo.stop() == 0
    certs_before = solo.cli_ok("cert", "list").stdout

    r = solo.cli_ok("store", "copy", "--to", pg_database)
    assert "verified" in r.stdout, r
    assert re.search(r"certificates: 2 \(2 with private key\)", r.stdout), r
    assert "API tokens: 1" in r.stdout, r
    assert re.search(r"tracking events: [1-9]", r.stdout), r
    assert pg_server.password not in r.stdout + r.stderr, r

    # A node on the copy: same certificates, same Default Cert served, same
    # settings, the message traceable, the token's hash there.
    moved = node(make_gateway, "moved", pg_database)
    assert moved.cli_ok("cert", "list").stdout == certs_before
    assert served_fingerprint(moved.smtp_port) == served
    assert "33" in moved.cli_ok("settings", "show").stdout
    trace = moved.cli_ok("trace", message_id).stdout
    assert "received" in trace, trace
    assert "ci" in moved.cli_ok("admin", "token", "list").stdout

    # A second copy: refused, and the target is unchanged.
    before = pg_server.psql("SELECT count(*) FROM certificates", url=pg_database)
    version = pg_server.psql("SELECT value FROM meta WHERE key = 'generation'", url=pg_database)
    again = solo.cli("store", "copy", "--to", pg_database)
    assert again.rc != 0, again
    assert "already holds a Postern installation" in again.stderr, again
    assert pg_server.psql("SELECT count(*) FROM certificates", url=pg_database) == before
    assert pg_server.psql("SELECT value FROM meta WHERE key = 'generation'",
                          url=pg_database) == version


def test_mail_flows_and_is_tracked_through_a_store_outage(make_gateway, make_peer, pg_server,
                                                         pg_database):
    """PostgreSQL stopped mid-run: the node keeps accepting and delivering
    mail, its tracking events wait in a local journal, and every one is in
    the store once it is back. Counted: 200 messages, zero lost."""
    sink = make_peer(starttls=None)
    g = node(make_gateway, "gw-o", pg_database, paused=False, start=False)
    # Routed before the start, so no message races the reload.
    settings = g.cli_ok("settings", "export").stdout
    settings += f'\n[[domain]]\nname = "sink.test"\nnext_hop = "[127.0.0.1]:{sink.port}"\n'
    (g.root / "settings.toml").write_text(settings)
    g.cli_ok("settings", "import", str(g.root / "settings.toml"))
    g.start(timeout=120)
    total, before_outage = 200, 100

    def send(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", g.smtp_port, timeout=10) as s:
            refused = s.sendmail("alice@d.test", ["bob@sink.test"],
                                 f"Message-ID: <outage-{i}@postern.test>\r\n"
                                 f"Subject: outage {i}\r\n\r\nbody\r\n")
            assert not refused, refused

    def tracked(kind: str) -> int:
        return int(pg_server.psql(
            f"SELECT count(DISTINCT message_id) FROM events WHERE kind = '{kind}' "
            "AND message_id LIKE '<outage-%'", url=pg_database))

    for i in range(before_outage):
        send(i)
    pg_server.stop()
    try:
        for i in range(before_outage, total):
            send(i)
        accepted_meanwhile = total - before_outage
        # Delivered while the store is still down.
        sink.wait_for_messages(total, timeout=60)
    finally:
        pg_server.start()
    assert accepted_meanwhile == 100
    subjects = {m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in sink.messages}
    assert len(subjects) == total, f"{len(subjects)} distinct of {total} delivered"
    wait_for(f"all {total} messages traceable after the outage",
             lambda: tracked("received") == total, 60, interval=0.5)
    err = g.stderr()
    assert err.count("tracking events kept in") == 1, err[-3000:]
    assert "from the local journal written to the store" in err, err[-3000:]
    assert pg_server.password not in err


def test_token_and_password_set_on_a_work_on_b(make_gateway, pg_database):
    from admin_client import PASSWORD, Admin, new_token, wait_admin
    a = node(make_gateway, "gw-a", pg_database, start=False)
    a.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    a.start(timeout=120)
    b = node(make_gateway, "gw-b", pg_database)
    wait_admin(b)
    token = new_token(a, "ci")
    r = Admin(b, token=token).get("/api/v1/settings")
    assert r.status == 200, r
    # The password set through A logs in on B.
    assert Admin(b).login().status == 200, "login on B with the password set on A"
    # Revoked through B: refused by A.
    b.cli_ok("admin", "token", "revoke", "ci")
    wait_admin(a)
    assert Admin(a, token=token).get("/api/v1/settings").status == 401


def test_node_started_during_an_outage_runs_from_its_local_copy(make_gateway, pg_server,
                                                                pg_database):
    from admin_client import PASSWORD, Admin, new_token, wait_admin
    a = node(make_gateway, "gw-a", pg_database, start=False)
    a.cli_ok("admin", "passwd", "--password-stdin", input=(PASSWORD + "\n").encode())
    a.start(timeout=120)
    token = new_token(a, "ci")
    a.cli_ok("settings", "set", "mta.max_recipients", "44")
    cache = a.data_dir / "store-cache.json"
    wait_for("the local copy", cache.is_file, 10, interval=0.2)
    served = served_fingerprint(a.smtp_port)
    assert a.stop() == 0
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    assert pg_server.password not in cache.read_text()
    fresh = node(make_gateway, "gw-fresh", pg_database, start=False)

    pg_server.stop()
    try:
        a.start(timeout=120)
        assert "running from the local copy" in a.stderr(), a.stderr()[-3000:]
        assert served_fingerprint(a.smtp_port) == served
        wait_admin(a)
        r = Admin(a, token=token).get("/api/v1/settings")
        assert r.status == 200, r
        assert r.json()["mta"]["max_recipients"] == 44, r
        for i in range(20):
            with smtplib.SMTP("127.0.0.1", a.smtp_port, timeout=10) as s:
                s.sendmail("alice@d.test", ["bob@b.test"],
                           f"Message-ID: <cached-{i}@postern.test>\r\nSubject: c\r\n\r\nbody\r\n")
        # Writes: refused in those words, nothing half-written.
        w = a.cli("settings", "set", "mta.max_recipients", "45")
        assert w.rc != 0 and "cluster store unreachable" in w.stderr, w
        # A node with no copy cannot start; the error names the store.
        f = fresh.cli("cert", "list")
        assert f.rc != 0 and "cluster store unreachable" in f.stderr, f
        assert "127.0.0.1" in f.stderr and pg_server.password not in f.stderr, f
    finally:
        pg_server.start()
    wait_for("the node connects and writes the journaled events",
             lambda: pg_server.psql("SELECT count(*) FROM events WHERE kind = 'received' "
                                    "AND message_id LIKE '<cached-%'", url=pg_database) == "20",
             60, interval=0.5)
    assert "cluster store reachable again" in a.stderr(), a.stderr()[-3000:]
    assert a.cli_ok("settings", "show").stdout.count("44") >= 1
