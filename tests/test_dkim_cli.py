"""`postern dkim generate|list|delete` (SPEC §11; issue 13 item 5).

The printed TXT record is checked against the key the store keeps with
independent tools: OpenSSL derives the public key from the stored private
key (it must be the record's `p=`), and dkimpy signs a message with the
stored RSA key and verifies it against the printed record.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess

import dkim  # dkimpy (tests/requirements.txt): an independent DKIM implementation
import pytest

ZONE_LINE = re.compile(r'^(\S+)\. IN TXT ((?:"[^"]*" ?)+)$')


def generate(gw, domain: str, selector: str, *key: str) -> tuple[str, str]:
    r = gw.cli_ok("dkim", "generate", "--domain", domain, "--selector", selector, *key)
    m = ZONE_LINE.match(r.stdout.strip())
    assert m, r
    strings = re.findall(r'"([^"]*)"', m.group(2))
    assert all(len(s) <= 255 for s in strings), strings
    return m.group(1), "".join(strings)


def tags(record: str) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in record.split(";") if part.strip())


def stored_private_key(gw, name: str) -> str:
    with sqlite3.connect(gw.data_dir / "postern.db") as db:
        row = db.execute("SELECT private_key_pem FROM dkim_keys WHERE name = ?", (name,)).fetchone()
    assert row, f"{name} not in the store"
    return row[0]


def public_der_of(private_pem: str) -> bytes:
    p = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=private_pem.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture
def cli(make_gateway):
    return make_gateway(start=False)


def test_rsa_key_record_matches_the_stored_key_and_verifies_with_dkimpy(cli):
    name, record = generate(cli, "Example.COM", "tlsrpt2026")
    assert name == "tlsrpt2026._domainkey.example.com"
    t = tags(record)
    assert (t["v"], t["k"]) == ("DKIM1", "rsa"), record
    private = stored_private_key(cli, name)
    assert private.startswith("-----BEGIN PRIVATE KEY-----")
    assert base64.b64decode(t["p"]) == public_der_of(private)
    text = subprocess.run(["openssl", "pkey", "-pubin", "-inform", "DER", "-noout", "-text"],
                          input=base64.b64decode(t["p"]), capture_output=True, timeout=30).stdout
    assert b"2048 bit" in text, text

    message = (b"From: <postmaster@example.com>\r\nTo: <tlsrpt@partner.test>\r\n"
               b"Subject: Report Domain: partner.test\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
               b"\r\nthe report\r\n")
    signature = dkim.sign(message, b"tlsrpt2026", b"example.com", private.encode(),
                          include_headers=[b"from", b"to", b"subject", b"date"])

    def dns(qname, timeout=5):
        assert qname == b"tlsrpt2026._domainkey.example.com.", qname
        return record.encode()

    assert dkim.verify(signature + message, dnsfunc=dns)
    assert not dkim.verify(signature + message.replace(b"the report", b"the rePort"), dnsfunc=dns)


def test_ed25519_key_record_is_the_bare_public_key(cli):
    name, record = generate(cli, "example.com", "ed", "--key", "ed25519")
    t = tags(record)
    assert t["k"] == "ed25519", record
    raw = base64.b64decode(t["p"])
    assert len(raw) == 32
    # The SubjectPublicKeyInfo OpenSSL derives from the stored key ends in it.
    assert public_der_of(stored_private_key(cli, name)).endswith(raw)


def test_list_shows_name_domain_selector_type_and_record(cli):
    rsa_name, rsa_record = generate(cli, "example.com", "a")
    ed_name, ed_record = generate(cli, "example.org", "b", "--key", "ed25519")
    listed = json.loads(cli.cli_ok("dkim", "list", "--json").stdout)
    assert [(k["name"], k["domain"], k["selector"], k["key_type"], k["record"]) for k in listed] == [
        (rsa_name, "example.com", "a", "rsa2048", rsa_record),
        (ed_name, "example.org", "b", "ed25519", ed_record),
    ]
    text = cli.cli_ok("dkim", "list").stdout
    assert f'{ed_name}  domain=example.org  selector=b  key=ed25519  record="{ed_record}"' in text, text
    assert "PRIVATE" not in text and "PRIVATE" not in json.dumps(listed)


@pytest.mark.parametrize("args, message", [
    (["--domain", "localhost", "--selector", "s"], "--domain: \"localhost\" is not a domain name"),
    (["--domain", "example.com", "--selector", "a_b"], "--selector: \"a_b\" is not a DKIM selector"),
    (["--domain", "exa mple.com", "--selector", "s"], "is not a domain name"),
    (["--domain", "example.com", "--selector", "s", "--key", "rsa1024"], "rsa1024"),
])
def test_bad_arguments_are_refused_and_store_nothing(cli, args, message):
    r = cli.cli("dkim", "generate", *args)
    assert r.rc != 0 and message in r.stderr, r
    assert json.loads(cli.cli_ok("dkim", "list", "--json").stdout) == []


def test_duplicate_is_refused_and_keeps_the_first_key(cli):
    name, record = generate(cli, "example.com", "s")
    r = cli.cli("dkim", "generate", "--domain", "example.com", "--selector", "S")
    assert r.rc != 0 and "already exists" in r.stderr, r
    assert [k["record"] for k in json.loads(cli.cli_ok("dkim", "list", "--json").stdout)] == [record]


def test_delete_is_refused_while_tlsrpt_dkim_key_names_it(cli):
    name, _ = generate(cli, "example.com", "tlsrpt")
    r = cli.cli("settings", "set", "tlsrpt.dkim_key", "other._domainkey.example.com")
    assert r.rc != 0 and "tlsrpt.dkim_key" in r.stderr and "names no DKIM key" in r.stderr, r
    cli.set("tlsrpt.dkim_key", name)
    r = cli.cli("dkim", "delete", name)
    assert r.rc != 0, r
    assert "in use by tlsrpt.dkim_key" in r.stderr and "nothing was deleted" in r.stderr, r
    assert [k["name"] for k in json.loads(cli.cli_ok("dkim", "list", "--json").stdout)] == [name]
    cli.set("tlsrpt.dkim_key", "")
    cli.cli_ok("dkim", "delete", name)
    assert json.loads(cli.cli_ok("dkim", "list", "--json").stdout) == []
    r = cli.cli("dkim", "delete", name)
    assert r.rc != 0 and "no DKIM key named" in r.stderr, r
