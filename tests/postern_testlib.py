"""Helpers for the whole-gateway tests: a `Gateway` that runs the real
`postern` binary on loopback in its own directory, raw SMTP dialogs with
deadlines, and small wrappers around the openssl CLI.

Every wait in here is bounded: loops carry a deadline, sockets a timeout,
subprocesses a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

HOSTNAME = "mx.postern.test"
REPO_ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------
# The binary
# ---------------------------------------------------------------------------


def postern_bin() -> Path:
    """POSTERN_BIN (relative to the current directory, then to the repo
    root), else target/release/postern in the repo."""
    env = os.environ.get("POSTERN_BIN")
    if env:
        p = Path(env)
        if p.is_absolute():
            return p
        if p.exists():
            return p.resolve()
        return (REPO_ROOT / p).resolve()
    return REPO_ROOT / "target" / "release" / "postern"


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


# Test listeners take ports from here, below the kernel's ephemeral range.
# A port from bind(("127.0.0.1", 0)) is an ephemeral port: any outgoing
# connection on the machine (a delivery, a benchmark, the browser) can take
# it as its source port between the test choosing it and the gateway binding
# it, and the start fails with "Address already in use" (seen in CI while a
# benchmark ran beside the tests).
_TEST_PORTS = range(12000, min(_ephemeral_ports()[0], 32768))


def _bindable(port: int, ips: tuple[str, ...]) -> bool:
    socks: list[socket.socket] = []
    try:
        for ip in ips:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port(*ips: str, attempts: int = 500) -> int:
    """A TCP port free on every given loopback IP (default 127.0.0.1), never
    the same one twice in a run, outside the ephemeral range when there is
    room below it."""
    ips = ips or ("127.0.0.1",)
    for _ in range(attempts):
        if len(_TEST_PORTS) >= 1000:
            port = random.choice(_TEST_PORTS)
        else:  # an unusual ip_local_port_range: fall back to the kernel's choice
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((ips[0], 0))
                port = s.getsockname()[1]
        with _port_lock:
            if port in _handed_out or not _bindable(port, ips):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no TCP port free on all of {ips}")


# ---------------------------------------------------------------------------
# Raw SMTP
# ---------------------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection before a complete reply."""


class Reply:
    """One SMTP reply: code, the text of each line (without `NNN-`), raw bytes."""

    def __init__(self, code: int, lines: list[str], raw: bytes):
        self.code = code
        self.lines = lines
        self.raw = raw

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def first(self) -> str:
        """First line as sent, e.g. `250 2.0.0 Ok`."""
        return self.raw.split(b"\r\n", 1)[0].decode("utf-8", "replace")

    @property
    def last(self) -> str:
        lines = [l for l in self.raw.split(b"\r\n") if l]
        return lines[-1].decode("utf-8", "replace") if lines else ""

    def __repr__(self) -> str:
        return f"Reply({self.raw.decode('utf-8', 'replace')!r})"


_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")


class SmtpConn:
    """A raw SMTP client over a socket we control byte by byte.

    `read_reply()` reads lines until the final `NNN ` line, with a deadline.
    `starttls()` wraps the socket; the caller decides what was pipelined.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 tls_context: ssl.SSLContext | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=HOSTNAME)

    # -- low level ---------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF. Raises socket.timeout at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline reached")
        self.sock.settimeout(min(remaining, self.timeout))
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_line(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while b"\r\n" not in self.buf:
            if self.eof or not self._fill(deadline):
                raise Closed(f"connection closed; unterminated data {self.buf!r}")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_reply(self, timeout: float | None = None) -> Reply:
        """Read one complete (possibly multi-line) reply before the deadline."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        raw = b""
        lines: list[str] = []
        while True:
            line = self.read_line(max(0.001, deadline - time.monotonic()))
            raw += line + b"\r\n"
            m = _REPLY_LINE.match(line)
            if not m:
                raise AssertionError(f"malformed reply line {line!r} (so far {raw!r})")
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(int(m.group(1)), lines, raw)

    def read_reply_or_none(self, timeout: float) -> Reply | None:
        """A reply if one arrives before the timeout, None on silence or EOF."""
        try:
            return self.read_reply(timeout)
        except (socket.timeout, TimeoutError, Closed):
            return None

    def read_all_replies(self, timeout: float) -> tuple[list[Reply], bool]:
        """Every reply until EOF or `timeout` seconds of total waiting.
        Returns (replies, closed)."""
        deadline = time.monotonic() + timeout
        replies: list[Reply] = []
        while time.monotonic() < deadline:
            try:
                replies.append(self.read_reply(max(0.001, deadline - time.monotonic())))
            except Closed:
                return replies, True
            except (socket.timeout, TimeoutError):
                break
            except (ssl.SSLError, OSError):
                return replies, True
        return replies, self.eof

    def wait_closed(self, timeout: float) -> bool:
        """True when the server closes the connection before the timeout
        (any bytes arriving meanwhile are kept in the buffer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._fill(deadline):
                    return True
            except (socket.timeout, TimeoutError):
                return False
            except (ssl.SSLError, OSError):
                return True
        return False

    # -- commands ----------------------------------------------------------
    def cmd(self, line: str | bytes, timeout: float | None = None) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.read_reply(timeout)

    def banner(self) -> Reply:
        return self.read_reply()

    def ehlo(self, name: str = "client.postern.test") -> Reply:
        return self.cmd(f"EHLO {name}")

    def starttls(self, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        """Wrap the socket in TLS (after the 220 reply to STARTTLS)."""
        assert self.buf == b"", f"plaintext bytes left before TLS: {self.buf!r}"
        ctx = context or insecure_context()
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=HOSTNAME)
        return self.sock

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def capabilities(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> parameters."""
    caps: dict[str, str] = {}
    for line in ehlo.lines[1:]:
        parts = line.split(None, 1)
        if parts:
            caps[parts[0].upper()] = parts[1] if len(parts) > 1 else ""
    return caps


