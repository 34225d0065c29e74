"""The command line: certificate table, settings export/import, `check`."""

import json
import re

from postern_testlib import cert_text, fingerprint, openssl, pem_certs, postern_bin, run


def _ok(p):
    assert p.returncode == 0, (p.stdout + p.stderr).decode()


def test_generate_ecdsa_and_rsa(make_gateway):
    gw = make_gateway(start=False)
    gw.cli_ok("cert", "generate", "--name", "EC Test", "--key", "ecdsa-p256",
              "--cn", "ec.postern.test", "--san", "ec.postern.test", "--san", "alt.postern.test")
    assert "EC Test" in gw.cli_ok("cert", "list").stdout

    show = gw.cli_ok("cert", "show", "EC Test").stdout
    assert "ec.postern.test" in show, show
    assert re.search(r"P-256|prime256v1|secp256r1", show, re.I), show
    assert re.search(r"ecdsa", show, re.I), show

    pem = pem_certs(gw.cli_ok("cert", "export", "EC Test").stdout)[0]
    text = cert_text(pem)
    assert "id-ecPublicKey" in text and re.search(r"prime256v1|P-256", text), text
    assert "ecdsa-with-SHA256" in text, text
    assert "DNS:ec.postern.test" in text and "DNS:alt.postern.test" in text, text
    assert re.search(r"Subject: .*CN\s*=\s*ec\.postern\.test", text), text

    gw.cli_ok("cert", "generate", "--name", "RSA Small", "--key", "rsa2048", "--cn", "rsa.postern.test")
    text = cert_text(pem_certs(gw.cli_ok("cert", "export", "RSA Small").stdout)[0])
    assert "Public-Key: (2048 bit)" in text, text
    assert "DNS:rsa.postern.test" in text, text

    # A name that exists is not silently overwritten.
    r = gw.cli("cert", "generate", "--name", "EC Test", "--key", "ecdsa-p384")
    assert r.rc != 0, r
    assert fingerprint(pem_certs(gw.cli_ok("cert", "export", "EC Test").stdout)[0]) == fingerprint(pem)

    # Unused generated certificates can be deleted.
    gw.cli_ok("cert", "delete", "RSA Small")
    assert "RSA Small" not in gw.cli_ok("cert", "list").stdout
    assert gw.cli("cert", "show", "RSA Small").rc != 0
    r = gw.cli("cert", "delete", "No Such Cert")
    assert r.rc != 0 and "No Such Cert" in r.stderr, r


def test_import_with_key(make_gateway, tmp_path):
    gw = make_gateway(start=False)
    key_a, crt_a, key_b = tmp_path / "a.key", tmp_path / "a.pem", tmp_path / "b.key"
    _ok(openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key_a), "-out", str(crt_a), "-subj", "/CN=partner.postern.test",
                "-addext", "subjectAltName=DNS:partner.postern.test", "-days", "10"))
    _ok(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key_b)))

    r = gw.cli("cert", "import", "--name", "Mismatch", "--cert", str(crt_a), "--key", str(key_b))
    assert r.rc != 0, f"imported a key that does not match: {r}"
    assert "does not match" in r.output, r
    assert "Mismatch" not in gw.cli_ok("cert", "list").stdout

    gw.cli_ok("cert", "import", "--name", "Partner", "--cert", str(crt_a), "--key", str(key_a))
    assert "Partner" in gw.cli_ok("cert", "list").stdout
    exported = gw.cli_ok("cert", "export", "Partner").stdout
    assert fingerprint(pem_certs(exported)[0]) == fingerprint(crt_a.read_text())
    assert "PRIVATE KEY" not in exported


def test_import_garbage_refused(make_gateway, tmp_path):
    gw = make_gateway(start=False)
    before = gw.cli_ok("cert", "list").stdout
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n")
    for i, f in enumerate((garbage, broken, tmp_path / "missing.pem")):
        r = gw.cli("cert", "import", "--name", f"Bad {i}", "--cert", str(f))
        assert r.rc != 0, f"imported {f.name}: {r}"
        assert r.stderr.strip(), f"no message on stderr: {r}"
        assert "panicked" not in r.stderr, r
    assert gw.cli_ok("cert", "list").stdout == before


def test_default_cert_in_use_cannot_be_deleted(make_gateway):
    gw = make_gateway(start=False)
    r = gw.cli("cert", "delete", "Default Cert")
    assert r.rc != 0, f"deleted the certificate in use: {r}"
    assert "tls.inbound.certificate" in r.output, r
    assert "Default Cert" in gw.cli_ok("cert", "list").stdout
    assert pem_certs(gw.cli_ok("cert", "export", "Default Cert").stdout)


