"""The admin UI in a real browser: Debian's headless Chromium driven by
playwright-core (tests/browser/admin_browser.mjs), one scenario per test.
What the browser did is then checked from outside: over SMTP (smtplib),
with `openssl s_client`, and through the API.

Needs `chromium` (Debian) and `npm ci` in tests/browser (scripts/test.sh);
without them these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from admin_client import PASSWORD, Admin, new_token, start_with_password
from postern_testlib import (HOSTNAME, fingerprint, insecure_context, make_message, pem_certs,
                             s_client)

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is missing (npm ci in tests/browser)"
    return None


# Under CI (scripts/test.sh installs everything) a missing browser fails.
if _missing() is not None and os.environ.get("CI"):
    raise RuntimeError(f"browser tests cannot run: {_missing()}")
pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


class Scenario:
    """One run of the Node script; its JSON events arrive as they happen."""

    def __init__(self, gw, name: str, tmp_path: Path, talk: bool = False, **env: str):
        shots = tmp_path / "screenshots"
        shots.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["node", str(BROWSER_DIR / "admin_browser.mjs"), name],
            cwd=BROWSER_DIR, stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "POSTERN_ADMIN_URL": f"https://127.0.0.1:{gw.admin_port}",
                 "POSTERN_ADMIN_PASSWORD": PASSWORD, "POSTERN_SCREENSHOTS": str(shots),
                 "CHROMIUM": CHROMIUM, **env})
        self.name = name
        self.events: list[dict] = []
        self.launch_seconds: float | None = None
        self._cond = threading.Condition()
        self._stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "launched":
                # How long Chromium took to start; kept out of the scenario's events.
                self.launch_seconds = event.get("seconds")
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, line: str) -> None:
        """Tell the script a step outside the browser is done."""
        assert self.proc.stdin is not None, "scenario started without talk=True"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _read_err(self):
        self._stderr = self.proc.stderr.read()

    # Bounds for a stuck run, not for speed: above the script's own limits
    # (60 s to start Chromium, 15 s per step), so that the script reports
    # where it stood before it is stopped.
    def wait_event(self, name: str, timeout: float = 150) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event["event"] == name:
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._cond.wait(0.2)):
                    break
                self._cond.wait(min(left, 0.5))
        self.finish(check=False)
        raise AssertionError(f"scenario {self.name}: no {name!r} event; events {self.events}\n"
                             f"stderr:\n{self._stderr}")

    def finish(self, check: bool = True, timeout: float = 150) -> list[dict]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the script then says which step it was in.
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        time.sleep(0.05)
        if check:
            assert self.proc.returncode == 0, (
                f"scenario {self.name} failed ({self.proc.returncode}; Chromium started in "
                f"{self.launch_seconds} s):\n{self._stderr}\nevents: {self.events}")
            assert any(e["event"] == "done" for e in self.events), self.events
        return self.events


def run(gw, name: str, tmp_path: Path, **env: str) -> list[dict]:
    return Scenario(gw, name, tmp_path, **env).finish()


@pytest.fixture
def admin_gw(make_gateway):
    return start_with_password(make_gateway(start=False))


def test_login_and_navigation(admin_gw, tmp_path, report):
    scenario = Scenario(admin_gw, "login", tmp_path)
    started = time.monotonic()
    events = scenario.finish()
    report(f"Chromium started in {scenario.launch_seconds} s; the login scenario took "
           f"{time.monotonic() - started:.1f} s")
    assert [e["event"] for e in events] == ["logged-in", "logged-out", "done"], events
    assert events[0]["title"] == "Dashboard — Postern"


def test_login_right_after_passwd_stays_logged_in(admin_gw, tmp_path):
    new_password = "a brand new admin password"
    # An older session, opened with the old password over the API.
    older = Admin(admin_gw)
    assert older.login().status == 200
    assert older.get("/api/v1/session").status == 200
    scenario = Scenario(admin_gw, "relogin-after-passwd", tmp_path, talk=True,
                        NEW_PASSWORD=new_password)
    scenario.wait_event("ready")
    admin_gw.cli_ok("admin", "passwd", "--password-stdin", input=(new_password + "\n").encode())
    scenario.send("changed")
    scenario.wait_event("logged-in-again")
    still = scenario.wait_event("still-logged-in")
    assert still["path"] == "/settings/tls", still
    scenario.finish()
    # The session opened before the change has ended (the gateway checks
    # every 2 s; the browser waited longer than that).
    deadline = time.monotonic() + 10
    while older.get("/api/v1/session").status != 401:
        assert time.monotonic() < deadline, "a session of the old password is still alive"
        time.sleep(0.2)
    assert "ended 1 admin session(s) opened with an older password" in admin_gw.stderr(), \
        admin_gw.stderr()[-2000:]


def test_require_tls_in_the_browser_reaches_smtp_within_two_seconds(admin_gw, tmp_path):
    with smtplib.SMTP("127.0.0.1", admin_gw.smtp_port, timeout=10) as s:
        s.ehlo()
        assert s.mail("c@d.test")[0] == 250  # offer: plaintext accepted
    scenario = Scenario(admin_gw, "tls-require", tmp_path)
    saved = scenario.wait_event("saved")
    start = time.monotonic()
    assert saved["mode"] == "require"
    while True:
        with smtplib.SMTP("127.0.0.1", admin_gw.smtp_port, timeout=5) as s:
            s.ehlo()
            code, text = s.mail("c@d.test")
        if code == 530:
            break
        assert time.monotonic() - start < 2.0, f"MAIL still {code} {text!r} after 2 s"
        time.sleep(0.05)
    took = time.monotonic() - start
    assert text.decode() == "5.7.0 Must issue a STARTTLS command first"
    # After STARTTLS mail is accepted.
    with smtplib.SMTP("127.0.0.1", admin_gw.smtp_port, timeout=10) as s:
        s.starttls(context=insecure_context())
        s.ehlo()
        assert s.mail("c@d.test")[0] == 250
    scenario.finish()
    print(f"530 after {took:.2f}s")


def _greeting(gw) -> str:
    s = smtplib.SMTP(timeout=5)
    try:
        code, text = s.connect("127.0.0.1", gw.smtp_port)
    finally:
        s.close()
    assert code == 220, (code, text)
    return text.decode()


def test_advanced_mta_settings_in_the_browser(admin_gw, tmp_path):
    """Settings → Integrated MTA → Advanced: a new banner is in the SMTP
    greeting within 2 s; a per-client limit above the total is refused
    next to its field, naming it, and nothing changes."""
    banner = "mx.browser.test ESMTP ready"
    assert _greeting(admin_gw) == "mx.postern.test ESMTP Postern"
    scenario = Scenario(admin_gw, "advanced", tmp_path, BANNER=banner)
    saved = scenario.wait_event("saved")
    assert saved["banner"] == banner
    start = time.monotonic()
    while (seen := _greeting(admin_gw)) != banner:
        assert time.monotonic() - start < 2.0, f"greeting still {seen!r} after 2 s"
        time.sleep(0.05)
    took = time.monotonic() - start
    before = admin_gw.cli_ok("settings", "export").stdout
    refused = scenario.wait_event("refused")
    assert "mta.max_connections_per_client" in refused["text"], refused
    assert "mta.max_connections (1000)" in refused["text"], refused
    scenario.finish()
    assert admin_gw.cli_ok("settings", "export").stdout == before, "the refused form changed settings"
    assert _greeting(admin_gw) == banner
    settings = json.loads(admin_gw.cli_ok("settings", "show", "--format", "json").stdout)
    assert settings["mta"]["max_connections_per_client"] == 50
    print(f"banner in the greeting after {took:.2f}s")


def test_generated_certificate_selected_in_the_browser_is_served(admin_gw, tmp_path):
    before = pem_certs(s_client(admin_gw.smtp_port)[1])
    assert before, "no certificate seen before"
    scenario = Scenario(admin_gw, "cert-select", tmp_path, CERT_NAME="Browser ECDSA")
    saved = scenario.wait_event("saved")
    want = saved["fingerprint"].replace(":", "").lower()
    assert fingerprint(before[0]) != want
    deadline = time.monotonic() + 5
    while True:
        rc, out = s_client(admin_gw.smtp_port)
        certs = pem_certs(out)
        if certs and fingerprint(certs[0]) == want:
            break
        assert time.monotonic() < deadline, f"s_client still sees {certs[:1]}\n{out[-2000:]}"
        time.sleep(0.2)
    assert "ECDSA" in out or "id-ecPublicKey" in out or "EC" in out, out[-2000:]
    events = scenario.finish()
    assert any(e["event"] == "delete-refused" for e in events), events
    # The admin listener follows the inbound certificate too (it reloads
    # every second).
    deadline = time.monotonic() + 5
    while True:
        rc, out = s_client(admin_gw.admin_port, starttls=False)
        certs = pem_certs(out)
        if certs and fingerprint(certs[0]) == want:
            break
        assert time.monotonic() < deadline, out[-2000:]
        time.sleep(0.2)


def test_domain_with_verify_mode_added_in_the_browser(admin_gw, tmp_path):
    events = run(admin_gw, "domain-verify", tmp_path, DOMAIN="secure.example",
                 NEXT_HOP="[127.0.0.1]:2525")
    listed = [e for e in events if e["event"] == "listed"][0]
    assert listed["mode"] == "Require TLS and verify certificate"
    settings = json.loads(admin_gw.cli_ok("settings", "show", "--format", "json").stdout)
    assert settings["domain"] == [{"name": "secure.example", "relay": True,
                                   "next_hop": "[127.0.0.1]:2525", "tls": "verify"}]


def test_delivered_message_found_in_tracking_with_tls_details(make_gateway, make_peer, tmp_path):
    peer = make_peer(starttls="ok", hostname="mx.downstream.test")
    gw = start_with_password(make_gateway(start=False, paused=False))
    api = Admin(gw, token=new_token(gw))
    r = api.send_json("POST", "/api/v1/domains",
                      {"name": "downstream.example", "next_hop": f"[{peer.host}]:{peer.port}",
                       "tls": "require"})
    assert r.status == 201, r
    time.sleep(1.2)  # the gateway reloads within a second
    token = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as s:
        s.starttls(context=insecure_context())
        s.ehlo("sender.client.test")
        s.sendmail("alice@example.test", ["bob@downstream.example"],
                   make_message(token, "alice@example.test", "bob@downstream.example"))
    peer.wait_for_messages(1, timeout=20)
    message_id = f"<{token}@client.postern.test>"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = api.get(f"/api/v1/messages/{token}%40client.postern.test")
        if found.status == 200 and found.json()[0]["status"] == "delivered":
            break
        time.sleep(0.2)
    detail = found.json()[0]
    assert detail["status"] == "delivered", detail

    events = run(gw, "tracking", tmp_path, MESSAGE_ID=message_id)
    shown = [e for e in events if e["event"] == "detail"][0]
    assert shown["status"] == "delivered", shown
    hops = shown["hops"]
    assert len(hops) == 2, hops
    inbound, outbound = hops
    assert inbound["title"].startswith("Received from 127.0.0.1:"), inbound
    assert inbound["tls_version"] == detail["hops"][0]["tls_version"]
    assert inbound["tls_version"].startswith("TLSv1."), inbound
    assert inbound["cipher"] == detail["hops"][0]["cipher"] and inbound["cipher"].startswith("TLS"), inbound
    assert inbound["verification"] == "no client certificate"
    assert outbound["title"].startswith(f"Delivery attempt to 127.0.0.1:{peer.port}"), outbound
    assert outbound["tls_version"].startswith("TLSv1."), outbound
    assert outbound["cipher"] not in ("", "—"), outbound
    # require mode does not need a verified certificate; the result is shown.
    assert outbound["verification"].startswith("certificate "), outbound
    # The requirement, the source that set it and the verdict (SPEC §10).
    assert outbound["requirement"] == "domain require (set by domain)", outbound
    assert outbound["verdict"] == "requirement met", outbound
    assert outbound["result_type"] is None, outbound
    assert inbound["requirement"] is None and inbound["verdict"] is None, inbound
    api_hop = detail["hops"][1]
    assert (api_hop["source"], api_hop["verdict"], api_hop["policy_type"]) == \
        ("domain", "met", "no-policy-found"), api_hop
    log = gw.log()
    assert f"tls={outbound['tls_version']}" in log and f"cipher={outbound['cipher']}" in log, log
