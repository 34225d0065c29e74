"""A small HTTPS client for the admin UI and API of a test gateway
(http.client, no third-party packages): explicit cookies, no automatic
redirects, JSON helpers, multipart uploads. Every call has a timeout.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import socket
import time
import uuid
from urllib.parse import quote, urlencode

from postern_testlib import Gateway

PASSWORD = "correct horse battery staple"


def admin_context(gw: Gateway) -> ssl.SSLContext:
    """A client context that trusts the certificate the admin listener
    serves (exported from the certificate table). The name is not checked:
    we connect to 127.0.0.1, the certificate names the host."""
    settings = json.loads(gw.cli_ok("settings", "show", "--format", "json").stdout)
    name = settings["tls"]["inbound"]["certificate"]
    pem = gw.cli_ok("cert", "export", name).stdout
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pem)
    return ctx


def insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:400]!r}>"


class Admin:
    """One client of one gateway's admin listener, with its own cookies."""

    def __init__(self, gw: Gateway, context: ssl.SSLContext | None = None,
                 token: str | None = None):
        self.gw = gw
        self.port = gw.admin_port
        self.context = context or insecure()
        self.cookies: dict[str, str] = {}
        self.token = token
        self.csrf: str | None = None

    # -- transport ----------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> Response:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=timeout)
        try:
            h = dict(headers or {})
            if self.cookies and "Cookie" not in h:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            if self.token and "Authorization" not in h:
                h["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            response = Response(r.status, r.getheaders(), data)
        finally:
            conn.close()
        for cookie in response.all("Set-Cookie"):
            pair = cookie.split(";", 1)[0]
            name, _, value = pair.partition("=")
            if value:
                self.cookies[name.strip()] = value.strip()
            else:
                self.cookies.pop(name.strip(), None)
        return response

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def send_json(self, method: str, path: str, payload=None, csrf: bool = True,
                  headers: dict[str, str] | None = None) -> Response:
        h = {"Content-Type": "application/json", **(headers or {})}
        if csrf and self.csrf and "X-CSRF-Token" not in h:
            h["X-CSRF-Token"] = self.csrf
        body = None if payload is None else json.dumps(payload).encode()
        return self.request(method, path, body=body, headers=h)

    def post_form(self, path: str, fields: list[tuple[str, str]] | dict) -> Response:
        if isinstance(fields, dict):
            fields = list(fields.items())
        return self.request("POST", path, body=urlencode(fields).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, path: str, fields: dict[str, str],
                       files: dict[str, tuple[str, bytes]]) -> Response:
        boundary = "----postern" + uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                         .encode() + value.encode() + b"\r\n")
        for name, (filename, data) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                         f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                         .encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body=body,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    # -- session ------------------------------------------------------------
    def login(self, password: str = PASSWORD) -> Response:
        r = self.send_json("POST", "/api/v1/login", {"password": password}, csrf=False)
        if r.status == 200:
            self.csrf = r.json()["csrf_token"]
        return r

    def page_csrf(self, path: str = "/") -> str:
        """The CSRF token a page embeds (meta tag)."""
        r = self.get(path)
        assert r.status == 200, r
        m = re.search(r'name="csrf-token" content="([0-9a-f]+)"', r.text)
        assert m, r.text[:500]
        return m.group(1)


def cert_path(name: str) -> str:
    return "/api/v1/certificates/" + quote(name, safe="")


def wait_admin(gw: Gateway, timeout: float = 15) -> None:
    """Until the admin listener answers the login page."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = Admin(gw).get("/login", timeout=3)
            if r.status == 200:
                return
            last = r
        except (OSError, ssl.SSLError, http.client.HTTPException, socket.timeout) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"admin listener on {gw.admin_port} not answering: {last}\n{gw.stderr()}")


def start_with_password(gw: Gateway, password: str = PASSWORD) -> Gateway:
    """Set the admin password before the first start, start, wait for the
    admin listener."""
    gw.cli_ok("admin", "passwd", "--password-stdin", input=(password + "\n").encode())
    gw.start()
    wait_admin(gw)
    return gw


def new_token(gw: Gateway, name: str = "tests") -> str:
    r = gw.cli_ok("admin", "token", "create", "--name", name)
    token = r.stdout.strip()
    assert re.fullmatch(r"pst_[0-9a-f]{64}", token), r
    return token