def test_settings_export_import_round_trip(make_gateway, tmp_path):
    gw = make_gateway(start=False)
    domains = tmp_path / "domains.toml"
    domains.write_text('[[domain]]\nname = "corp.test"\nrelay = true\nnext_hop = "[127.0.0.1]:2526"\n'
                       'tls = "verify"\n\n[[domain]]\nname = "*.partner.test"\ntls = "require"\n')
    gw.cli_ok("settings", "import", str(domains))
    gw.set("mta.max_recipients", "7")
    gw.set("tls.inbound.mode", "require")
    gw.set("mta.session_timeout", "45s")

    exported = gw.cli_ok("settings", "export", "--format", "toml").stdout
    assert re.search(r"max_recipients\s*=\s*7\b", exported), exported
    assert "corp.test" in exported and "*.partner.test" in exported, exported
    saved = tmp_path / "saved.toml"
    saved.write_text(exported)

    js = json.loads(gw.cli_ok("settings", "export", "--format", "json").stdout)
    assert js["mta"]["max_recipients"] == 7, js
    assert js["tls"]["inbound"]["mode"] == "require", js
    assert js["mta"]["session_timeout"] in ("45s", 45), js
    names = [d["name"] for d in js["domain"]]
    assert names == ["corp.test", "*.partner.test"], js
    saved_json = tmp_path / "saved.json"
    saved_json.write_text(json.dumps(js))

    # Change things, then import the TOML export: back to the saved state.
    gw.set("mta.max_recipients", "9")
    gw.cli_ok("settings", "import", str(saved))
    assert gw.cli_ok("settings", "export", "--format", "toml").stdout == exported

    # Import replaces: an import without [[domain]] removes the domains.
    plain = tmp_path / "plain.toml"
    plain.write_text("[mta]\nmax_recipients = 11\n")
    gw.cli_ok("settings", "import", str(plain))
    after = gw.cli_ok("settings", "export", "--format", "toml").stdout
    assert "corp.test" not in after and re.search(r"max_recipients\s*=\s*11\b", after), after
    assert re.search(r'mode\s*=\s*"offer"', after), f"import did not replace (mode kept?): {after}"

    # JSON import restores the same state.
    gw.cli_ok("settings", "import", str(saved_json))
    assert gw.cli_ok("settings", "export", "--format", "toml").stdout == exported


def test_settings_import_invalid_changes_nothing(make_gateway, tmp_path):
    gw = make_gateway(start=False)
    gw.set("mta.max_recipients", "5")
    before = gw.cli_ok("settings", "show").stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[tls.inbound]\nmode = "sometimes"\n[mta]\nmax_recipients = 99\n')
    r = gw.cli("settings", "import", str(bad))
    assert r.rc != 0, r
    assert "tls.inbound.mode" in r.stderr, r
    bad_domain = tmp_path / "bad_domain.toml"
    bad_domain.write_text('[[domain]]\nname = "not a domain!"\nrelay = true\n')
    r = gw.cli("settings", "import", str(bad_domain))
    assert r.rc != 0, r
    assert "domain" in r.stderr and "name" in r.stderr, r
    assert gw.cli_ok("settings", "show").stdout == before


def test_unknown_setting_key_refused(make_gateway):
    gw = make_gateway(start=False)
    before = gw.cli_ok("settings", "show").stdout
    r = gw.cli("settings", "set", "tls.inbound.colour", "red")
    assert r.rc != 0, r
    assert "tls.inbound.colour" in r.stderr, r
    assert "tls.inbound.mode" in r.stderr, f"known keys not listed: {r}"
    r = gw.cli("settings", "set", "domain", "x")
    assert r.rc != 0, r
    assert gw.cli_ok("settings", "show").stdout == before


def test_check(make_gateway, tmp_path):
    gw = make_gateway(start=False)
    r = gw.cli("check")
    assert r.rc == 0, r

    bad = tmp_path / "bad.toml"
    bad.write_text('data_dir = "data"\n[smtp]\nlisten = ["nonsense"]\n')
    p = run([str(postern_bin()), "--config", str(bad), "check"], timeout=60, cwd=tmp_path)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0, out
    assert "smtp.listen" in out, out

    unknown = tmp_path / "unknown.toml"
    unknown.write_text('data_dir = "data"\ncolour = "blue"\n')
    p = run([str(postern_bin()), "check", "--config", str(unknown)], timeout=60, cwd=tmp_path)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0, out
    assert "colour" in out, out

    # `run` refuses the same bad file instead of starting.
    p = run([str(postern_bin()), "--config", str(bad), "run"], timeout=30, cwd=tmp_path)
    assert p.returncode != 0
    assert "smtp.listen" in (p.stdout + p.stderr).decode()


