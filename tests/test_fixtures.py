"""The delivery-test peers, each proven with real clients (no Postern needed).

Flow per test: start the fixture (DNS server, private Postfix, Python peer),
talk to it with dig / swaks / openssl s_client / smtplib, and check what it
answered, delivered or logged.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

# Loaded as plugins (fixtures + the failure-report hook); registered for
# assertion rewriting before this module imports helpers from them.
pytest.register_assert_rewrite("fixtures_dns", "fixtures_postfix", "fixtures_peers")
pytest_plugins = ["fixtures_dns", "fixtures_postfix", "fixtures_peers"]

from fixtures_dns import query  # noqa: E402
from fixtures_postfix import (  # noqa: E402
    _LIVE,
    _live_group_members,
    delivered_to,
    free_port,
    header_block,
    is_listening,
    make_message,
    received_headers,
)


def run(cmd: list[str], timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)


def dig(server, *args: str) -> subprocess.CompletedProcess:
    return run(["dig", "@127.0.0.1", "-p", str(server.port), "+time=2", "+tries=1", *args], timeout=15)


def swaks(ip: str, port: int, to: str, *extra: str, header: str = "Subject: fixture test") -> subprocess.CompletedProcess:
    return run(["swaks", "--server", ip, "--port", str(port), "--helo", "client.test",
                "--from", "sender@origin.test", "--to", to, "--header", header, *extra])


ZONE = {
    "partner.test": {"MX": [(10, "mx1.partner.test"), (20, "mx2.partner.test")]},
    "mx1.partner.test": {"A": "127.0.0.3", "AAAA": "::1"},
    "mx2.partner.test": {"A": ["127.0.0.4", "127.0.0.5"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "spf.partner.test": {"TXT": ["v=spf1 -all"]},
    "alias.partner.test": {"CNAME": "mx1.partner.test"},
    "broken.test": {"rcode": "SERVFAIL"},
}


# --------------------------------------------------------------------- DNS

def test_dns_answers_mx_a_aaaa_txt(dns_server):
    dns_server.set_records(ZONE)
    assert dig(dns_server, "+short", "MX", "partner.test").stdout.split("\n")[:2] == [
        "10 mx1.partner.test.", "20 mx2.partner.test."]
    assert dig(dns_server, "+short", "A", "mx1.partner.test").stdout.split() == ["127.0.0.3"]
    assert sorted(dig(dns_server, "+short", "A", "mx2.partner.test").stdout.split()) == ["127.0.0.4", "127.0.0.5"]
    assert dig(dns_server, "+short", "AAAA", "mx1.partner.test").stdout.split() == ["::1"]
    assert dig(dns_server, "+short", "TXT", "spf.partner.test").stdout.strip() == '"v=spf1 -all"'
    assert dig(dns_server, "+short", "A", "alias.partner.test").stdout.split() == ["mx1.partner.test.", "127.0.0.3"]
    assert ("partner.test", "MX", "udp") in dns_server.queries
    assert dns_server.nameserver == f"127.0.0.1:{dns_server.port}"


def test_dns_null_mx_nxdomain_nodata_servfail(dns_server):
    dns_server.set_records(ZONE)
    assert dig(dns_server, "+short", "MX", "nullmx.test").stdout.strip() == "0 ."
    nx = dig(dns_server, "A", "nothere.partner.test").stdout
    assert "status: NXDOMAIN" in nx and "flags: qr aa" in nx and "SOA" in nx
    nodata = dig(dns_server, "MX", "mx1.partner.test").stdout
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata
    assert "status: SERVFAIL" in dig(dns_server, "A", "broken.test").stdout
    # the same through dnslib's client
    r = query(dns_server, "nullmx.test", "MX")
    assert r.header.rcode == 0 and str(r.rr[0].rdata) == "0 ."
    assert query(dns_server, "unknown.example", "A").header.rcode == 3


def test_dns_records_flip_while_running(dns_server):
    dns_server.set_records(ZONE)
    assert dig(dns_server, "+short", "A", "mx1.partner.test").stdout.split() == ["127.0.0.3"]
    dns_server.set("mx1.partner.test", "A", ["127.0.0.9"])
    assert dig(dns_server, "+short", "A", "mx1.partner.test").stdout.split() == ["127.0.0.9"]
    dns_server.update({"partner.test": {"MX": "5 mx9.partner.test"}})
    assert dig(dns_server, "+short", "MX", "partner.test").stdout.strip() == "5 mx9.partner.test."
    dns_server.remove("mx2.partner.test")
    assert "status: NXDOMAIN" in dig(dns_server, "A", "mx2.partner.test").stdout
    dns_server.remove("partner.test")   # still a parent of mx1.partner.test: NODATA, not NXDOMAIN
    out = dig(dns_server, "MX", "partner.test").stdout
    assert "status: NOERROR" in out and "ANSWER: 0" in out
    dns_server.set_records({"new.test": {"A": "127.0.0.7"}})
    assert "status: NXDOMAIN" in dig(dns_server, "A", "mx1.partner.test").stdout
    assert dig(dns_server, "+short", "A", "new.test").stdout.split() == ["127.0.0.7"]


def test_dns_tcp_and_truncation_fallback(dns_server):
    dns_server.set_records(ZONE)
    out = dig(dns_server, "+tcp", "MX", "partner.test").stdout
    assert "(TCP)" in out and "mx1.partner.test" in out
    assert query(dns_server, "mx1.partner.test", "A", tcp=True).rr[0].rdata.toZone() == "127.0.0.3"
    dns_server.truncate_udp = True
    out = dig(dns_server, "MX", "partner.test")
    assert "Truncated, retrying in TCP mode" in out.stdout + out.stderr
    assert "10 mx1.partner.test." in out.stdout
    assert [q[2] for q in dns_server.queries_for("partner.test", "MX")][-2:] == ["udp", "tcp"]


# ----------------------------------------------------- downstream Postfix

def test_downstream_plain_delivers_without_tls(make_downstream):
    pf = make_downstream("plain", "127.0.0.3", domains=["partner.test"])
    ehlo = swaks(pf.ip, pf.port, "bob@partner.test", "--quit-after", "EHLO")
    assert ehlo.returncode == 0 and "STARTTLS" not in ehlo.stdout
    r = swaks(pf.ip, pf.port, "bob@partner.test", header="Subject: plain one")
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = pf.wait_for_messages(1, timeout=10)
    assert delivered_to(msg) == "bob@partner.test"
    assert "Subject: plain one" in header_block(msg)
    [rcvd] = received_headers(msg)
    assert "with ESMTP id" in rcvd and "using TLS" not in rcvd
    # --tls cannot work where STARTTLS is not offered; nothing more is delivered
    assert swaks(pf.ip, pf.port, "bob@partner.test", "--tls").returncode != 0
    assert len(pf.messages()) == 1
    assert "status=sent (delivered to maildir)" in pf.log()


def test_downstream_selfsigned_tls_received_header(make_downstream, tls_ca):
    pf = make_downstream("ss", "127.0.0.3", tls="selfsigned")
    r = swaks(pf.ip, pf.port, "alice@partner.test", "--tls")
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = pf.wait_for_messages(1)
    [rcvd] = received_headers(msg)
    assert re.search(r"\(using TLSv1\.3 with cipher \S+", rcvd), rcvd
    assert "with ESMTPS id" in rcvd
    assert "TLS connection established from" in pf.log()
    # self-signed: does not chain to the test CA, but verifies against itself
    s = run(["openssl", "s_client", "-connect", pf.address, "-starttls", "smtp", "-brief",
             "-verify_return_error", "-CAfile", str(tls_ca.cert)], input="QUIT\r\n")
    assert s.returncode != 0 and "Verification: OK" not in s.stderr
    s = run(["openssl", "s_client", "-connect", pf.address, "-starttls", "smtp", "-brief",
             "-verify_return_error", "-CAfile", str(pf.ca_file), "-verify_hostname", "mx.partner.test"],
            input="QUIT\r\n")
    assert "Verification: OK" in s.stderr, s.stderr


def test_downstream_ca_cert_verifies_with_exposed_ca(make_downstream, tls_ca):
    pf = make_downstream("ca", "127.0.0.3", tls="ca", tls_hostname="mx.partner.test")
    assert pf.ca_file.read_text() == tls_ca.cert.read_text()
    ok = run(["openssl", "s_client", "-connect", pf.address, "-starttls", "smtp", "-brief",
              "-CAfile", str(pf.ca_file), "-verify_hostname", "mx.partner.test", "-verify_return_error"],
             input="QUIT\r\n")
    assert "Verification: OK" in ok.stderr and "Verified peername: mx.partner.test" in ok.stderr, ok.stderr
    wrong = run(["openssl", "s_client", "-connect", pf.address, "-starttls", "smtp", "-brief",
                 "-CAfile", str(pf.ca_file), "-verify_hostname", "other.test", "-verify_return_error"],
                input="QUIT\r\n")
    assert wrong.returncode != 0 and "Verification: OK" not in wrong.stderr
    r = swaks(pf.ip, pf.port, "carol@partner.test", "--tls", "--tls-verify", "--tls-ca-path", str(pf.ca_file),
              "--tls-sni", "mx.partner.test")
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = pf.wait_for_messages(1)
    assert "using TLSv1.3" in received_headers(msg)[0]


def test_two_downstreams_share_one_port_on_different_ips(make_downstream):
    port = free_port("127.0.0.3", "127.0.0.4")
    a = make_downstream("a", "127.0.0.3", port, domains=["a.test"])
    b = make_downstream("b", "127.0.0.4", port, domains=["b.test"], tls="selfsigned")
    assert swaks("127.0.0.3", port, "x@a.test").returncode == 0
    assert swaks("127.0.0.4", port, "y@b.test", "--tls").returncode == 0
    assert [delivered_to(m) for m in a.wait_for_messages(1)] == ["x@a.test"]
    assert [delivered_to(m) for m in b.wait_for_messages(1)] == ["y@b.test"]
    # each accepts only its own domains
    r = swaks("127.0.0.3", port, "y@b.test")
    assert r.returncode != 0 and "554 5.7.1" in r.stdout and "Relay access denied" in r.stdout


def test_downstream_recipient_access_table(make_downstream):
    pf = make_downstream("acc", "127.0.0.3", recipient_access={
        "gone@partner.test": "550 5.1.1 No such user here",
        "later@partner.test": "450 4.2.0 Mailbox busy, try later"})
    r = swaks(pf.ip, pf.port, "gone@partner.test")
    assert "550 5.1.1" in r.stdout and "No such user here" in r.stdout
    assert "450 4.2.0" in swaks(pf.ip, pf.port, "later@partner.test").stdout
    pf.set_recipient_access({})
    assert swaks(pf.ip, pf.port, "gone@partner.test").returncode == 0
    assert len(pf.wait_for_messages(1, rcpt="gone@partner.test")) == 1


def test_downstream_stop_then_start_again(make_downstream):
    pf = make_downstream("bounce", "127.0.0.3")
    assert swaks(pf.ip, pf.port, "one@partner.test").returncode == 0
    pf.wait_for_messages(1)
    pf.stop()
    assert not pf.running and not is_listening(pf.ip, pf.port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((pf.ip, pf.port), timeout=2).close()
    pf.start()
    assert swaks(pf.ip, pf.port, "two@partner.test").returncode == 0
    msgs = pf.wait_for_messages(2)
    assert [delivered_to(m) for m in msgs] == ["one@partner.test", "two@partner.test"]


def test_postfix_teardown_leaves_no_process(make_downstream):
    pf = make_downstream("gone", "127.0.0.3")
    pid = pf.master_pid()
    assert pid and _live_group_members(pid)
    pf.remove()
    assert not _live_group_members(pid)
    assert not pf.root.exists() or os.environ.get("POSTERN_KEEP_PF")
    assert str(pf.root) not in _LIVE


# ------------------------------------------------------------ Python peer

def test_broken_tls_peer_breaks_starttls_but_takes_plaintext(broken_tls_peer):
    p = broken_tls_peer
    ehlo = swaks(p.host, p.port, "x@partner.test", "--quit-after", "EHLO")
    assert "250-STARTTLS" in ehlo.stdout or "250 STARTTLS" in ehlo.stdout
    tls = swaks(p.host, p.port, "x@partner.test", "--tls")
    assert tls.returncode != 0
    assert "220 2.0.0 Ready to start TLS" in tls.stdout
    assert p.messages == []
    plain = swaks(p.host, p.port, "x@partner.test", header="Subject: fell back")
    assert plain.returncode == 0, plain.stdout
    [m] = p.wait_for_messages(1)
    assert m.rcpts == ["x@partner.test"] and m.mail_from == "sender@origin.test"
    assert not m.tls and b"Subject: fell back" in m.data
    sessions = p.wait_for_sessions(3)
    assert [s.starttls_attempted for s in sessions] == [False, True, False]
    assert sessions[1].tls_error and not sessions[1].tls


@pytest.mark.parametrize("mode", ["close", "reset", "refuse"])
def test_peer_other_tls_failures(make_peer, mode):
    p = make_peer(starttls="refuse") if mode == "refuse" else make_peer(starttls="broken", break_with=mode)
    assert swaks(p.host, p.port, "x@partner.test", "--tls").returncode != 0
    assert swaks(p.host, p.port, "x@partner.test").returncode == 0
    assert len(p.wait_for_messages(1)) == 1


def test_peer_with_working_tls_and_custom_replies(make_peer):
    p = make_peer(starttls="ok", replies={"RCPT": lambda s, a: "550 5.1.1 unknown" if a.startswith("no@") else None})
    r = swaks(p.host, p.port, "yes@partner.test", "--tls")
    assert r.returncode == 0
    [m] = p.wait_for_messages(1)
    assert m.tls and p.sessions[-1].tls_version == "TLSv1.3"
    assert "550 5.1.1 unknown" in swaks(p.host, p.port, "no@partner.test").stdout


# ------------------------------------------------------- upstream Postfix

def test_upstream_relays_to_plain_receiver(make_upstream, make_peer):
    peer = make_peer(starttls=None)
    up = make_upstream("up", "127.0.0.20", relay_port=peer.port, tls_level="may")
    up.send("sender@origin.test", ["bob@partner.test", "eve@other.test"], make_message("relay me"))
    [m] = peer.wait_for_messages(1, timeout=15)
    assert sorted(m.rcpts) == ["bob@partner.test", "eve@other.test"]
    assert b"Subject: relay me" in m.data and not m.tls
    assert peer.sessions[-1].client[0] == "127.0.0.20"          # smtp_bind_address
    assert m.ehlo == up.hostname
    up.wait_for_relayed(1)


def test_upstream_encrypt_establishes_tls(make_upstream, make_peer):
    peer = make_peer(starttls="ok")
    up = make_upstream("up", "127.0.0.20", relay_port=peer.port, tls_level="encrypt")
    up.send("sender@origin.test", "bob@partner.test", make_message("encrypted"))
    [m] = peer.wait_for_messages(1, timeout=15)
    assert m.tls
    match = up.wait_for_tls_to_relay()
    assert match.group(1) == "Untrusted" and match.group(2).startswith("TLSv1.")
    assert f"TLS connection established to 127.0.0.1[127.0.0.1]:{peer.port}" in up.log()


def test_upstream_encrypt_defers_when_tls_not_offered(make_upstream, make_peer):
    peer = make_peer(starttls=None)
    up = make_upstream("up", "127.0.0.20", relay_port=peer.port, tls_level="encrypt")
    up.send("sender@origin.test", "bob@partner.test", make_message("must be encrypted"))
    up.wait_for_log(r"status=deferred \(TLS is required, but was not offered by host 127\.0\.0\.1")
    [q] = up.queue()
    assert "TLS is required" in q["recipients"][0]["delay_reason"]
    assert peer.messages == []


def test_upstream_secure_verifies_downstream_ca_cert(make_upstream, make_downstream, tls_ca):
    down = make_downstream("down", "127.0.0.3", tls="ca", tls_hostname="mx.partner.test")
    up = make_upstream("up", "127.0.0.20", relay_host=down.ip, relay_port=down.port, tls_level="secure",
                       tls_ca_file=tls_ca.cert, tls_match="mx.partner.test")
    up.send("sender@origin.test", "bob@partner.test", make_message("verified"))
    [msg] = down.wait_for_messages(1, timeout=15)
    assert "using TLSv1.3" in received_headers(msg)[0]
    assert up.wait_for_tls_to_relay().group(1) == "Verified"

    bad = make_upstream("bad", "127.0.0.21", relay_host=down.ip, relay_port=down.port, tls_level="secure",
                        tls_ca_file=tls_ca.cert, tls_match="wrong.partner.test")
    bad.send("sender@origin.test", "bob@partner.test", make_message("not verified"))
    bad.wait_for_log(r"status=deferred .*[Ss]erver certificate not verified")
    assert len(down.messages()) == 1
