"""Routing and per-domain policy (SPEC §4 [[domain]], §6; issue 3 item 2-3):
per-domain TLS overrides and their precedence (exact, wildcard, global),
MX preference order with fallback, the implicit MX (A record), null MX,
and a static next hop beating the MX.

All downstream MTAs share one MX port on different 127.0.0.x addresses; the
zone in the test DNS server says which domain goes where.
"""

from __future__ import annotations

import json
import re

from delivery_support import (
    SENDER,
    arrived_over_tls,
    check_dsn,
    delivery_gateway,
    log_events,
    mx_zone,
    queue_item,
    submit,
    wait_for,
    wait_gone,
    wait_outcome,
    wait_rcpt_state,
    with_subject,
    zone,
)
from fixtures_postfix import delivered_to, free_port


def test_domain_override_applies_to_that_domain_only(dns_server, make_downstream, make_gateway, tls_ca):
    """Global opportunistic; [[domain]] strict.test tls = "verify". One
    self-signed Postfix is the MX of both domains: loose.test is delivered
    over (unverified) TLS, strict.test is deferred for its certificate, and
    a third domain with tls = "none" goes in plaintext to the same host."""
    port = free_port("127.0.0.3")
    pf = make_downstream("both", "127.0.0.3", port, domains=["loose.test", "strict.test", "clear.test"],
                         tls="selfsigned")
    dns_server.set_records(zone(mx_zone("loose.test", "127.0.0.3"), mx_zone("strict.test", "127.0.0.3"),
                                mx_zone("clear.test", "127.0.0.3")))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca,
                          settings={"tls.outbound.mode": "opportunistic"},
                          domains=[{"name": "strict.test", "tls": "verify"},
                                   {"name": "clear.test", "tls": "none"}])
    q_loose = submit(gw, "bob@loose.test", "loose")
    q_strict = submit(gw, "bob@strict.test", "strict")
    q_clear = submit(gw, "bob@clear.test", "clear")

    loose = wait_outcome(gw, q_loose)
    assert loose["event"] == "delivered" and loose.get("tls", "").startswith("TLSv1."), loose["line"]
    clear = wait_outcome(gw, q_clear)
    assert clear["event"] == "delivered" and "tls" not in clear, clear["line"]
    strict = wait_outcome(gw, q_strict)
    assert strict["event"] == "deferred", strict["line"]
    r = wait_rcpt_state(gw, q_strict, "bob@strict.test", "deferred")
    assert r["state"] == "deferred", r
    assert r["last_error"].startswith("mx.strict.test[127.0.0.3]: "), r
    assert "certificate" in r["last_error"], r

    msgs = pf.wait_for_messages(2)
    [m_loose] = with_subject(msgs, "loose")
    [m_clear] = with_subject(msgs, "clear")
    assert arrived_over_tls(m_loose)
    assert not arrived_over_tls(m_clear)
    assert with_subject(pf.messages(), "strict") == []

    # the override is what the trace records as the mode of the attempt
    trace = gw.cli_ok("trace", q_strict).stdout
    assert '"mode":"verify"' in trace, trace
    assert '"mode":"opportunistic"' in gw.cli_ok("trace", q_loose).stdout