def test_config_option_after_subcommand(make_gateway):
    gw = make_gateway(start=False)
    gw.set("mta.max_recipients", "23")
    p = run([str(postern_bin()), "settings", "show", "--config", str(gw.config)], timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    assert "23" in p.stdout.decode()


def test_queue_list_empty(make_gateway):
    gw = make_gateway(start=False)
    assert gw.queue() == []


def test_generate_options(make_gateway):
    gw = make_gateway(start=False)
    gw.cli_ok("cert", "generate", "--name", "P384", "--key", "ecdsa-p384", "--cn", "p384.postern.test")
    text = cert_text(pem_certs(gw.cli_ok("cert", "export", "P384").stdout)[0])
    assert re.search(r"secp384r1|P-384", text), text
    assert "DNS:p384.postern.test" in text, text
    r = gw.cli("cert", "generate", "--name", "Weak", "--key", "rsa1024")
    assert r.rc != 0, f"rsa1024 accepted: {r}"
    assert "Weak" not in gw.cli_ok("cert", "list").stdout


def test_import_chain_and_serve(make_gateway, tmp_path):
    """A CA-issued chain (leaf + CA) with a SEC1 ("EC PRIVATE KEY") key:
    imported, exported as a chain, and served whole once selected."""
    from postern_testlib import HOSTNAME, s_client
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    _ok(openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=Chain Test CA", "-days", "10",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"))
    key8, csr, leaf, ext = (tmp_path / n for n in ("leaf.key", "leaf.csr", "leaf.pem", "leaf.ext"))
    _ok(openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key8), "-out", str(csr), "-subj", f"/CN={HOSTNAME}"))
    ext.write_text(f"subjectAltName=DNS:{HOSTNAME}\nextendedKeyUsage=serverAuth\n")
    _ok(openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(leaf), "-days", "10", "-extfile", str(ext)))
    sec1 = tmp_path / "leaf-sec1.key"
    _ok(openssl("ec", "-in", str(key8), "-out", str(sec1)))
    assert "BEGIN EC PRIVATE KEY" in sec1.read_text()
    chain = tmp_path / "chain.pem"
    chain.write_text(leaf.read_text() + ca.read_text())

    gw = make_gateway(start=False)
    gw.cli_ok("cert", "import", "--name", "Issued", "--cert", str(chain), "--key", str(sec1))
    exported = pem_certs(gw.cli_ok("cert", "export", "Issued").stdout)
    assert [fingerprint(c) for c in exported] == [fingerprint(leaf.read_text()),
                                                   fingerprint(ca.read_text())], exported
    gw.set("tls.inbound.certificate", "Issued")
    gw.start()
    rc, out = s_client(gw.smtp_port, "-CAfile", str(ca), "-verify_return_error",
                       "-verify_hostname", HOSTNAME)
    served = pem_certs(out)
    assert len(served) == 2, f"chain not served whole:\n{out}"
    assert fingerprint(served[0]) == fingerprint(leaf.read_text())
    assert "Verify return code: 0 (ok)" in out, out


def test_import_rsa_pkcs1_key(make_gateway, tmp_path):
    key, crt, pkcs1 = tmp_path / "r.key", tmp_path / "r.pem", tmp_path / "r-pkcs1.key"
    _ok(openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                "-subj", "/CN=rsa-import.postern.test", "-days", "10"))
    _ok(openssl("rsa", "-in", str(key), "-out", str(pkcs1), "-traditional"))
    assert "BEGIN RSA PRIVATE KEY" in pkcs1.read_text()
    gw = make_gateway(start=False)
    gw.cli_ok("cert", "import", "--name", "RSA PKCS1", "--cert", str(crt), "--key", str(pkcs1))
    show = gw.cli_ok("cert", "show", "RSA PKCS1").stdout
    assert "2048" in show and "rsa-import.postern.test" in show, show


def _check(config, cwd) -> tuple[int, str]:
    p = run([str(postern_bin()), "--config", str(config), "check"], timeout=60, cwd=cwd)
    return p.returncode, (p.stdout + p.stderr).decode()


def test_check_points_at_a_toml_syntax_error(tmp_path):
    """issue 10 item 3: an unclosed array on line 4 is reported at line 4 with
    its key, not where the parser noticed it (line 5, column 1)."""
    conf = tmp_path / "postern.toml"
    conf.write_text('hostname = "mx.example.test"\ndata_dir = "data"\n[smtp]\n'
                    'listen = ["127.0.0.1:25"\ntrusted_networks = ["127.0.0.0/8"]\n')
    rc, out = _check(conf, tmp_path)
    assert rc != 0, out
    first = out.strip().splitlines()[0]
    assert str(conf) in first and "smtp.listen" in first, out
    assert re.search(r"\bline 4\b", first), out
    assert "line 5, column 1:" not in first, out
    assert "TOML syntax error" in first, out

    # A wrong value still names the key and the allowed values.
    conf.write_text('data_dir = "data"\nstore = "mysql"\n')
    rc, out = _check(conf, tmp_path)
    assert rc != 0 and "store" in out and '"sqlite"' in out, out


