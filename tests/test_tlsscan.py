"""TLS scanner: testssl.sh (Debian package `testssl.sh`, command `testssl`)
against the inbound STARTTLS listener serving the Default Cert.

The scan covers protocols (-p), cipher categories (-s), forward secrecy
(-f), server defaults and preferences (-S, -P), every cipher per protocol
(-E) and the vulnerability checks (-U); about a minute on loopback. The test
fails on SSLv2/SSLv3/TLS 1.0/TLS 1.1, on NULL, anonymous, export, LOW, RC4,
3DES/IDEA or obsolete CBC suites (in particular CBC with SHA-1), on any
offered suite without forward secrecy or without AEAD, and on any
vulnerability finding above LOW. The summary lines (protocols, categories,
forward secrecy, ciphers) are printed in the run's "postern figures" and
saved beside the gateway as tlsscan-summary.txt; docs/security.md quotes a
real run.

Certificate findings about the self-signed Default Cert (no chain of trust,
no OCSP/CRL, a 10-year validity, the name vs. the scanned IP) are expected
and not failures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

# testssl prints these lines (--color 0); they make the summary.
SUMMARY_LINE = re.compile(
    r"^\s*(SSLv[23]|TLS 1(\.[0-3])?)\s+(not )?offered"       # protocols
    r"|^\s*(NULL ciphers|Anonymous NULL|Export ciphers|LOW:|Triple DES|Obsolete CBC|Strong encryption)"
    r"|^\s*P?FS is offered|^\s*Elliptic curves offered"       # forward secrecy
    r"|^\s{10,}(TLS_|ECDHE-|DHE-)\S+\s*$"                    # ... its cipher list
    r"|^(SSLv[23]|TLS 1(\.[0-3])?)\s*$|^\s*x[0-9a-f]{4}\s"    # -E: every suite per protocol
)


def find_testssl() -> str | None:
    return shutil.which("testssl") or shutil.which("testssl.sh")


def by_id(scan: dict) -> dict[str, list[dict]]:
    """Every finding of every section, by id."""
    found: dict[str, list[dict]] = {}
    for section in scan.values():
        if isinstance(section, list):
            for entry in section:
                if isinstance(entry, dict) and "id" in entry:
                    found.setdefault(entry["id"], []).append(entry)
    return found


def finding(ids: dict[str, list[dict]], key: str) -> str:
    assert key in ids, f"testssl reported no {key!r} (ids: {sorted(ids)})"
    return ids[key][0]["finding"]


def offered_ciphers(ids: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(protocol, OpenSSL name) of every suite -E found, from ids like
    `cipher-tls1_2_xc030` with findings `TLS 1.2  xc030  ECDHE-RSA-... `."""
    suites = []
    for key, entries in ids.items():
        if not key.startswith("cipher-"):
            continue
        for entry in entries:
            words = entry["finding"].split()
            if len(words) >= 4 and re.fullmatch(r"x[0-9a-f]+", words[2]):
                suites.append((f"{words[0]} {words[1]}", words[3]))
    return suites


def suite_problems(name: str) -> list[str]:
    """What is wrong with an offered suite (OpenSSL naming)."""
    problems = []
    upper = name.upper()
    tls13 = upper.startswith("TLS_")
    if "NULL" in upper:
        problems.append("NULL encryption")
    if upper.startswith(("ADH", "AECDH")) or "ANON" in upper:
        problems.append("anonymous")
    if "EXP" in upper.split("-"):
        problems.append("export")
    if "RC4" in upper or "RC2" in upper:
        problems.append("RC4/RC2")
    if "DES" in upper or "IDEA" in upper:
        problems.append("DES/3DES/IDEA")
    aead = any(m in upper for m in ("GCM", "CHACHA20", "CCM"))
    if not aead:
        problems.append("not AEAD (CBC)")
        if upper.endswith("-SHA"):
            problems.append("CBC with SHA-1")
    if not tls13 and not upper.startswith(("ECDHE-", "DHE-")):
        problems.append("no forward secrecy")
    return problems