def test_exact_entry_beats_wildcard_beats_global(dns_server, make_downstream, make_gateway, tls_ca):
    """Global require; `*.x.test` tls = "verify"; `plain.x.test` tls = "none"
    (listed after the wildcard). The MX of all four domains is one Postfix
    with a self-signed certificate:

    * a.x.test and b.a.x.test match the wildcard (any depth): deferred, certificate
    * plain.x.test: the exact entry wins: plaintext
    * x.test itself is not matched by `*.x.test`: global require: TLS
    """
    port = free_port("127.0.0.3")
    domains = ["x.test", "a.x.test", "b.a.x.test", "plain.x.test"]
    pf = make_downstream("wild", "127.0.0.3", port, domains=domains, tls="selfsigned")
    dns_server.set_records(zone(*(mx_zone(d, "127.0.0.3") for d in domains)))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca,
                          settings={"tls.outbound.mode": "require"},
                          domains=[{"name": "*.x.test", "tls": "verify"},
                                   {"name": "plain.x.test", "tls": "none"}])
    ids = {d: submit(gw, f"user@{d}", f"to {d}") for d in domains}
    out = {d: wait_outcome(gw, q) for d, q in ids.items()}

    assert out["x.test"]["event"] == "delivered", out["x.test"]["line"]
    assert out["x.test"].get("tls", "").startswith("TLSv1."), out["x.test"]["line"]
    assert out["plain.x.test"]["event"] == "delivered", out["plain.x.test"]["line"]
    assert "tls" not in out["plain.x.test"], out["plain.x.test"]["line"]
    for d in ("a.x.test", "b.a.x.test"):
        assert out[d]["event"] == "deferred", out[d]["line"]
        r = wait_rcpt_state(gw, ids[d], f"user@{d}", "deferred")
        assert r["state"] == "deferred" and "certificate" in r["last_error"], r
        assert r["last_error"].startswith(f"mx.{d}[127.0.0.3]: "), r

    msgs = pf.wait_for_messages(2)
    assert arrived_over_tls(with_subject(msgs, "to x.test")[0])
    assert not arrived_over_tls(with_subject(msgs, "to plain.x.test")[0])
    assert len(pf.messages()) == 2

    # `probe` reports the mode that applies to each domain
    assert "outbound mode: verify" in gw.cli_ok("probe", "b.a.x.test").stdout
    assert "outbound mode: none" in gw.cli_ok("probe", "plain.x.test").stdout
    assert "outbound mode: require" in gw.cli_ok("probe", "x.test").stdout


def test_mx_preference_order_and_fallback(dns_server, make_downstream, make_gateway):
    """MX records come back in a scrambled order: 30 mx3 (up), 10 mx1 (down),
    20 mx2 (up). Postern tries mx1 first, falls back to mx2 (the next
    preference), and never uses mx3. A domain whose MXs are all down is
    deferred after every MX was tried."""
    ips = ("127.0.0.3", "127.0.0.4", "127.0.0.8", "127.0.0.9")
    port = free_port(*ips)
    mx2 = make_downstream("mx2", "127.0.0.3", port, domains=["fb.test"])
    mx3 = make_downstream("mx3", "127.0.0.4", port, domains=["fb.test"])
    dns_server.set_records({
        "fb.test": {"MX": [(30, "mx3.fb.test"), (10, "mx1.fb.test"), (20, "mx2.fb.test")]},
        "mx1.fb.test": {"A": "127.0.0.8"},      # nothing listens there
        "mx2.fb.test": {"A": "127.0.0.3"},
        "mx3.fb.test": {"A": "127.0.0.4"},
        "down.test": {"MX": [(10, "mx1.down.test"), (20, "mx2.down.test")]},
        "mx1.down.test": {"A": "127.0.0.8"},
        "mx2.down.test": {"A": "127.0.0.9"},
    })
    gw = delivery_gateway(make_gateway, dns_server, port)
    q = submit(gw, "bob@fb.test", "fallback")
    q_down = submit(gw, "bob@down.test", "all down")

    entry = wait_outcome(gw, q)
    assert entry["event"] == "delivered", entry["line"]
    assert entry["relay"] == f"mx2.fb.test[127.0.0.3]:{port}", entry["line"]
    [m] = mx2.wait_for_messages(1)
    assert delivered_to(m) == "bob@fb.test"
    assert mx3.messages() == []
    # the trace shows mx1 tried first (and failing), then mx2
    attempts = _attempts(gw, q)
    assert [a["host"] for a in attempts] == ["mx1.fb.test", "mx2.fb.test"], attempts

    down = wait_outcome(gw, q_down)
    assert down["event"] == "deferred", down["line"]
    r = wait_rcpt_state(gw, q_down, "bob@down.test", "deferred")
    assert r["state"] == "deferred", r
    assert re.match(r"mx[12]\.down\.test\[127\.0\.0\.[89]\]: connection failed", r["last_error"]), r
    hosts = [a["host"] for a in _attempts(gw, q_down)]
    assert hosts == ["mx1.down.test", "mx2.down.test"], hosts