QUEUED_RE = re.compile(r"queued as ([A-Za-z0-9._+=-]+)")


def queued_id(text: str | bytes) -> str | None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    m = QUEUED_RE.search(text)
    return m.group(1) if m else None


def raw_transaction(conn: SmtpConn, sender: str, rcpts: list[str], body: bytes) -> Reply:
    """MAIL/RCPT/DATA on an open (EHLO'd) connection; `body` must already
    be CRLF text without the final dot. Asserts the envelope is accepted."""
    r = conn.cmd(f"MAIL FROM:<{sender}>")
    assert r.code == 250, r
    for rcpt in rcpts:
        r = conn.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, r
    r = conn.cmd("DATA")
    assert r.code == 354, r
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    conn.send(body + b".\r\n")
    return conn.read_reply(15)


def make_message(token: str, sender: str = "c@d.test", rcpt: str = "a@b.test",
                 subject: str | None = None, extra_body: str = "") -> str:
    """A small RFC 5322 message (LF line ends; smtplib converts them)."""
    return (
        f"From: <{sender}>\n"
        f"To: <{rcpt}>\n"
        f"Subject: {subject or 'test ' + token}\n"
        f"Message-ID: <{token}@client.postern.test>\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\n"
        f"\n"
        f"body {token}\n{extra_body}"
    )


def insecure_context(min_version=None, max_version=None) -> ssl.SSLContext:
    """A client context that does not verify the server (the Default Cert is
    self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def unfold(text: str) -> str:
    """Unfold RFC 5322 header continuation lines."""
    return re.sub(r"\r?\n[ \t]+", " ", text)


# ---------------------------------------------------------------------------
# openssl CLI
# ---------------------------------------------------------------------------


def run(cmd: list[str], timeout: float = 30, input: bytes | None = None,
        cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input if input is not None else b"", capture_output=True,
                          timeout=timeout, cwd=cwd)


def openssl(*args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return run(["openssl", *args], timeout=timeout, input=input)


def pem_certs(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def cert_text(pem: str) -> str:
    p = openssl("x509", "-text", "-noout", input=pem.encode())
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def fingerprint(pem: str, digest: str = "sha256") -> str:
    """Lower-case hex fingerprint without colons."""
    p = openssl("x509", "-noout", "-fingerprint", f"-{digest}", input=pem.encode())
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode().split("=", 1)[1].strip().replace(":", "").lower()


# Offered by a client that can verify only RSA signatures: it must get the RSA
# certificate (the Default Cert), never the ECDSA one served beside it.
RSA_SIGALGS = ("-sigalgs",
               "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:rsa_pkcs1_sha256:rsa_pkcs1_sha384")


def s_client(port: int, *extra: str, starttls: bool = True, input: bytes = b"",
             timeout: float = 20) -> tuple[int, str]:
    """Run `openssl s_client`; returns (exit code, stdout+stderr)."""
    args = ["s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOSTNAME, "-showcerts"]
    if starttls:
        args += ["-starttls", "smtp"]
    args += list(extra)
    try:
        p = openssl(*args, input=input, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return -1, out.decode("utf-8", "replace")
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def s_client_protocol(out: str) -> str | None:
    """The negotiated protocol reported by s_client, None if no handshake."""
    if re.search(r"Cipher is \(NONE\)", out) or "no peer certificate available" in out:
        return None
    m = re.search(r"^\s*Protocol\s*:\s*(\S+)", out, re.M) or re.search(
        r"^New, (TLSv[\d.]+), Cipher is", out, re.M)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------

# A gateway started as root switches to this user after binding (`user` in
# postern.toml); scripts/test.sh creates it.
GATEWAY_USER = "postern"


def user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def make_reachable(path: Path) -> None:
    """Let other users search (not list) the directories above `path` inside
    the temporary directory, so a gateway that dropped root privileges can
    still reach its data dir (pytest makes its base directories 0700).

    Caveat: every pytest session resets /tmp/pytest-of-root to 0700 when it
    starts, so two sessions run as root at the same time on one machine cut
    each other's unprivileged gateways off their data (CI runs one)."""
    import tempfile
    tmp = Path(tempfile.gettempdir()).resolve()
    p = Path(path).resolve()
    while p != tmp and tmp in p.parents:
        mode = p.stat().st_mode
        if not mode & 0o001:
            os.chmod(p, (mode & 0o7777) | 0o001)
        p = p.parent