def test_testssl_starttls_default_cert(make_gateway, report):
    binary = find_testssl()
    if binary is None:
        message = "testssl.sh is not installed (Debian package testssl.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    gw = make_gateway()
    out_json = gw.root / "testssl.json"
    cmd = [
        binary, "--starttls", "smtp", "--quiet", "--color", "0", "--warnings", "off",
        "--nodns", "none", "--connect-timeout", "10", "--openssl-timeout", "10",
        "--jsonfile-pretty", str(out_json),
        "-p", "-s", "-f", "-S", "-P", "-E", "-U",
        f"127.0.0.1:{gw.smtp_port}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=300, cwd=gw.root,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"testssl did not finish within 300 s:\n{(e.stdout or b'').decode()[-3000:]}")
    text = proc.stdout.decode("utf-8", "replace")
    (gw.root / "testssl.txt").write_text(text)
    assert out_json.is_file(), f"testssl wrote no JSON (exit {proc.returncode}):\n{text[-3000:]}\n" \
        f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}"
    data = json.loads(out_json.read_text())
    results = data.get("scanResult") or []
    assert results, f"no scan result in {out_json}:\n{text[-3000:]}"
    ids = by_id(results[0])

    summary = [line.rstrip() for line in text.splitlines() if SUMMARY_LINE.match(line)]
    (gw.root / "tlsscan-summary.txt").write_text("\n".join(summary) + "\n")
    report(f"testssl {data.get('version', '?')} ({data.get('scanTime', '?')} s):\n    "
           + "\n    ".join(summary))

    # The Default Cert was scanned, and its ECDSA P-256 companion beside it
    # (testssl lists each served certificate as <cert#N>).
    keys = sorted(f["finding"] for k, v in ids.items() if k.startswith("cert_keySize") for f in v)
    assert any(k.startswith("RSA 4096") for k in keys), keys
    assert any(k.startswith("EC 256") for k in keys), keys
    sigs = [f["finding"] for k, v in ids.items() if k.startswith("cert_signatureAlgorithm") for f in v]
    assert any("SHA256 with RSA" in s for s in sigs), sigs

    # Protocols: TLS 1.2 and 1.3 only.
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert finding(ids, old).startswith("not offered"), f"{old}: {finding(ids, old)}"
    assert finding(ids, "TLS1_2").startswith("offered"), finding(ids, "TLS1_2")
    assert finding(ids, "TLS1_3").startswith("offered"), finding(ids, "TLS1_3")

    # Cipher categories.
    for weak in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                 "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
        assert finding(ids, weak).startswith("not offered"), f"{weak}: {finding(ids, weak)}"
    assert finding(ids, "cipherlist_STRONG").startswith("offered")

    # Forward secrecy (id "PFS" in testssl 3.0, "FS" in 3.1+).
    fs_id = "FS" if "FS" in ids else "PFS"
    assert finding(ids, fs_id).startswith("offered"), finding(ids, fs_id)
    assert ids[fs_id][0]["severity"] == "OK", ids[fs_id]

    # Every single offered suite (-E).
    suites = offered_ciphers(ids)
    assert suites, f"-E found no cipher suites:\n{text[-3000:]}"
    bad = {f"{proto} {name}": suite_problems(name) for proto, name in suites if suite_problems(name)}
    assert not bad, f"weak cipher suites offered: {bad}"
    assert {proto for proto, _ in suites} <= {"TLS 1.2", "TLS 1.3"}, suites

    # Vulnerability checks: nothing above LOW.
    vulnerable = [
        f"{e['id']}: {e['severity']} {e['finding']}"
        for e in results[0].get("vulnerabilities", [])
        if e.get("severity") not in ("OK", "INFO", "LOW")
    ]
    assert not vulnerable, "\n".join(vulnerable)
