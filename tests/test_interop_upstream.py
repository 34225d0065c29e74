"""Two real MTAs around Postern (issue 3, "Tests"): a private Postfix as the
upstream relays into Postern with `smtp_tls_security_level = encrypt` (and
`secure`, verifying Postern's certificate from the test CA), and Postern
delivers on to a downstream Postfix over TLS. Each hop is checked on both
ends: the sender's log and the receiver's log / Received header.

  upstream Postfix (127.0.0.20) --TLS--> Postern (127.0.0.1) --TLS--> downstream Postfix (127.0.0.3)
"""

from __future__ import annotations

import re

from delivery_support import (
    delivery_gateway,
    log_events,
    mx_zone,
    wait_for,
    wait_outcome,
)
from fixtures_postfix import delivered_to, free_port, make_message, received_headers


def _accepted_from_upstream(gw, up, subject_rcpt: str, timeout: float = 20) -> dict:
    def find():
        for e in log_events(gw, "accepted", client="[127.0.0.20]"):
            if e.get("to") == f"<{subject_rcpt}>":
                return e
        return None
    try:
        return wait_for(find, timeout, f"Postern to accept the upstream's message for {subject_rcpt}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n-- upstream log --\n{up.log()[-3000:]}\n-- mail.log --\n{gw.log()[-3000:]}")


def test_upstream_encrypt_through_postern_to_downstream(dns_server, make_downstream, make_upstream,
                                                        make_gateway, tls_ca):
    """Upstream `encrypt` -> Postern (self-signed Default Cert) -> downstream
    Postfix with a test-CA certificate, Postern in `verify` mode."""
    port = free_port("127.0.0.3")
    down = make_downstream("down", "127.0.0.3", port, domains=["partner.test"], tls="ca")
    dns_server.set_records(mx_zone("partner.test", "127.0.0.3"))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, settings={"tls.outbound.mode": "verify"})
    up = make_upstream("up", "127.0.0.20", relay_port=gw.smtp_port, tls_level="encrypt")

    up.send("sender@origin.test", "bob@partner.test", make_message("across three MTAs"))

    # hop 1: upstream -> Postern, over TLS, on both ends
    m = up.wait_for_tls_to_relay(timeout=20)
    assert m.group(2) == "TLSv1.3", m.group(0)
    up.wait_for_relayed(1, timeout=20)
    acc = _accepted_from_upstream(gw, up, "bob@partner.test")
    assert acc["tls"] == "TLSv1.3" and acc.get("cipher"), acc["line"]
    assert acc["helo"] == up.hostname and acc["from"] == "<sender@origin.test>", acc["line"]

    # hop 2: Postern -> downstream, verified TLS
    out = wait_outcome(gw, acc["id"])
    assert out["event"] == "delivered", out["line"]
    assert out["tls"] == "TLSv1.3" and out["verified"] == "true", out["line"]
    [msg] = down.wait_for_messages(1, timeout=15)
    assert delivered_to(msg) == "bob@partner.test"
    rcvd = received_headers(msg)
    assert len(rcvd) >= 3, rcvd
    # newest first: downstream's (from Postern, TLS), Postern's (from upstream, TLS), upstream's own
    assert "from mx.postern.test" in rcvd[0] and "using TLSv1.3" in rcvd[0], rcvd[0]
    assert f"from {up.hostname}" in rcvd[1] and "by mx.postern.test (Postern)" in rcvd[1], rcvd[1]
    assert "ESMTPS" in rcvd[1] and re.search(r"using TLSv1\.3 with cipher \S+", rcvd[1]), rcvd[1]
    assert f"by {up.hostname} (Postfix)" in rcvd[2], rcvd[2]
    assert "Subject: across three MTAs" in msg.decode(errors="replace")


def test_upstream_secure_verifies_postern_ca_certificate(dns_server, make_downstream, make_upstream,
                                                         make_gateway, tls_ca):
    """Postern presents a certificate for mx.postern.test from the test CA
    (imported with its key, made tls.inbound.certificate): an upstream with
    `secure` and that CA verifies it; an upstream expecting another name
    refuses to deliver. The message flows on to the downstream."""
    port = free_port("127.0.0.3")
    down = make_downstream("down", "127.0.0.3", port, domains=["partner.test"], tls="ca")
    dns_server.set_records(mx_zone("partner.test", "127.0.0.3"))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca, start=False,
                          settings={"tls.outbound.mode": "verify"})
    pair = tls_ca.issue("mx.postern.test", dns=["mx.postern.test"], ips=["127.0.0.1"],
                        directory=gw.root / "certs")
    gw.cli_ok("cert", "import", "--name", "Postern CA cert", "--cert", str(pair.cert), "--key", str(pair.key))
    gw.set("tls.inbound.certificate", "Postern CA cert")
    gw.start()

    up = make_upstream("up", "127.0.0.20", relay_port=gw.smtp_port, tls_level="secure",
                       tls_ca_file=tls_ca.cert, tls_match="mx.postern.test")
    up.send("sender@origin.test", "bob@partner.test", make_message("verified both ways"))
    m = up.wait_for_tls_to_relay(timeout=20)
    assert m.group(1) == "Verified", m.group(0)
    up.wait_for_relayed(1, timeout=20)
    acc = _accepted_from_upstream(gw, up, "bob@partner.test")
    assert acc["tls"] == "TLSv1.3", acc["line"]
    out = wait_outcome(gw, acc["id"])
    assert out["event"] == "delivered" and out["verified"] == "true", out["line"]
    [msg] = down.wait_for_messages(1, timeout=15)
    assert "using TLSv1.3" in received_headers(msg)[0]

    bad = make_upstream("bad", "127.0.0.21", relay_port=gw.smtp_port, tls_level="secure",
                        tls_ca_file=tls_ca.cert, tls_match="other.postern.test")
    bad.send("sender@origin.test", "carol@partner.test", make_message("wrong name"))
    bad.wait_for_log(r"status=deferred .*[Ss]erver certificate not verified", timeout=20)
    assert not [e for e in log_events(gw, "accepted") if e.get("to") == "<carol@partner.test>"]
    assert len(down.messages()) == 1