def test_tls_policy_failure_on_first_mx_falls_back_to_next(dns_server, make_downstream, make_gateway, tls_ca):
    """verify: mx1 (preference 10) presents a self-signed certificate, mx2
    (20) one from the test CA for its name. The policy failure at mx1 is
    per host: mx2 gets the message over verified TLS, mx1 gets nothing."""
    port = free_port("127.0.0.3", "127.0.0.4")
    mx1 = make_downstream("mx1", "127.0.0.3", port, domains=["tlsfb.test"], hostname="mx1.tlsfb.test",
                          tls="selfsigned")
    mx2 = make_downstream("mx2", "127.0.0.4", port, domains=["tlsfb.test"], hostname="mx2.tlsfb.test",
                          tls="ca")
    dns_server.set_records({"tlsfb.test": {"MX": [(10, "mx1.tlsfb.test"), (20, "mx2.tlsfb.test")]},
                            "mx1.tlsfb.test": {"A": "127.0.0.3"}, "mx2.tlsfb.test": {"A": "127.0.0.4"}})
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, settings={"tls.outbound.mode": "verify"})
    q = submit(gw, "bob@tlsfb.test", "verified at mx2")
    entry = wait_outcome(gw, q)
    assert entry["event"] == "delivered", entry["line"]
    assert entry["relay"] == f"mx2.tlsfb.test[127.0.0.4]:{port}" and entry["verified"] == "true", entry["line"]
    [m] = mx2.wait_for_messages(1)
    assert arrived_over_tls(m)
    assert mx1.messages() == []
    attempts = _attempts(gw, q)
    assert [(a["host"], a["cert_verified"]) for a in attempts] == [("mx1.tlsfb.test", False),
                                                                   ("mx2.tlsfb.test", True)], attempts


def _attempts(gw, qid) -> list[dict]:
    """The delivery_attempt events of `postern trace`, as dicts."""
    out = []
    for line in gw.cli_ok("trace", qid).stdout.splitlines():
        if " delivery_attempt " in line:
            detail = json.loads(line[line.index("{"):])
            out.append(detail["attempt"])
    return out


def test_a_record_fallback_without_mx(dns_server, make_downstream, make_gateway):
    """No MX records (NOERROR, empty answer): the domain's own A record is
    the implicit MX (RFC 5321 §5.1)."""
    port = free_port("127.0.0.3")
    pf = make_downstream("nomx", "127.0.0.3", port, domains=["nomx.test"])
    dns_server.set_records({"nomx.test": {"A": "127.0.0.3"}})
    gw = delivery_gateway(make_gateway, dns_server, port)
    q = submit(gw, "bob@nomx.test", "implicit mx")
    entry = wait_outcome(gw, q)
    assert entry["event"] == "delivered", entry["line"]
    assert entry["relay"] == f"nomx.test[127.0.0.3]:{port}", entry["line"]
    [m] = pf.wait_for_messages(1)
    assert delivered_to(m) == "bob@nomx.test"
    assert dns_server.queries_for("nomx.test", "MX"), list(dns_server.queries)


def test_null_mx_bounces_at_once(dns_server, make_downstream, make_gateway):
    """`MX 0 .` (RFC 7505): bounced on the first attempt with status 5.1.10,
    no connection anywhere, and a DSN goes back to the sender."""
    port = free_port("127.0.0.10")
    origin = make_downstream("origin", "127.0.0.10", port, domains=["origin.test"])
    dns_server.set_records(zone({"nullmx.test": {"MX": [(0, ".")]}, "mx.nullmx.test": {"A": "127.0.0.3"}},
                                mx_zone("origin.test", "127.0.0.10")))
    gw = delivery_gateway(make_gateway, dns_server, port)
    q = submit(gw, "bob@nullmx.test", "to a null mx")
    entry = wait_outcome(gw, q, timeout=10)
    assert entry["event"] == "bounced", entry["line"]
    assert "null MX" in entry["reason"], entry["line"]
    assert "relay" not in entry, entry["line"]
    wait_gone(gw, q)
    [dsn] = origin.wait_for_messages(1, timeout=15)
    assert delivered_to(dsn) == SENDER
    info = check_dsn(dsn, failed=["bob@nullmx.test"], original_subject="to a null mx")
    assert info["recipients"]["bob@nullmx.test"]["status"] == "5.1.10", info["recipients"]
    bq = log_events(gw, "bounce-queued", **{"for": q})
    assert len(bq) == 1 and bq[0]["to"] == f"<{SENDER}>", gw.log()
    # exactly one attempt
    assert len(log_events(gw, ("delivered", "deferred", "bounced"), id=q)) == 1


