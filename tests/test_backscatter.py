"""No backscatter (issue 16 item 3): every address the outbound client
would refuse is refused at RCPT (5xx) instead of being accepted and then
bounced to a sender who may be forged. One grammar serves both sides
(crates/postern-proto/src/address.rs); here the gateway is attacked from an
untrusted address with hostile forms for a relay domain, and nothing may be
queued. Legitimate unusual forms still go through.

Known at RCPT time and refused: syntax, RFC 5321 lengths. Not known without
DNS and therefore still accepted for relay domains: a recipient domain that
publishes a null MX or does not exist (that needs a lookup per RCPT; such
mail bounces at the first delivery attempt, and only to a sender a relay
domain's own servers accepted mail for).
"""

from postern_testlib import queued_id

RELAY_TOML = """
[[domain]]
name = "relay.test"
relay = true
"""

LONG_LOCAL = "l" * 65
LONG_LABEL = "d" * 64
LONG_DOMAIN = ".".join(["d" * 60] * 4) + ".relay.test"

HOSTILE = [
    '"x<y>"@relay.test',
    '"x<y"@relay.test',
    '"y>"@relay.test',
    '"a\\<b"@relay.test',
    '"a\\>b"@relay.test',
    '"a"b"@relay.test',
    '"unterminated@relay.test',
    'back\\slash@relay.test',
    f'{LONG_LOCAL}@relay.test',
    f'a@{LONG_LABEL}.relay.test',
    f'a@{LONG_DOMAIN}',
    'a@@relay.test',
    '@relay.test',
    'a@relay.test@relay.test',
    '.a@relay.test',
    'a..b@relay.test',
    'a@relay..test',
    'a@relay.test.',
    '@relay.test:"x<y>"@relay.test',
    '@bad_route!:a@relay.test',
    '@relay.test,a@relay.test',
]


def _gateway(make_gateway):
    gw = make_gateway(trusted_networks=["10.0.0.0/8"], start=False)
    f = gw.root / "relay.toml"
    f.write_text(RELAY_TOML)
    gw.cli_ok("settings", "import", str(f))
    gw.start()
    return gw


def _refused(gw, lines: list) -> list:
    """Send each RCPT line in fresh sessions (10 errors end a session);
    returns the replies."""
    replies = []
    for start in range(0, len(lines), 5):
        with gw.connect() as c:
            assert c.ehlo().code == 250
            assert c.cmd("MAIL FROM:<forged-victim@elsewhere.test>").code == 250
            for line in lines[start:start + 5]:
                replies.append(c.cmd(line))
            r = c.cmd("DATA")
            assert r.code >= 500, f"DATA with no accepted recipient: {r}"
            c.cmd("QUIT")
    return replies


def test_hostile_addresses_refused_at_rcpt(make_gateway):
    gw = _gateway(make_gateway)
    lines = [f"RCPT TO:<{a}>" for a in HOSTILE]
    # NUL and other controls refuse the command as a whole.
    lines += [b"RCPT TO:<\"a\x00b\"@relay.test>", b"RCPT TO:<a\x00b@relay.test>",
              b"RCPT TO:<\"a\tb\"@relay.test>"]
    # A source route to a domain we do not relay for: the mailbox decides.
    lines += ["RCPT TO:<@relay.test:victim@elsewhere.test>"]
    for line, r in zip(lines, _refused(gw, lines)):
        assert 500 <= r.code < 600, f"{line!r}: {r}"
    [r] = _refused(gw, ['RCPT TO:<"x<y>"@relay.test>'])
    assert r.code == 501 and r.lines[0].startswith("5.1.3"), f"the reply says what is wrong: {r}"
    # The hostile sender form is refused at MAIL too (5.1.7).
    with gw.connect() as c:
        assert c.ehlo().code == 250
        r = c.cmd('MAIL FROM:<"x<y>"@elsewhere.test>')
        assert r.code == 501 and r.lines[0].startswith("5.1.7"), r
    assert gw.queue() == []
    assert gw.spool_ids() == []
    assert "bounce" not in gw.log(), gw.log()


def test_unusual_legitimate_addresses_still_accepted(make_gateway):
    gw = _gateway(make_gateway)
    legit = ['"john doe"@relay.test', "first.last+tag@relay.test", '"a@b"@relay.test',
             '"a\\"b"@relay.test', "o'brien@relay.test", "l" * 64 + "@relay.test"]
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<sender@elsewhere.test>").code == 250
        for address in legit:
            r = c.cmd(f"RCPT TO:<{address}>")
            assert r.code == 250, f"{address!r}: {r}"
        assert c.cmd("DATA").code == 354
        r = c.cmd(b"Subject: unusual\r\n\r\nhello\r\n.")
        assert r.code == 250, r
        qid = queued_id(r.first)
        c.cmd("QUIT")
    # SMTPUTF8 addresses, only when SMTPUTF8 is given.
    with gw.connect() as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<sender@elsewhere.test>").code == 250
        r = c.cmd("RCPT TO:<jürgen@relay.test>")
        assert r.code >= 500, f"UTF-8 address without SMTPUTF8: {r}"
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<sender@elsewhere.test> SMTPUTF8").code == 250
        assert c.cmd("RCPT TO:<jürgen@relay.test>").code == 250
        assert c.cmd("DATA").code == 354
        r = c.cmd(b"Subject: utf8\r\n\r\nhallo\r\n.")
        assert r.code == 250, r
        qid2 = queued_id(r.first)
        c.cmd("QUIT")
    ids = gw.queue_ids()
    assert qid in ids and qid2 in ids, ids
