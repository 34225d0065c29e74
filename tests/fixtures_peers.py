"""Scriptable SMTP peers in Python, for delivery tests Postfix cannot play.

`SmtpPeer` is a small threaded ESMTP receiver on a loopback IP:port that
records every session and message.  Its STARTTLS behaviour is chosen with
`starttls=`:

* None       - STARTTLS not advertised (plaintext only)
* "ok"       - real TLS (cert= a CertPair, else a self-signed one is made)
* "broken"   - advertised; answers "220 2.0.0 Ready to start TLS" and then
               breaks the handshake (`break_with`: "garbage" = reads the
               ClientHello and answers with non-TLS bytes, then closes;
               "close" = closes at once; "reset" = TCP RST; "hang" = says
               nothing for `hang_seconds`, then closes)
* "refuse"   - advertised; STARTTLS answered "454 4.7.0 TLS not available"

In every mode plain mail is accepted, so a client that falls back to
plaintext (a new connection without STARTTLS, or carrying on after 454) gets
its message recorded: the opportunistic-fallback test.  `replies` overrides
answers ({"RCPT": "550 5.1.1 No such user", "DATA_END": "451 4.3.0 Later",
"MAIL": ..., "DATA": ..., "EHLO": ..., "BANNER": ...}; a value may be a
callable(session, argument) returning a reply or None for the default).
`"DATA_RECEIVED": callable(session, data)` is called with each message's data
before its end-of-data reply (a hook, not a reply).

Fixtures: `make_peer(**kw)` (factory, stopped at teardown) and
`broken_tls_peer` (starttls="broken", break_with="garbage" on 127.0.0.1).
"""

from __future__ import annotations

import dataclasses
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

MAX_LINE = 65536
MAX_MESSAGE = 64 * 1024 * 1024
MAX_COMMANDS = 10000          # per session


@dataclasses.dataclass
class PeerMessage:
    session: int
    mail_from: str
    rcpts: list[str]
    data: bytes                 # dot-unstuffed, line endings as received
    tls: bool
    ehlo: str | None
    mail_params: str = ""


@dataclasses.dataclass
class PeerSession:
    index: int
    client: tuple[str, int]
    ehlo: str | None = None
    commands: list[str] = dataclasses.field(default_factory=list)
    starttls_attempted: bool = False
    tls: bool = False
    tls_version: str | None = None
    tls_error: str | None = None
    pipelined_after_starttls: bytes = b""
    messages: list[int] = dataclasses.field(default_factory=list)
    closed: bool = False


class _Closed(Exception):
    pass