def test_static_next_hop_beats_mx(dns_server, make_downstream, make_gateway):
    """[[domain]] next_hop: "[127.0.0.4]:PORT" (an IP literal, on another port
    than the MX port) and "relay.hop.test:PORT" (a host name looked up by
    A, not MX) win over the domains' MX records, which point at 127.0.0.3."""
    mx_port = free_port("127.0.0.3", "127.0.0.4")
    hop_port = free_port("127.0.0.4")
    by_mx = make_downstream("by-mx", "127.0.0.3", mx_port, domains=["hop.test", "hop2.test"])
    by_hop = make_downstream("by-hop", "127.0.0.4", hop_port, domains=["hop.test", "hop2.test"])
    dns_server.set_records(zone(mx_zone("hop.test", "127.0.0.3"), mx_zone("hop2.test", "127.0.0.3"),
                                {"relay.hop.test": {"A": "127.0.0.4"}}))
    gw = delivery_gateway(make_gateway, dns_server, mx_port,
                          domains=[{"name": "hop.test", "next_hop": f"[127.0.0.4]:{hop_port}"},
                                   {"name": "hop2.test", "next_hop": f"relay.hop.test:{hop_port}"}])
    q1 = submit(gw, "bob@hop.test", "via ip literal")
    q2 = submit(gw, "bob@hop2.test", "via host name")
    e1 = wait_outcome(gw, q1)
    e2 = wait_outcome(gw, q2)
    assert e1["event"] == "delivered" and e1["relay"] == f"127.0.0.4[127.0.0.4]:{hop_port}", e1["line"]
    assert e2["event"] == "delivered" and e2["relay"] == f"relay.hop.test[127.0.0.4]:{hop_port}", e2["line"]
    msgs = by_hop.wait_for_messages(2)
    assert sorted(delivered_to(m) for m in msgs) == ["bob@hop.test", "bob@hop2.test"]
    assert by_mx.messages() == []
    assert "connect from" not in by_mx.log()
    assert queue_item(gw, q1) is None and queue_item(gw, q2) is None


def test_unknown_domain_bounces_and_servfail_defers(dns_server, make_downstream, make_gateway):
    """NXDOMAIN is permanent (bounce, 5.1.2); SERVFAIL is temporary (deferred,
    reason names the domain and the DNS failure)."""
    port = free_port("127.0.0.10")
    origin = make_downstream("origin", "127.0.0.10", port, domains=["origin.test"])
    dns_server.set_records(zone(mx_zone("origin.test", "127.0.0.10"), {"broken.test": {"rcode": "SERVFAIL"}}))
    gw = delivery_gateway(make_gateway, dns_server, port)
    q_nx = submit(gw, "bob@nowhere.test", "nxdomain")
    q_sf = submit(gw, "bob@broken.test", "servfail")
    nx = wait_outcome(gw, q_nx)
    assert nx["event"] == "bounced" and "NXDOMAIN" in nx["reason"], nx["line"]
    sf = wait_outcome(gw, q_sf, timeout=40)
    assert sf["event"] == "deferred", sf["line"]
    r = wait_rcpt_state(gw, q_sf, "bob@broken.test", "deferred")
    assert r["state"] == "deferred" and r["last_error"].startswith("broken.test: "), r
    [dsn] = origin.wait_for_messages(1, timeout=15)
    info = check_dsn(dsn, failed=["bob@nowhere.test"], original_subject="nxdomain")
    assert info["recipients"]["bob@nowhere.test"]["status"] == "5.1.2"
    wait_for(lambda: queue_item(gw, q_nx) is None, 10, "the bounced message to leave the queue")


