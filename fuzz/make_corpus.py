#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target into fuzz/corpus/<target>/.

Seeds are small, meaningful inputs: real SMTP dialogs, every SMTP smuggling
variant, replies of real servers, settings and postern.toml examples, PEM
files like those the tests generate (openssl), valid and damaged spool
files. The input layout of each target is described in
crates/postern-fuzz/src/<target>.rs.

Re-running it rewrites the seed files (PEM keys are new each time; the rest
is deterministic). Files named crash-* / regression-* are reproducers of
fixed bugs and are never touched.

    python3 fuzz/make_corpus.py
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def write(target: str, name: str, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# ---------------------------------------------------------------------------
# SMTP client input
# ---------------------------------------------------------------------------

DIALOG = crlf(
    "EHLO client.example.org\n"
    "MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME\n"
    "RCPT TO:<bob@relay.test>\n"
    "RCPT TO:<carol@a.sub.test>\n"
    "DATA\n"
    "From: <alice@example.org>\n"
    "To: <bob@relay.test>\n"
    "Subject: hello\n"
    "Message-ID: <1@example.org>\n"
    "\n"
    "..a stuffed dot\n"
    "body\n"
    ".\n"
    "QUIT\n"
)

# CVE-2023-51764 and relatives: an end of data that is not CRLF.CRLF, then
# a smuggled second transaction.
SMUGGLED = "MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@relay.test>\r\nDATA\r\nsmuggled\r\n"
SMUGGLING = {
    "lf-dot-lf": b"a\n.\n",
    "lf-dot-crlf": b"a\n.\r\n",
    "crlf-dot-lf": b"a\r\n.\n",
    "cr-dot-cr": b"a\r.\r",
    "crlf-dot-cr": b"a\r\n.\r",
    "cr-dot-crlf": b"a\r.\r\n",
    "crlf-dot-cr-cr": b"a\r\n.\r\r",
    "nul-dot": b"a\r\n\0.\r\n",
    "dot-nul": b"a\r\n.\0\r\n",
    "cr-nul-lf": b"a\r\n.\r\0\n",
    "lf-cr-lf-dot": b"a\n\r\n.\r\n",
}


def command_seeds() -> None:
    lines = [
        "EHLO client.example.org", "HELO client", "EHLO [192.0.2.1]", "EHLO [IPv6:2001:db8::1]",
        "MAIL FROM:<>", "MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8",
        "MAIL FROM: <a@b.test>", "MAIL FROM:<\"quoted local\"@b.test>",
        "MAIL FROM:<@route.test:a@b.test>", "MAIL FROM:<a@[192.0.2.1]> BODY=BINARYMIME",
        "MAIL FROM:<a@b.test> FOO=bar X", "RCPT TO:<Postmaster>", "RCPT TO:<b@c.test> NOTIFY=NEVER",
        "RCPT TO:<üser@bücher.example>", "DATA", "BDAT 100 LAST", "BDAT 0", "BDAT 18446744073709551615",
        "RSET", "NOOP anything", "HELP", "VRFY root", "EXPN staff", "QUIT", "STARTTLS",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "rcpt to:<lower@case.test>", "MAIL FROM:<a@b.test>   ",
    ]
    for i, line in enumerate(lines):
        write("command", f"line-{i:02}", b"\xff" + line.encode() + b"\r\n")
    write("command", "dialog", b"\xff" + DIALOG)
    write("command", "pipelined", b"\xff" + crlf("EHLO x\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\n"))
    write("command", "nul", b"\xff" + b"MAIL FROM:<a\0@b.test>\r\n")
    write("command", "8bit-verb", b"\xff" + b"M\xc3\xa4IL FROM:<a@b.test>\r\n")
    write("command", "invalid-utf8", b"\xff" + b"MAIL FROM:<\xff\xfe@b.test>\r\n")
    write("command", "bare-lf", b"\xff" + b"NOOP\nQUIT\r\n")
    write("command", "bare-cr", b"\xff" + b"NO\rOP\r\nQUIT\r\n")
    write("command", "http", b"\xff" + crlf("GET / HTTP/1.1\nHost: mx\n\n"))
    write("command", "too-long", b"\x20" + b"NOOP " + b"x" * 60 + b"\r\nQUIT\r\n")
    write("command", "limit-exact", b"\x06" + b"NOOP x\r\nNOOP xy\r\n")
    write("command", "cr-at-end", b"\x04" + b"NOOP\r")


def data_seeds() -> None:
    head = b"\x80\x00\x07"  # limit 512, split seed 7
    write("data_receiver", "message", head + DIALOG.split(b"DATA\r\n", 1)[1])
    write("data_receiver", "empty", head + b".\r\n")
    write("data_receiver", "pipelined", head + b"a\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\n")
    write("data_receiver", "stuffing", head + b"..\r\n...\r\na.\r\n.x\r\n.\r\n")
    write("data_receiver", "nul-8bit", head + b"a\0b\r\n\xc3\xbc\xff\r\n.\r\n")
    write("data_receiver", "too-big", b"\x02\x00\x03" + b"0123456789" * 3 + b"\r\n.\r\n")
    write("data_receiver", "large-limit", b"\xff\x12\x34" + b"line\r\n" * 40 + b".\r\n")
    for name, variant in SMUGGLING.items():
        write("data_receiver", f"smuggle-{name}", head + variant + SMUGGLED.encode() + b".\r\n")


def bdat_seeds() -> None:
    def chunks(limit: int, parts: list[bytes], seed: int = 5) -> bytes:
        return bytes([limit, len(parts)]) + bytes(len(p) for p in parts) + struct.pack(">H", seed) + b"".join(parts)

    write("bdat_receiver", "two-chunks", chunks(200, [b"Subject: x\r\n\r\n", b"body\r\n"]))
    write("bdat_receiver", "crlf-split", chunks(200, [b"a\r", b"\nb\r\n"]))
    write("bdat_receiver", "no-final-crlf", chunks(200, [b"no line end"]))
    write("bdat_receiver", "dots-verbatim", chunks(200, [b"..\r\n.\r\n", b"x\r\n"]))
    write("bdat_receiver", "bare-lf", chunks(200, [b"a\nb\r\n"]))
    write("bdat_receiver", "bare-cr-across", chunks(200, [b"a\r", b"b\r\n"]))
    write("bdat_receiver", "lone-cr-end", chunks(200, [b"a\r\n", b"\r"]))
    write("bdat_receiver", "too-big", chunks(3, [b"abcd\r\n", b"e"]))
    write("bdat_receiver", "empty", chunks(10, [b""]))
    write("bdat_receiver", "huge-announced", bytes([100, 255]) + b"\xff" * 8 + b"abc\r\n")
    write("bdat_receiver", "announced-in-limit", bytes([100, 255]) + struct.pack(">Q", 50) + b"abc\r\n")


def reply_seeds() -> None:
    replies = {
        "greeting": "220 mx.example.net ESMTP Postfix (Debian/GNU)\r\n",
        "ehlo-postfix": "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n"
                        "250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
                        "250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        "ehlo-size-bare": "250-mx\r\n250-SIZE\r\n250 STARTTLS\r\n",
        "queued": "250 2.0.0 Ok: queued as 4Xyz12AbC\r\n",
        "pipelined": "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
        "multiline-enhanced": "550-5.7.1 Relaying denied\r\n550-5.7.1 see https://example.net/\r\n550 5.7.1 go away\r\n",
        "mismatched-enhanced": "451-4.3.0 temporary\r\n451 4.7.1 greylisted\r\n",
        "bare-lf": "250-mx\n250 STARTTLS\n",
        "no-text": "250\r\n",
        "starttls-injection": "220 2.0.0 Ready to start TLS\r\n250 injected\r\n",
        "421": "421 4.3.2 Service shutting down\r\n",
        "code-mismatch": "250-first\r\n251 second\r\n",
        "bad-separator": "250_x\r\n",
        "http": "HTTP/1.1 400 Bad Request\r\n\r\n",
        "partial": "250-mx.example.net\r\n250-PIPE",
        "utf8-and-junk": "554 5.7.1 \xc3\xbcber \xff\r\n",
    }
    for name, text in replies.items():
        data = text.encode("latin-1") if name == "utf8-and-junk" else text.encode()
        write("reply_parse", name, data)
    write("reply_parse", "long-line", b"250 " + b"x" * 4100 + b"\r\n")


SETTINGS_TOML = """[tls.inbound]
mode = "offer"
certificate = "Default Cert"
client_certificate = "none"
trusted_client_ca = []
min_version = "1.2"

[tls.outbound]
mode = "opportunistic"
trusted_ca = ["system"]
client_certificate = ""

[mta]
banner = ""
max_message_size = 52428800
max_recipients = 1000
max_connections = 1000
max_connections_per_client = 50
session_timeout = "300s"
queue_lifetime = "5d"
min_backoff = "5m"
max_backoff = "1h"

[[domain]]
name = "corp.example"
relay = true
next_hop = "[10.0.0.5]:25"
tls = "verify"

[[domain]]
name = "*.corp.example"
relay = false
next_hop = "relay.corp.example:2525"
"""


def settings_seeds() -> None:
    write("settings", "spec-example", b"\x00" + SETTINGS_TOML.encode())
    write("settings", "partial", b"\x00" + b'[tls.inbound]\nmode = "require"\nclient_certificate = "require"\n'
          b'trusted_client_ca = ["Partner CA"]\n')
    write("settings", "bad-key", b"\x00" + b"[mta]\ncolour = 1\n")
    write("settings", "bad-duration", b"\x00" + b'[mta]\nsession_timeout = "5 minutes"\n')
    write("settings", "ipv6-hop", b"\x00" + b'[[domain]]\nname = "v6.example"\nnext_hop = "[2001:db8::1]:587"\n')
    write("settings", "json", b"\x01" + json.dumps({
        "tls": {"inbound": {"mode": "require", "min_version": "1.3"},
                "outbound": {"mode": "verify", "trusted_ca": ["system", "Partner CA"]}},
        "mta": {"max_message_size": 1000, "banner": "mx ESMTP"},
        "domain": [{"name": "*.example.com", "relay": True, "tls": "require"}],
    }).encode())
    write("settings", "json-bad", b"\x01" + b'{"tls": {"inbound": {"mode": 3}}}')
    keys = ["tls.inbound.mode", "tls.inbound.certificate", "tls.inbound.client_certificate",
            "tls.inbound.trusted_client_ca", "tls.inbound.min_version", "tls.outbound.mode",
            "tls.outbound.trusted_ca", "tls.outbound.client_certificate", "mta.banner",
            "mta.max_message_size", "mta.max_recipients", "mta.max_connections",
            "mta.max_connections_per_client", "mta.session_timeout", "mta.queue_lifetime",
            "mta.min_backoff", "mta.max_backoff"]
    values = ["require", "Default Cert", "request", '["A CA","B, Inc CA"]', "1.3", "verify",
              "system, Partner CA", "", "mx.example ESMTP", "1000", "5", "10", "2", "30s", "5d",
              "5m", "1h"]
    for key, value in zip(keys, values):
        write("settings", f"set-{key}", b"\x03" + f"{key}={value}".encode())
    for i in range(0, 18, 3):
        write("settings", f"set-index-{i}", bytes([2, i]) + b"1h")
    write("settings", "set-unknown", b"\x03tls.inbound.colour=red")
    write("settings", "set-negative", b"\x03mta.max_recipients=-3")


NODE_TOML = """hostname = "mx.example.test"
data_dir = "/var/lib/postern"
store = "sqlite"
user = "postern"

[smtp]
listen = ["127.0.0.1:2525", "[::1]:2525"]
listen_implicit_tls = ["127.0.0.1:4650"]
trusted_networks = ["127.0.0.0/8", "::1/128"]
shutdown_grace = "10s"

[delivery]
mx_port = 2526
paused = false

[dns]
nameservers = ["127.0.0.1:5353"]

[admin]
listen = "127.0.0.1:8025"
"""


def node_seeds() -> None:
    write("node_config", "spec-example", NODE_TOML)
    write("node_config", "empty", "")
    write("node_config", "relative-data-dir", 'data_dir = "data"\nuser = "root"\n')
    write("node_config", "bad-listen", '[smtp]\nlisten = ["nonsense"]\n')
    write("node_config", "no-listeners", "[smtp]\nlisten = []\n")
    write("node_config", "bad-hostname", 'hostname = "mx example"\n')
    write("node_config", "bad-store", 'store = "mysql://x"\n')
    write("node_config", "bad-user", 'user = ""\n')
    write("node_config", "mx-port-zero", "[delivery]\nmx_port = 0\n")


def session_seeds() -> None:
    seed = b"\x00\x40"  # reads of up to 64+1 bytes
    # flags: bits 0-1 settings (offer, none, require, require+cert), 2 trusted
    # client, 3 implicit TLS, 4 handshake fails, 5-6 client cert, 7 store fails
    trusted, stranger = 0x04, 0x00
    write("session", "plain-dialog", bytes([trusted]) + seed + DIALOG)
    write("session", "stranger-relay", bytes([stranger]) + seed + DIALOG)
    write("session", "stranger-denied", bytes([stranger]) + seed + crlf(
        "EHLO x\nMAIL FROM:<a@b.test>\nRCPT TO:<c@elsewhere.test>\nDATA\nx\n.\nQUIT\n"))
    starttls = crlf("EHLO x\nSTARTTLS\n") + b"MAIL FROM:<injected@evil.test>\r\nRCPT TO:<x@relay.test>\r\n"
    write("session", "starttls-injection", bytes([trusted]) + seed + starttls)
    write("session", "starttls-then-mail", bytes([0x02 | trusted]) + b"\x00\x00" + crlf(
        "EHLO x\nSTARTTLS\n") + DIALOG)
    write("session", "require-without-tls", bytes([0x02 | trusted]) + seed + DIALOG)
    write("session", "require-cert-unverified", bytes([0x03 | trusted | 0x08 | 0x40]) + seed + DIALOG)
    write("session", "require-cert-verified", bytes([0x03 | trusted | 0x08 | 0x20]) + seed + DIALOG)
    write("session", "implicit-tls", bytes([trusted | 0x08]) + seed + DIALOG)
    write("session", "store-fails", bytes([trusted | 0x80]) + seed + DIALOG)
    write("session", "bdat", bytes([trusted]) + seed + crlf(
        "EHLO x\nMAIL FROM:<a@b.test> BODY=BINARYMIME\nRCPT TO:<c@d.test>\n") +
        b"BDAT 5\r\nab\r\nBDAT 4 LAST\r\ncd\r\nQUIT\r\n")
    write("session", "bdat-without-mail", bytes([trusted]) + seed + b"EHLO x\r\nBDAT 3 LAST\r\nabcQUIT\r\n")
    write("session", "too-big", bytes([trusted]) + seed + crlf(
        "EHLO x\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\n") + b"x" * 2100 + b"\r\n.\r\nQUIT\r\n")
    for name, variant in SMUGGLING.items():
        dialog = crlf("EHLO x\nMAIL FROM:<a@b.test>\nRCPT TO:<c@relay.test>\nDATA\n") + variant + \
            SMUGGLED.encode() + b".\r\nQUIT\r\n"
        write("session", f"smuggle-{name}", bytes([stranger]) + seed + dialog)
    write("session", "http", bytes([stranger]) + seed + crlf("GET / HTTP/1.1\nHost: mx\n\n"))
    write("session", "errors", bytes([stranger]) + seed + b"FOO\r\n" * 12)
    write("session", "noop-flood", bytes([stranger]) + seed + b"NOOP\r\n" * 120)
    write("session", "auth", bytes([stranger]) + seed + crlf("EHLO x\nAUTH PLAIN AGFAYgBj\nQUIT\n"))
    write("session", "nul-8bit", bytes([stranger]) + seed + b"EHLO x\r\nMAIL FROM:<a\0b@c>\r\n"
          b"MAIL FROM:<\xc3\xbc@b.test> SMTPUTF8\r\nQUIT\r\n")
    write("session", "too-many-recipients", bytes([trusted]) + seed + crlf(
        "EHLO x\nMAIL FROM:<a@b.test>\n" + "".join(f"RCPT TO:<r{i}@d.test>\n" for i in range(7)) +
        "DATA\nx\n.\n"))
    write("session", "long-line", bytes([trusted]) + seed + b"EHLO " + b"x" * 5000 + b"\r\nQUIT\r\n")


def dns_seeds() -> None:
    for i, hop in enumerate(["[10.0.0.5]:25", "relay.corp.example:2525", "[2001:db8::1]:587",
                             "mx.example.com", "Relay.Corp.Example.", "10.0.0.5:25", "[10.0.0.5]",
                             "host:0", "host:99999", "[::1", "a..b", "-bad.example", "x" * 64 + ".example"]):
        write("dns_derived", f"next-hop-{i:02}", b"\x00" + hop.encode())
    for i, (pattern, domain) in enumerate([
        ("*.corp.example", "a.corp.example"), ("*.corp.example", "corp.example"),
        ("*.corp.example", "b.a.corp.example"), ("corp.example", "CORP.example."),
        ("Corp.Example.", "corp.example"), ("*.x", "x"), ("*", "anything"), ("*.ü.example", "a.ü.example"),
    ]):
        write("dns_derived", f"pattern-{i:02}", b"\x01" + f"{pattern}\0{domain}".encode())
    for i, host in enumerate(["mx1.example.com.", "[192.0.2.1]", "2001:db8::1", "xn--bcher-kva.example",
                              "mx_1.example", "under score.example", "bücher.example", "a" * 300]):
        write("dns_derived", f"mx-host-{i:02}", b"\x02" + host.encode())


# ---------------------------------------------------------------------------
# PEM files
# ---------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def pem_seeds() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        subj = ["-subj", "/CN=mx.postern.test", "-addext", "subjectAltName=DNS:mx.postern.test,IP:127.0.0.1"]
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-out", "rsa.crt",
                "-days", "30", *subj, cwd=t)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key", cwd=t)
        openssl("req", "-x509", "-key", "ec.key", "-out", "ec.crt", "-days", "30", *subj, cwd=t)
        openssl("genpkey", "-algorithm", "ed25519", "-out", "ed.key", cwd=t)
        openssl("req", "-x509", "-key", "ed.key", "-out", "ed.crt", "-days", "30", *subj, cwd=t)
        openssl("ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "ca.key", cwd=t)
        openssl("req", "-x509", "-key", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=Postern Test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=t)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key", cwd=t)
        openssl("req", "-new", "-key", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=client.postern.test", cwd=t)
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "leaf.crt", "-days", "30", cwd=t)
        openssl("pkey", "-in", "ec.key", "-out", "ec-pkcs8.key", cwd=t)
        openssl("rsa", "-in", "rsa.key", "-traditional", "-out", "rsa-pkcs1.key", cwd=t)
        openssl("pkey", "-in", "ec.key", "-aes256", "-passout", "pass:x", "-out", "ec-enc.key", cwd=t)
        r = lambda name: (t / name).read_bytes()
        write("pem_import", "rsa-with-key", r("rsa.crt") + b"\0" + r("rsa.key"))
        write("pem_import", "rsa-pkcs1-key", r("rsa.crt") + b"\0" + r("rsa-pkcs1.key"))
        write("pem_import", "ecdsa-sec1-key", r("ec.crt") + b"\0" + r("ec.key"))
        write("pem_import", "ecdsa-pkcs8-key", r("ec.crt") + b"\0" + r("ec-pkcs8.key"))
        write("pem_import", "ed25519-with-key", r("ed.crt") + b"\0" + r("ed.key"))
        write("pem_import", "chain-with-key", r("leaf.crt") + r("ca.crt") + b"\0" + r("leaf.key"))
        write("pem_import", "ca-only", r("ca.crt"))
        write("pem_import", "ca-bundle", r("ca.crt") + r("rsa.crt"))
        write("pem_import", "mismatched-key", r("rsa.crt") + b"\0" + r("ec.key"))
        write("pem_import", "encrypted-key", r("ec.crt") + b"\0" + r("ec-enc.key"))
        write("pem_import", "key-in-chain-file", r("ec.crt") + r("ec.key"))
        write("pem_import", "two-keys", r("ec.crt") + b"\0" + r("ec.key") + r("leaf.key"))
        write("pem_import", "key-only", b"\0" + r("ec.key"))
        write("pem_import", "bad-base64", b"-----BEGIN CERTIFICATE-----\n!!!notbase64\n-----END CERTIFICATE-----\n")
        write("pem_import", "unterminated", r("ec.crt")[:-30])
        write("pem_import", "der-garbage", b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n")


# ---------------------------------------------------------------------------
# Spool files
# ---------------------------------------------------------------------------

def spool_message(envelope: dict, message: bytes) -> bytes:
    header = b"POSTERN-SPOOL 1\n" + json.dumps(envelope, separators=(",", ":")).encode() + \
        f"\nSIZE {len(message)}\n".encode()
    crc = zlib.crc32(header + message)
    return header + message + f"\nEND {crc:08x}\n".encode()


def spool_state(states: list[dict]) -> bytes:
    body = b"POSTERN-STATE 1\n" + json.dumps(states, separators=(",", ":")).encode() + b"\n"
    return body + f"END {zlib.crc32(body):08x}\n".encode()


def spool_seeds() -> None:
    envelope = {
        "sender": "alice@example.org", "recipients": ["bob@example.net", "carol@example.net"],
        "received_at": 1700000000, "client_addr": "203.0.113.5:51234", "helo": "client.example.org",
        "tls": "TLSv1.3 TLS13_AES_256_GCM_SHA384", "body": "8BITMIME", "smtputf8": False,
        "message_id": "<1@example.org>",
    }
    message = b"From: <alice@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"
    good = spool_message(envelope, message)
    states = [
        {"address": "bob@example.net", "state": "deferred", "attempts": 2, "next_attempt": 1700000600,
         "last_error": "mx.example.net[192.0.2.1]: 451 4.7.1 try later"},
        {"address": "carol@example.net", "state": "delivered", "attempts": 1, "next_attempt": None,
         "last_error": None},
    ]
    state = spool_state(states)

    def seed(state_bytes: bytes, message_file: bytes) -> bytes:
        return struct.pack(">H", len(state_bytes)) + state_bytes + message_file

    write("spool_file", "good-no-state", seed(b"", good))
    write("spool_file", "good-with-state", seed(state, good))
    null_sender = dict(envelope, sender="", tls=None, message_id=None, recipients=["postmaster@example.net"])
    write("spool_file", "null-sender", seed(b"", spool_message(null_sender, b"")))
    write("spool_file", "truncated", seed(b"", good[:-20]))
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x20
    write("spool_file", "bit-flip", seed(b"", bytes(flipped)))
    write("spool_file", "unknown-version", seed(b"", good.replace(b"POSTERN-SPOOL 1", b"POSTERN-SPOOL 2", 1)))
    write("spool_file", "bad-size", seed(b"", good.replace(f"SIZE {len(message)}".encode(), f"SIZE 0{len(message)}".encode(), 1)))
    write("spool_file", "state-mismatch", seed(spool_state(states[:1]), good))
    write("spool_file", "state-damaged", seed(state[:-3], good))
    write("spool_file", "no-recipients", seed(b"", spool_message(dict(envelope, recipients=[]), message)))
    write("spool_file", "empty", seed(b"", b""))


def mta_sts_seeds() -> None:
    write("mta_sts", "enforce-crlf", b"version: STSv1\r\nmode: enforce\r\nmx: mx1.partner.test\r\n"
          b"mx: *.mx.partner.test\r\nmax_age: 86400\r\n")
    write("mta_sts", "testing-lf", "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 604800\nx-ext: 1\n\n")
    write("mta_sts", "none", "version: STSv1\nmode: none\nmax_age: 31557600\n")
    write("mta_sts", "max-age-too-big", "version: STSv1\nmode: enforce\nmax_age: 31557601\nmx: a.test\n")
    write("mta_sts", "txt-records", "v=spf1 -all\nv=STSv1; id=20260101T000000;\n")
    write("mta_sts", "txt-two", "v=STSv1; id=1\nv=STSv1; id=2\n")


def main() -> None:
    command_seeds()
    data_seeds()
    bdat_seeds()
    reply_seeds()
    settings_seeds()
    node_seeds()
    session_seeds()
    dns_seeds()
    pem_seeds()
    spool_seeds()
    mta_sts_seeds()
    total = sum(1 for _ in CORPUS.rglob("*") if _.is_file())
    size = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"{total} seed files, {size} bytes, in {CORPUS}")


if __name__ == "__main__":
    main()