def test_settings_import_points_at_a_toml_syntax_error(make_gateway, tmp_path):
    """The same helper serves `settings import`: the line of the faulty
    construct and its key; nothing changes."""
    gw = make_gateway(start=False)
    before = gw.cli_ok("settings", "show").stdout
    bad = tmp_path / "s.toml"
    bad.write_text('[mta]\nmax_recipients = 10\n\n[tls.outbound]\ntrusted_ca = ["system",\n'
                   '  "Partner CA"\nmode = "verify"\n')
    r = gw.cli("settings", "import", str(bad))
    assert r.rc != 0, r
    assert "tls.outbound.trusted_ca" in r.stderr and re.search(r"\bline 5\b", r.stderr), r
    assert "nothing was changed" in r.stderr, r
    assert gw.cli_ok("settings", "show").stdout == before


def _listing(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else None


def test_check_changes_nothing(tmp_path):
    """issue 16 item 6: `check` only reads. A failing check (unknown user, a
    10,000-character hostname, an empty data_dir) leaves the data directory
    as it was (here: absent), each error names its key; a passing check on a
    fresh config says the store would be created and creates nothing; on an
    existing store it opens it read-only (no -wal/-shm left behind)."""
    data = tmp_path / "data"
    conf = tmp_path / "postern.toml"
    long_name = "a" * 10_000
    cases = [
        ('data_dir = "data"\nuser = "nosuchuser"\n', "user:", "nosuchuser"),
        (f'data_dir = "data"\nhostname = "{long_name}"\n', "hostname:", "not a host name"),
        ('data_dir = "data"\nhostname = "mx.example.test"\nuser = "-x"\n', "user:", "not a user name"),
        ('data_dir = ""\n', "data_dir:", "is empty"),
    ]
    for text, key, why in cases:
        conf.write_text(text)
        rc, out = _check(conf, tmp_path)
        assert rc != 0, out
        assert key in out and why in out, out
        assert "certificate name" not in out, out
        assert len(out) < 1000, f"the error quotes too much: {out[:300]}"
        assert _listing(data) is None, f"check created {_listing(data)} for {text[:60]!r}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["postern.toml"], list(tmp_path.iterdir())

    conf.write_text('data_dir = "data"\nhostname = "mx.example.test"\nuser = "root"\n')
    rc, out = _check(conf, tmp_path)
    assert rc == 0, out
    assert "does not exist yet" in out and "mx.example.test" in out, out
    assert _listing(data) is None, _listing(data)

    # Once the store exists (any other command creates it), check reads it
    # read-only and leaves every file as it was.
    p = run([str(postern_bin()), "--config", str(conf), "settings", "show"], timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    before = {f: (data / f).stat().st_mtime_ns for f in _listing(data)}
    assert "postern.db" in before, before
    rc, out = _check(conf, tmp_path)
    assert rc == 0 and "config and settings are valid" in out, out
    assert {f: (data / f).stat().st_mtime_ns for f in _listing(data)} == before


def test_check_refuses_an_open_relay(tmp_path):
    """issue 16 item 4 (part): trusted_networks covering the whole internet
    is refused with the reason, unless smtp.allow_open_relay = true."""
    conf = tmp_path / "postern.toml"
    for nets in ('["0.0.0.0/0"]', '["127.0.0.0/8", "::/0"]'):
        conf.write_text(f'data_dir = "data"\nuser = "root"\n[smtp]\ntrusted_networks = {nets}\n')
        rc, out = _check(conf, tmp_path)
        assert rc != 0, out
        assert "smtp.trusted_networks" in out and "open relay" in out, out
        assert "smtp.allow_open_relay = true" in out, out
        # `run` refuses it the same way instead of starting.
        p = run([str(postern_bin()), "--config", str(conf), "run"], timeout=30, cwd=tmp_path)
        assert p.returncode != 0 and "open relay" in (p.stdout + p.stderr).decode()
        conf.write_text(f'data_dir = "data"\nuser = "root"\n[smtp]\ntrusted_networks = {nets}\n'
                        'allow_open_relay = true\n')
        rc, out = _check(conf, tmp_path)
        assert rc == 0, out
    conf.write_text('data_dir = "data"\nuser = "root"\n[smtp]\n'
                    'trusted_networks = ["10.0.0.0/8", "fc00::/7"]\n')
    rc, out = _check(conf, tmp_path)
    assert rc == 0, out