def test_verify_ip_literal_next_hop_checks_ip_san(dns_server, make_downstream, make_gateway, tls_ca):
    """verify with next_hop "[IP]:port": the certificate must carry that IP
    as a subject-alternative name (SPEC §4). 127.0.0.4 presents a test-CA
    certificate with IP:127.0.0.4; 127.0.0.5 one with only a DNS name."""
    port = free_port("127.0.0.4", "127.0.0.5")
    with_ip = make_downstream("with-ip", "127.0.0.4", port, domains=["iplit.test"], tls="ca", start=False)
    pair = tls_ca.issue("mx.iplit.test", dns=["mx.iplit.test"], ips=["127.0.0.4"],
                        directory=with_ip.root / "alt-cert")
    with_ip.cert_file.write_bytes(pair.cert.read_bytes())
    with_ip.key_file.write_bytes(pair.key.read_bytes())
    with_ip.start()
    dns_only = make_downstream("dns-only", "127.0.0.5", port, domains=["ipname.test"], tls="ca")
    dns_server.set_records({})
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, trusted_ca="Test CA",
                          domains=[{"name": "iplit.test", "next_hop": f"[127.0.0.4]:{port}", "tls": "verify"},
                                   {"name": "ipname.test", "next_hop": f"[127.0.0.5]:{port}", "tls": "verify"}])
    q_ok = submit(gw, "bob@iplit.test", "ip san")
    q_bad = submit(gw, "bob@ipname.test", "no ip san")
    ok = wait_outcome(gw, q_ok)
    assert ok["event"] == "delivered", ok["line"]
    assert ok["relay"] == f"127.0.0.4[127.0.0.4]:{port}" and ok["verified"] == "true", ok["line"]
    [m] = with_ip.wait_for_messages(1)
    assert arrived_over_tls(m)
    bad = wait_outcome(gw, q_bad)
    assert bad["event"] == "deferred", bad["line"]
    err = wait_rcpt_state(gw, q_bad, "bob@ipname.test", "deferred")["last_error"]
    assert err.startswith("127.0.0.5[127.0.0.5]: domain verify: certificate verification failed"), err
    assert "127.0.0.5" in err.split(": ", 1)[1], f"the reason should name the expected IP: {err}"
    assert dns_only.messages() == []


def test_postfix_style_bracketed_next_hop(dns_server, make_downstream, make_gateway, tls_ca):
    """next_hop = "[relay.brk.test]:PORT", as a Postfix admin writes it
    (issue 10 item 1): the name is looked up by A (never MX: the domain's MX
    points at 127.0.0.3), and `verify` checks the certificate against that
    name. A second bracketed hop whose name resolves to the same server but
    is not on its certificate is deferred for the name, proving the check
    uses the hop's name and not the address."""
    mx_port = free_port("127.0.0.3", "127.0.0.6")
    hop_port = free_port("127.0.0.6")
    by_mx = make_downstream("brk-mx", "127.0.0.3", mx_port, domains=["brk.test", "brk2.test"])
    by_hop = make_downstream("brk-hop", "127.0.0.6", hop_port, domains=["brk.test", "brk2.test"],
                             hostname="relay.brk.test", tls="ca")
    dns_server.set_records(zone(mx_zone("brk.test", "127.0.0.3"), mx_zone("brk2.test", "127.0.0.3"),
                                {"relay.brk.test": {"A": "127.0.0.6"}},
                                {"alias.brk.test": {"A": "127.0.0.6"}}))
    gw = delivery_gateway(make_gateway, dns_server, mx_port, ca=tls_ca, trusted_ca="Test CA",
                          domains=[{"name": "brk.test", "next_hop": f"[relay.brk.test]:{hop_port}",
                                    "tls": "verify"},
                                   {"name": "brk2.test", "next_hop": f"[alias.brk.test]:{hop_port}",
                                    "tls": "verify"}])
    exported = gw.cli_ok("settings", "export").stdout
    assert f'next_hop = "[relay.brk.test]:{hop_port}"' in exported, "kept as the admin wrote it"
    q_ok = submit(gw, "bob@brk.test", "bracketed next hop")
    q_bad = submit(gw, "bob@brk2.test", "bracketed, wrong name")
    ok = wait_outcome(gw, q_ok)
    assert ok["event"] == "delivered", ok["line"]
    assert ok["relay"] == f"relay.brk.test[127.0.0.6]:{hop_port}" and ok["verified"] == "true", ok["line"]
    [m] = by_hop.wait_for_messages(1)
    assert delivered_to(m) == "bob@brk.test" and arrived_over_tls(m)
    bad = wait_outcome(gw, q_bad)
    assert bad["event"] == "deferred", bad["line"]
    err = wait_rcpt_state(gw, q_bad, "bob@brk2.test", "deferred")["last_error"]
    assert err.startswith("alias.brk.test[127.0.0.6]: domain verify: certificate verification failed"), err
    assert by_mx.messages() == []
    assert "connect from" not in by_mx.log()
