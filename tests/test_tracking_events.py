"""Typed attempt records end to end (issue 11 item 5, SPEC §10 "Every
attempt records ..."): what a real delivery writes into tracking, read back
with `postern trace`.

One self-signed Postfix is the MX of loose.test (global `opportunistic`:
delivered over unverified TLS) and strict.test (`[[domain]] tls =
"verify"`: deferred for the certificate). Each attempt must record the
requirement, the source that set it, the verdict, the RFC 8460 result
type on failure and policy type, the addresses of both ends, and the
deferral reason must name host, source and failure.
"""

from __future__ import annotations

import json

from delivery_support import (delivery_gateway, mx_zone, submit, wait_for, wait_outcome,
                              wait_rcpt_state, zone)
from fixtures_postfix import free_port


def _trace(gw, qid: str) -> tuple[list[dict], list[str], list[dict]]:
    """(attempts, their lines in words, deferred events) of `postern trace`."""
    attempts, words, deferred = [], [], []
    lines = gw.cli_ok("trace", qid).stdout.splitlines()
    for i, line in enumerate(lines):
        if " delivery_attempt " in line:
            attempts.append(json.loads(line[line.index("{"):])["attempt"])
            words.append(lines[i + 1].strip() if i + 1 < len(lines) else "")
        elif " deferred " in line:
            deferred.append(json.loads(line[line.index("{"):]))
    return attempts, words, deferred


def test_attempts_record_requirement_source_verdict_and_result_type(
        dns_server, make_downstream, make_gateway, tls_ca):
    port = free_port("127.0.0.3")
    make_downstream("both", "127.0.0.3", port, domains=["loose.test", "strict.test"],
                    tls="selfsigned")
    dns_server.set_records(zone(mx_zone("loose.test", "127.0.0.3"),
                                mx_zone("strict.test", "127.0.0.3")))
    gw = delivery_gateway(make_gateway, dns_server, port, ca=tls_ca,
                          settings={"tls.outbound.mode": "opportunistic"},
                          domains=[{"name": "strict.test", "tls": "verify"}])
    q_loose = submit(gw, "bob@loose.test", "loose")
    q_strict = submit(gw, "bob@strict.test", "strict")
    assert wait_outcome(gw, q_loose)["event"] == "delivered"
    r = wait_rcpt_state(gw, q_strict, "bob@strict.test", "deferred")

    # Delivered: the global requirement, met, over TLS, no published policy.
    # Tracking is written just after the outcome: poll briefly.
    wait_for(lambda: _trace(gw, q_loose)[0] and _trace(gw, q_strict)[2], 5, "tracking events")
    [a], [words], _ = _trace(gw, q_loose)
    assert (a["requirement"], a["source"], a["verdict"], a["policy_type"]) == \
        ("global opportunistic", "global", "met", "no-policy-found"), a
    assert "result_type" not in a, a
    assert a["host"] == "mx.loose.test" and a["ip"] == "127.0.0.3", a
    assert a["local_ip"].startswith("127."), a
    assert a["tls_version"].startswith("TLSv1.") and a["cert_verified"] is False, a
    assert words.startswith("mx.loose.test 127.0.0.3:"), words
    assert "requirement global opportunistic (set by global), met; TLSv1." in words, words

    # Deferred: the domain's verify, not met, with its RFC 8460 result type;
    # the reason names host, source and what failed.
    attempts, words, deferred = _trace(gw, q_strict)
    assert attempts, "no attempt recorded"
    a = attempts[0]
    assert (a["requirement"], a["source"], a["verdict"], a["result_type"]) == \
        ("domain verify", "domain", "failed", "certificate-not-trusted"), a
    assert "requirement domain verify (set by domain), failed (certificate-not-trusted)" \
        in words[0], words
    assert r["last_error"].startswith("mx.strict.test[127.0.0.3]: domain verify: certificate"), r
    assert deferred and deferred[0]["detail"] == r["last_error"], deferred