class _Conn:
    """Line-buffered socket with an idle timeout and a line-length cap."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.buf = b""
        self.sock.settimeout(timeout)

    def readline(self, limit: int = MAX_LINE) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > limit:
                raise _Closed("line too long")
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, OSError, ssl.SSLError) as e:
                raise _Closed(str(e)) from None
            if not chunk:
                raise _Closed("eof")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def send(self, text: str) -> None:
        try:
            self.sock.sendall(text.encode())
        except (OSError, ssl.SSLError) as e:
            raise _Closed(str(e)) from None


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class SmtpPeer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, starttls: str | None = "broken",
                 cert=None, break_with: str = "garbage", hang_seconds: float = 5.0,
                 hostname: str = "peer.test", replies: dict[str, Any] | None = None,
                 extensions: list[str] | None = None, idle_timeout: float = 30.0):
        if not host.startswith("127."):
            raise ValueError("peers listen on loopback only")
        if starttls not in (None, "ok", "broken", "refuse"):
            raise ValueError(f"starttls must be None, 'ok', 'broken' or 'refuse', not {starttls!r}")
        if break_with not in ("garbage", "close", "reset", "hang"):
            raise ValueError(f"bad break_with {break_with!r}")
        self.starttls = starttls
        self.break_with = break_with
        self.hang_seconds = hang_seconds
        self.hostname = hostname
        self.replies = dict(replies or {})
        self.extensions = extensions if extensions is not None else [
            "PIPELINING", "SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        self.idle_timeout = idle_timeout
        self.sessions: list[PeerSession] = []
        self.messages: list[PeerMessage] = []
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._ssl_ctx: ssl.SSLContext | None = None
        self.cert = cert
        if starttls == "ok":
            if cert is None:
                from fixtures_postfix import make_self_signed
                self._tmp = tempfile.mkdtemp(prefix="peer-cert-")
                self.cert = make_self_signed(Path(self._tmp), hostname)
            self._ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl_ctx.load_cert_chain(str(self.cert.cert), str(self.cert.key))
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                peer._serve(self.request, self.client_address)

        self._server = _Server((host, port), Handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> "SmtpPeer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"smtp-peer-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        if getattr(self, "_tmp", None):
            import shutil
            shutil.rmtree(self._tmp, ignore_errors=True)
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> "SmtpPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- observation ------------------------------------------------------------

    def wait_for_messages(self, n: int = 1, timeout: float = 10) -> list[PeerMessage]:
        return self._wait(lambda: len(self.messages) >= n, timeout, f"{n} message(s)", lambda: self.messages)

    def wait_for_sessions(self, n: int = 1, timeout: float = 10, closed: bool = True) -> list[PeerSession]:
        """Wait until n sessions happened (and, by default, ended)."""
        def ok():
            with self._lock:
                done = [s for s in self.sessions if s.closed or not closed]
            return len(done) >= n
        return self._wait(ok, timeout, f"{n} session(s)", lambda: self.sessions)

    def _wait(self, pred: Callable[[], bool], timeout: float, what: str, result: Callable[[], list]) -> list:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.02) + 2):
            if pred():
                with self._lock:
                    return list(result())
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        raise AssertionError(f"peer {self.address}: timed out after {timeout}s waiting for {what}; "
                             f"sessions: {self.sessions!r}")

    # -- the SMTP dialog ----------------------------------------------------------

    def _reply(self, session: PeerSession, verb: str, arg: str, default: str) -> str:
        r = self.replies.get(verb)
        if callable(r):
            r = r(session, arg)
        return (r or default).rstrip("\r\n") + "\r\n"

    def _ehlo_reply(self, session: PeerSession, greeting: str) -> str:
        exts = list(self.extensions)
        if self.starttls and not session.tls:
            exts.append("STARTTLS")
        lines = [f"{self.hostname} greets {greeting}"] + exts
        return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines))

    def _serve(self, sock: socket.socket, client) -> None:
        with self._lock:
            session = PeerSession(index=len(self.sessions), client=tuple(client[:2]))
            self.sessions.append(session)
            self._socks.add(sock)
        conn = _Conn(sock, self.idle_timeout)
        try:
            self._dialog(conn, session)
        except _Closed:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
                self._socks.discard(conn.sock)
            try:
                conn.sock.close()
            except OSError:
                pass
            session.closed = True

    def _dialog(self, conn: _Conn, session: PeerSession) -> None:
        conn.send(self._reply(session, "BANNER", "", f"220 {self.hostname} ESMTP test peer"))
        mail_from: str | None = None
        mail_params = ""
        rcpts: list[str] = []
        for _ in range(MAX_COMMANDS):
            raw = conn.readline()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            session.commands.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                session.ehlo = arg.strip()
                mail_from, rcpts = None, []
                default = self._ehlo_reply(session, arg.strip()) if verb == "EHLO" else f"250 {self.hostname}"
                conn.send(self._reply(session, "EHLO", arg, default) if "EHLO" in self.replies else default)
            elif verb == "STARTTLS":
                session.starttls_attempted = True
                if not self.starttls or session.tls:
                    conn.send("503 5.5.1 STARTTLS not available\r\n")
                    continue
                if self.starttls == "refuse":
                    conn.send("454 4.7.0 TLS not available due to local problem\r\n")
                    continue
                session.pipelined_after_starttls = conn.buf
                conn.buf = b""
                conn.send("220 2.0.0 Ready to start TLS\r\n")
                if self.starttls == "broken":
                    self._break(conn.sock, session)
                    raise _Closed("handshake broken on purpose")
                assert self._ssl_ctx is not None
                try:
                    tls_sock = self._ssl_ctx.wrap_socket(conn.sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    session.tls_error = str(e)
                    raise _Closed(str(e)) from None
                with self._lock:
                    self._socks.add(tls_sock)
                conn.sock = tls_sock
                session.tls = True
                session.tls_version = tls_sock.version()
                session.ehlo = None
                mail_from, rcpts = None, []
            elif verb == "MAIL":
                if not arg.upper().startswith("FROM:"):
                    conn.send("501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
                    continue
                addr, params = _split_path(arg[5:])
                r = self._reply(session, "MAIL", addr, "250 2.1.0 Ok")
                if r.startswith("2"):
                    mail_from, mail_params, rcpts = addr, params, []
                conn.send(r)
            elif verb == "RCPT":
                if mail_from is None:
                    conn.send("503 5.5.1 Need MAIL first\r\n")
                    continue
                addr, _ = _split_path(arg[3:] if arg.upper().startswith("TO:") else arg)
                r = self._reply(session, "RCPT", addr, "250 2.1.5 Ok")
                if r.startswith("2"):
                    rcpts.append(addr)
                conn.send(r)
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    conn.send("503 5.5.1 Need RCPT first\r\n")
                    continue
                r = self._reply(session, "DATA", "", "354 End data with <CR><LF>.<CR><LF>")
                conn.send(r)
                if not r.startswith("3"):
                    continue
                data = self._read_data(conn)
                msg = PeerMessage(session.index, mail_from, list(rcpts), data, session.tls, session.ehlo,
                                  mail_params)
                # A test's look at the message before it is answered.
                if callable(self.replies.get("DATA_RECEIVED")):
                    self.replies["DATA_RECEIVED"](session, data)
                r = self._reply(session, "DATA_END", "", "250 2.0.0 Ok: queued")
                if r.startswith("2"):
                    with self._lock:
                        self.messages.append(msg)
                        session.messages.append(len(self.messages) - 1)
                conn.send(r)
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                conn.send("250 2.0.0 Ok\r\n")
            elif verb == "NOOP":
                conn.send("250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                conn.send(f"221 2.0.0 {self.hostname} closing\r\n")
                return
            else:
                conn.send("502 5.5.2 Command not recognized\r\n")

    @staticmethod
    def _read_data(conn: _Conn) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = conn.readline()
            if line == b".\r\n":
                return b"".join(parts)
            if line.startswith(b"."):
                line = line[1:]
            size += len(line)
            if size > MAX_MESSAGE:
                raise _Closed("message too large")
            parts.append(line)

    def _break(self, sock: socket.socket, session: PeerSession) -> None:
        mode = self.break_with
        session.tls_error = f"broken on purpose ({mode})"
        if mode == "close":
            return
        if mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if mode == "hang":
            sock.settimeout(self.hang_seconds)
            deadline = time.monotonic() + self.hang_seconds
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(65536):
                        return
                except (socket.timeout, OSError):
                    return
            return
        # garbage: let the ClientHello arrive, then answer with non-TLS bytes
        sock.settimeout(2)
        try:
            sock.recv(65536)
        except (socket.timeout, OSError):
            pass
        try:
            sock.sendall(b"this is not TLS, sorry\r\n" * 8)
        except OSError:
            pass


def _split_path(text: str) -> tuple[str, str]:
    """'<a@b> SIZE=10' -> ('a@b', 'SIZE=10')."""
    text = text.strip()
    if text.startswith("<"):
        end = text.find(">")
        if end >= 0:
            return text[1:end], text[end + 1:].strip()
    addr, _, params = text.partition(" ")
    return addr, params.strip()


@pytest.fixture
def make_peer():
    """Factory: make_peer(host="127.0.0.1", port=0, *, starttls="broken"|"ok"|"refuse"|None, cert=None,
    break_with="garbage", replies=None, extensions=None, hostname="peer.test") -> started SmtpPeer."""
    made: list[SmtpPeer] = []

    def make(*args, **kw) -> SmtpPeer:
        p = SmtpPeer(*args, **kw).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def broken_tls_peer(make_peer) -> SmtpPeer:
    """Advertises STARTTLS, says 220 to it, then answers the ClientHello with garbage;
    plaintext mail (a reconnect without STARTTLS) is accepted and recorded."""
    return make_peer(starttls="broken", break_with="garbage")