class CliResult:
    def __init__(self, args, proc: subprocess.CompletedProcess):
        self.args = args
        self.rc = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        return (f"postern {' '.join(map(str, self.args))} -> rc={self.rc}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")


class Gateway:
    """One postern node in its own directory with its own ports.

    `store_template` (a directory holding a prepared postern.db*) is copied
    into the data dir before first use, so not every test pays for an
    RSA-4096 key generation; tests about first use pass None.
    """

    def __init__(self, root: Path, *, trusted_networks: list[str] | None = None,
                 implicit_tls: bool = True, shutdown_grace: str = "5s",
                 store_template: Path | None = None, hostname: str = HOSTNAME,
                 paused: bool = True, mx_port: int | None = None,
                 nameservers: list[str] | None = None, user: str | None = None,
                 open_files: int | None = None, spool_sync: str | None = None):
        self.root = Path(root)
        # RLIMIT_NOFILE (soft and hard) for the gateway process, when a test
        # needs one lower than its own.
        self.open_files = open_files
        # Variables added to the gateway process's environment (e.g.
        # libfaketime's), from the next start on.
        self.extra_env: dict[str, str] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "postern.toml"
        self.data_dir = self.root / "data"
        self.smtp_port = free_port()
        self.tls_port = free_port() if implicit_tls else None
        self.admin_port = free_port()
        self.hostname = hostname
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.root / "gateway.stderr"
        # Processes run from an unrelated directory: data_dir must resolve
        # against the config file's directory, not the working directory.
        self.cwd = self.root / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self._stderr_file = None
        self.starts = 0
        lines = [
            f'hostname = "{hostname}"',
            'data_dir = "data"',
        ]
        # Run as root, the gateway drops to GATEWAY_USER after binding. When
        # that user does not exist here (scripts/test.sh creates it), keep
        # the old behaviour with an explicit user = "root"; tests that need
        # the switch pass user= themselves.
        if user is None and os.geteuid() == 0 and not user_exists(GATEWAY_USER):
            user = "root"
        if user is not None:
            lines.append(f'user = "{user}"')
        if os.geteuid() == 0 and (user or GATEWAY_USER) != "root":
            make_reachable(self.root)
        lines += [
            "",
            "[smtp]",
            f'listen = ["127.0.0.1:{self.smtp_port}"]',
        ]
        if self.tls_port:
            lines.append(f'listen_implicit_tls = ["127.0.0.1:{self.tls_port}"]')
        if trusted_networks is not None:
            lines.append("trusted_networks = [" + ", ".join(f'"{n}"' for n in trusted_networks) + "]")
        lines += [
            f'shutdown_grace = "{shutdown_grace}"',
            "",
            # Tests of the receiving side keep mail queued; delivery tests
            # pass paused=False with their own DNS server and MX port.
            "[delivery]",
            f"paused = {'true' if paused else 'false'}",
        ]
        if mx_port is not None:
            lines.append(f"mx_port = {mx_port}")
        if nameservers is not None:
            lines += ["", "[dns]", "nameservers = [" + ", ".join(f'"{n}"' for n in nameservers) + "]"]
        if spool_sync is not None:
            lines += ["", "[spool]", f'sync = "{spool_sync}"']
        lines += [
            "",
            "[admin]",
            f'listen = "127.0.0.1:{self.admin_port}"',
            "",
        ]
        self.config.write_text("\n".join(lines))
        if store_template is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for f in Path(store_template).iterdir():
                if f.name.startswith("postern.db"):
                    shutil.copy2(f, self.data_dir / f.name)

    # -- paths -------------------------------------------------------------
    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "spool" / "queue"

    @property
    def corrupt_dir(self) -> Path:
        return self.data_dir / "spool" / "corrupt"

    @property
    def mail_log(self) -> Path:
        return self.data_dir / "mail.log"

    def spool_file(self, qid: str) -> Path:
        return self.queue_dir / qid

    def spool_ids(self) -> list[str]:
        """Message files in the queue directory (not `.state` files or temp files)."""
        if not self.queue_dir.is_dir():
            return []
        return sorted(p.name for p in self.queue_dir.iterdir()
                      if p.is_file() and not p.name.startswith((".", "tmp"))
                      and not p.name.endswith((".state", ".tmp", ".part")))

    # -- CLI ---------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 90, input: bytes | None = None) -> CliResult:
        cmd = [str(postern_bin()), "--config", str(self.config), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=self.cwd,
                              input=input if input is not None else b"")
        return CliResult(args, proc)

    def cli_ok(self, *args: str, **kw) -> CliResult:
        r = self.cli(*args, **kw)
        assert r.rc == 0, r
        return r

    def set(self, key: str, value: str) -> None:
        self.cli_ok("settings", "set", key, value)

    def queue(self) -> list[dict]:
        r = self.cli_ok("queue", "list", "--json")
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError as e:  # pragma: no cover - reported as failure
            raise AssertionError(f"queue list --json is not JSON: {e}\n{r}")
        assert isinstance(data, list), r
        return data

    def queue_ids(self) -> list[str]:
        return [m["id"] for m in self.queue()]

    def log(self) -> str:
        return self.mail_log.read_text(errors="replace") if self.mail_log.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- process -----------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> "Gateway":
        assert not self.running, "already running"
        self.starts += 1
        with open(self.stderr_path, "a") as f:
            f.write(f"\n===== start #{self.starts} =====\n")
        offset = self.stderr_path.stat().st_size
        self._stderr_file = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [str(postern_bin()), "--config", str(self.config), "run"],
            stdin=subprocess.DEVNULL, stdout=self._stderr_file, stderr=self._stderr_file,
            cwd=self.cwd, preexec_fn=self._limit_open_files if self.open_files else None,
            env={**os.environ, **self.extra_env} if self.extra_env else None,
        )
        expected = [f"listening on 127.0.0.1:{self.smtp_port}"]
        if self.tls_port:
            expected.append(f"listening on 127.0.0.1:{self.tls_port}")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gateway exited with {self.proc.returncode} during start:\n{self.stderr()}")
            text = self.stderr_path.read_bytes()[offset:].decode("utf-8", "replace")
            if all(e in text for e in expected) and self._answers_220():
                return self
            if time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(
                    f"gateway not ready after {timeout}s (expected {expected} in stderr and "
                    f"a 220 banner):\n{self.stderr()}")
            time.sleep(0.05)

    def _limit_open_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _answers_220(self) -> bool:
        try:
            with SmtpConn(self.smtp_port, timeout=2) as c:
                r = c.read_reply(2)
                if r.code != 220:
                    return False
                try:
                    c.cmd("QUIT", timeout=2)
                    c.wait_closed(1)
                except Exception:
                    pass
                return True
        except Exception:
            return False

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code (fails if it hangs)."""
        assert self.proc is not None, "never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError(f"gateway did not exit within {timeout}s of SIGTERM")
        self._close_stderr()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._close_stderr()

    def restart(self) -> "Gateway":
        rc = self.stop()
        assert rc == 0, f"graceful stop exited with {rc}:\n{self.stderr()}"
        return self.start()

    def _close_stderr(self):
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    # -- SMTP conveniences -------------------------------------------------
    def connect(self, timeout: float = 5.0, banner: bool = True) -> SmtpConn:
        c = SmtpConn(self.smtp_port, timeout=timeout)
        if banner:
            r = c.read_reply()
            assert r.code == 220, r
        return c

    def send_raw(self, sender: str = "c@d.test", rcpts: list[str] | None = None,
                 body: bytes | None = None, token: str = "raw") -> str:
        """One plaintext transaction over a raw socket; returns the queue ID."""
        rcpts = rcpts or ["a@b.test"]
        if body is None:
            body = make_message(token, sender, rcpts[0]).replace("\n", "\r\n").encode()
        with self.connect() as c:
            assert c.ehlo().code == 250
            r = raw_transaction(c, sender, rcpts, body)
            assert r.code == 250, r
            qid = queued_id(r.first)
            assert qid, r
            c.cmd("QUIT")
            return qid


@contextlib.contextmanager
def spool_on_tmpfs(gw: "Gateway", size: str):
    """Mount a tmpfs of `size` (e.g. "2m") as the gateway's spool directory
    for the block; the gateway is killed and the tmpfs unmounted after it.
    Fails under CI (which runs as root), skips elsewhere, when it cannot."""
    import pytest
    refuse = pytest.fail if os.environ.get("CI") else pytest.skip
    if os.geteuid() != 0:
        refuse("needs root to mount a tmpfs for the spool (CI runs as root)")
    spool = gw.data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(spool)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        refuse(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield spool
    finally:
        gw.kill9()
        if subprocess.run(["umount", str(spool)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(spool)], capture_output=True)
