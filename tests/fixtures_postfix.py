"""Private Postfix instances as real peers for delivery tests, and test certificates.

Two roles, each its own `postfix -c DIR` instance under /tmp/pf-NAME-XXXX/
(config in etc/, queue/, data/, Maildirs in mail/, log in maillog), no chroot,
listening on one loopback IP:port, never touching the system instance
(/etc/postfix is only read for postfix-files):

* DownstreamPostfix: receives mail for `domains` (any local part) into one
  Maildir per domain (mail/<domain>/new/...), as the MX Postern delivers to.
  `messages(rcpt=None)` / `wait_for_messages(n, timeout)` return raw bytes.
  TLS: None (no STARTTLS), "selfsigned", or "ca" (certificate for `tls_hostname`
  issued by a CertAuthority; `.ca_file` is the PEM to trust). The Received
  header says "(using TLSv1.3 with cipher ...)" when the message came over TLS.
* UpstreamPostfix: relays everything it receives to relayhost
  `[relay_host]:relay_port` (Postern) with smtp_tls_security_level `tls_level`
  ("encrypt" by default; "verify"/"secure" use `tls_ca_file` and `tls_match`).
  Its log shows "... TLS connection established to 127.0.0.1[127.0.0.1]:PORT".

Several instances may share one port on different 127.0.0.x addresses
(Postern's MX port is one global setting): `free_port("127.0.0.3", "127.0.0.4")`
gives a port free on all of them.

Postfix details handled here (each cost a debugging session):
* inet_interfaces must name an address configured on an interface; only
  127.0.0.1 is, so it is 127.0.0.1 and the master.cf line "IP:PORT inet"
  binds the instance's own address; smtp_bind_address = that address.
* Postfix waits ~2 s before reading a main.cf or table written within the
  last second or two: every file written here is backdated.
* Fatal errors go to stderr only on a terminal (else to syslog, absent):
  a failed start is re-checked on a pty to report the reason.
* virtual(8) refuses regexp substitutions: per-domain catch-all texthash.
* No DNS at all (smtpd_peername_lookup = no, smtp_dns_support_level =
  disabled): the system resolver is not on loopback.
* Stopping: SIGTERM to master (what `postfix stop` sends; master TERMs its
  process group), wait for the group, SIGKILL leftovers. Zombies are not
  waited for: PID 1 here reaps orphans only about once a second.

Fixtures: `tls_ca` (session), `make_downstream`, `make_upstream` (factories,
everything they made is stopped and removed at teardown).
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import pytest

# One port allocator for every fixture (see postern_testlib.free_port).
from postern_testlib import free_port  # noqa: F401

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"

# Where instance roots go. Not under pytest's tmp_path: that is mode 0700 for
# root, and the Maildir is written by the postfix user; also Postfix's UNIX
# sockets must stay within the 108-byte sun_path limit.
PF_BASE = os.environ.get("POSTERN_PF_BASE", "/tmp")

_LIVE: dict[str, "PostfixInstance"] = {}   # root -> instance, for atexit cleanup


# ---------------------------------------------------------------------------
# small helpers


def is_listening(ip: str, port: int) -> bool:
    """True if some socket is in LISTEN state on ip:port (reads /proc/net/tcp, no connection made)."""
    want = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"
    want_any = f"00000000:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if len(f) > 3 and f[3] == "0A" and f[1] in (want, want_any):
            return True
    return False


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll pred() until truthy (returned) or timeout (TimeoutError). Bounded."""
    deadline = time.monotonic() + timeout
    n = max(1, int(timeout / interval) + 1)
    for _ in range(n):
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    v = pred()
    if v:
        return v
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def smtp_send(host: str, port: int, sender: str, rcpts: Sequence[str] | str, data: bytes | str,
              *, starttls: bool = False, timeout: float = 10, helo: str = "client.test") -> dict:
    """Submit one message with smtplib; returns smtplib's refused-recipients dict."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as s:
        s.ehlo()
        if starttls:
            import ssl
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo()
        return s.sendmail(sender, list(rcpts), data)


def make_message(subject: str, sender: str = "sender@origin.test", rcpt: str = "user@partner.test",
                 body: str = "hello\r\n") -> bytes:
    msgid = f"<{secrets.token_hex(8)}@origin.test>"
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: {msgid}\r\n"
            f"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n{body}").encode()


def header_block(raw: bytes) -> str:
    """The header section of a raw message, unfolded (continuation lines joined)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    return re.sub(r"\r?\n[ \t]+", " ", head)


def delivered_to(raw: bytes) -> str | None:
    """The (first) Delivered-To address of a raw message, lowercased."""
    m = re.search(r"^Delivered-To:\s*(\S+)", header_block(raw), re.M | re.I)
    return m.group(1).lower() if m else None


def received_headers(raw: bytes) -> list[str]:
    return [line for line in header_block(raw).splitlines() if line.lower().startswith("received:")]


# ---------------------------------------------------------------------------
# certificates (openssl CLI)

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""


class CertPair(NamedTuple):
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path | None = None) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr.decode(errors='replace')}")


def _newkey_args(key_type: str) -> list[str]:
    if key_type == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    if key_type.startswith("rsa"):
        bits = key_type[3:] or "2048"
        return ["-newkey", f"rsa:{bits}"]
    raise ValueError(f"key_type must be 'ec' or 'rsaNNNN', not {key_type!r}")


def _san(dns: Iterable[str], ips: Iterable[str]) -> str:
    parts = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
    return ",".join(parts)


def _leaf_ext(dns, ips, client: bool, ca_signed: bool) -> str:
    lines = [
        "basicConstraints = critical,CA:FALSE",
        "keyUsage = critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage = " + ("serverAuth,clientAuth" if client else "serverAuth"),
        "subjectKeyIdentifier = hash",
    ]
    if ca_signed:
        lines.append("authorityKeyIdentifier = keyid,issuer")
    san = _san(dns, ips)
    if san:
        lines.append(f"subjectAltName = {san}")
    return "[leaf]\n" + "\n".join(lines) + "\n"


# Test certificates outlive the 30-day certificate-expiry alert (SPEC §12),
# so that only a test that wants that alert (tests/test_alerts.py makes its
# own short-lived certificates) sees one.
DEFAULT_DAYS = 90

def make_self_signed(directory: Path, common_name: str, *, dns: Sequence[str] | None = None,
                     ips: Sequence[str] = (), key_type: str = "ec", days: int = DEFAULT_DAYS) -> CertPair:
    """A self-signed leaf certificate (not a CA) for common_name (+ SANs)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dns = [common_name] if dns is None else list(dns)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", common_name) + "-selfsigned"
    cnf = directory / f"{stem}.cnf"
    cnf.write_text(_OPENSSL_CNF + _leaf_ext(dns, ips, client=True, ca_signed=False))
    pair = CertPair(directory / f"{stem}.pem", directory / f"{stem}.key")
    _openssl("req", "-x509", "-config", str(cnf), "-extensions", "leaf", *_newkey_args(key_type),
             "-nodes", "-keyout", str(pair.key), "-out", str(pair.cert), "-days", str(days),
             "-subj", f"/CN={common_name}", "-set_serial", "0x" + secrets.token_hex(8))
    return pair


class CertAuthority:
    """A test CA made with the openssl CLI; `.cert` is the PEM to trust."""

    __test__ = False

    def __init__(self, directory: Path, name: str = "Postern Test CA", key_type: str = "ec", days: int = DEFAULT_DAYS):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key_type = key_type
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(_OPENSSL_CNF)
        self.cert = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        _openssl("req", "-x509", "-config", str(self.cnf), "-extensions", "v3_ca", *_newkey_args(key_type),
                 "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", str(days),
                 "-subj", f"/O=Postern tests/CN={name}", "-set_serial", "0x" + secrets.token_hex(8))

    @property
    def pem(self) -> str:
        return self.cert.read_text()

    def issue(self, common_name: str, *, dns: Sequence[str] | None = None, ips: Sequence[str] = (),
              client: bool = True, key_type: str | None = None, days: int = DEFAULT_DAYS,
              directory: Path | None = None) -> CertPair:
        """A leaf certificate for common_name (SAN DNS:common_name unless dns= given, plus IP SANs).
        client=True adds the clientAuth EKU (serverAuth is always there)."""
        out = Path(directory) if directory else self.dir
        out.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", common_name) + "-" + secrets.token_hex(3)
        dns = [common_name] if dns is None else list(dns)
        ext = out / f"{stem}.ext"
        ext.write_text(_leaf_ext(dns, ips, client=client, ca_signed=True))
        csr = out / f"{stem}.csr"
        pair = CertPair(out / f"{stem}.pem", out / f"{stem}.key")
        _openssl("req", "-new", "-config", str(self.cnf), *_newkey_args(key_type or self.key_type), "-nodes",
                 "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={common_name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-set_serial", "0x" + secrets.token_hex(8), "-days", str(days),
                 "-extfile", str(ext), "-extensions", "leaf", "-out", str(pair.cert))
        return pair


# ---------------------------------------------------------------------------
# Postfix instances

_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    pass


def _live_group_members(pgid: int) -> list[int]:
    """PIDs in process group pgid that are not zombies (/proc scan). Zombies
    are ignored: here PID 1 reaps orphans only about once a second."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces/parens
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(entry))
    return out


def _backdate(path: Path, seconds: int = 60) -> None:
    """Postfix waits (in 300 ms steps, ~2 s) before reading a main.cf or table
    file modified in the last second or two; an older mtime avoids that."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def _write_config_file(path: Path, text: str) -> None:
    path.write_text(text)
    _backdate(path)


def _run_on_pty(cmd: list[str], env: dict[str, str], timeout: float = 30) -> str:
    """Run cmd with stdout/stderr on a pseudo-terminal; return what it printed."""
    import pty
    import select
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    finally:
        os.close(master)
    return out.decode(errors="replace")


class PostfixInstance:
    """One private Postfix instance (base of DownstreamPostfix / UpstreamPostfix)."""

    role = "instance"

    def __init__(self, name: str, ip: str, port: int | None = None, *, hostname: str,
                 main_cf: dict[str, str] | None = None, base: str | None = None):
        if not ip.startswith("127."):
            raise ValueError(f"test Postfix instances listen on loopback only, not {ip}")
        self.name = name
        self.ip = ip
        self.port = port or free_port(ip)
        self.hostname = hostname
        self.extra_main = dict(main_cf or {})
        self.root = Path(tempfile.mkdtemp(prefix=f"pf-{name}-", dir=base or PF_BASE))
        os.chmod(self.root, 0o755)
        self.etc = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self.etc.mkdir(mode=0o755)
        self.queue_dir.mkdir(mode=0o755)
        pw = pwd.getpwnam("postfix")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._master_pid: int | None = None
        self._removed = False
        _LIVE[str(self.root)] = self

    # -- configuration --------------------------------------------------------

    def _main_cf(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "myhostname": self.hostname,
            "mydomain": self.hostname.split(".", 1)[-1] if "." in self.hostname else "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            # Postfix refuses an inet_interfaces address that is not configured
            # on an interface ("no local interface found for 127.0.0.3"): only
            # 127.0.0.1 is. The listener binds self.ip itself (master.cf
            # "IP:PORT inet"), and the SMTP client binds self.ip via
            # smtp_bind_address.
            "inet_interfaces": "127.0.0.1",
            "smtp_bind_address": self.ip,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "syslog_name": f"postfix-{self.name}",
            "smtpd_banner": f"$myhostname ESMTP Postfix ({self.role} {self.name})",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            # No DNS at all: the system resolver is not a loopback address.
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_error_sleep_time": "0",
            "message_size_limit": "104857600",
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtpd_tls_loglevel": "1",
            "smtp_tls_loglevel": "1",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtp_tls_note_starttls_offer": "yes",
        }

    def write_config(self) -> None:
        params = self._main_cf()
        params.update(self.extra_main)
        text = "".join(f"{k} = {v}\n" for k, v in params.items())
        _write_config_file(self.etc / "main.cf", text)
        _write_config_file(self.etc / "master.cf", _MASTER_CF.format(listen=f"{self.ip}:{self.port}"))

    def postconf(self, **params: str) -> None:
        """Change main.cf (postconf -e) and reload if running."""
        self.extra_main.update(params)
        args = [f"{k}={v}" for k, v in params.items()]
        self._run([POSTCONF, "-c", str(self.etc), "-e", *args])
        _backdate(self.etc / "main.cf")
        if self.running:
            self.reload()

    def _run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, env=self._env())
        if r.returncode != 0:
            out = (r.stdout + r.stderr).decode(errors="replace")
            if cmd[0] == POSTFIX and not out.strip():
                # Postfix writes its fatal errors to stderr only when stderr
                # is a terminal (otherwise to syslog, absent here): rerun the
                # check on a pty to get the reason.
                out = _run_on_pty([POSTFIX, "-c", str(self.etc), "check"], self._env(), timeout)
            raise PostfixError(f"{' '.join(cmd)} exited {r.returncode}:\n{out}"
                               f"\n-- maillog tail --\n{self.log()[-3000:]}")
        return r

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        env["MAIL_CONFIG"] = str(self.etc)
        return env

    # -- lifecycle ------------------------------------------------------------

    def _prepare(self) -> None:
        """Directories Postfix's create-missing does not make."""

    @property
    def pid_file(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"

    def master_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        state = stat[stat.rfind(")") + 2:].split()[0]
        return pid if comm == "master" and state != "Z" else None

    @property
    def running(self) -> bool:
        return self.master_pid() is not None

    def start(self, timeout: float = 15) -> "PostfixInstance":
        if self._removed:
            raise PostfixError("instance was removed")
        if self.running:
            return self
        if is_listening(self.ip, self.port):
            raise PostfixError(f"{self.ip}:{self.port} is already in use")
        self.write_config()
        self._prepare()
        self._run([POSTFIX, "-c", str(self.etc), "start"], timeout=timeout)
        self._master_pid = wait_until(self.master_pid, timeout, what=f"postfix {self.name} master pid")
        try:
            wait_until(lambda: is_listening(self.ip, self.port), timeout,
                       what=f"postfix {self.name} listening on {self.ip}:{self.port}")
        except TimeoutError as e:
            raise PostfixError(f"{e}\n-- maillog --\n{self.log()[-3000:]}") from None
        return self

    def stop(self, timeout: float = 10) -> None:
        """Stop the whole instance (master and every child); afterwards the port refuses connections."""
        pid = self.master_pid() or self._master_pid
        if pid is None:
            return
        # What `postfix stop` does (SIGTERM to master, which TERMs its process
        # group), without its one-second polling sleep.
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

        def group_gone() -> bool:
            return not _live_group_members(pid)

        try:
            wait_until(group_gone, timeout, what=f"postfix {self.name} to exit")
        except TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_until(group_gone, 5, what=f"postfix {self.name} to die")
        self._master_pid = None
        wait_until(lambda: not is_listening(self.ip, self.port), 5,
                   what=f"{self.ip}:{self.port} to close")

    def restart(self) -> "PostfixInstance":
        self.stop()
        return self.start()

    def reload(self, timeout: float = 10) -> None:
        """postfix reload, and wait until the master logged that it re-read its configuration."""
        before = self.log().count("reload -- version")
        self._run([POSTFIX, "-c", str(self.etc), "reload"])
        self.wait_for_log_count("reload -- version", before + 1, timeout)

    def wait_for_log_count(self, text: str, count: int, timeout: float = 10) -> None:
        """Wait (bounded) until `text` occurs at least `count` times in the maillog."""
        try:
            wait_until(lambda: self.log().count(text) >= count, timeout, interval=0.05,
                       what=f"{count}x {text!r} in {self.name} maillog")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n-- maillog tail --\n{self.log()[-3000:]}") from None

    def remove(self) -> None:
        """Stop and delete the instance directory."""
        try:
            self.stop()
        finally:
            self._removed = True
            _LIVE.pop(str(self.root), None)
            if not os.environ.get("POSTERN_KEEP_PF"):
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.remove()

    # -- observation ------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10) -> re.Match:
        """Wait (bounded) until the maillog matches the regex; returns the match."""
        rx = re.compile(pattern)
        try:
            return wait_until(lambda: rx.search(self.log()), timeout, interval=0.1,
                              what=f"/{pattern}/ in {self.name} maillog")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n-- maillog tail --\n{self.log()[-3000:]}") from None

    def queue(self) -> list[dict]:
        """Queued messages (postqueue -j): queue_name, queue_id, sender, recipients[{address, delay_reason}]."""
        r = self._run([POSTQUEUE, "-c", str(self.etc), "-j"])
        return [json.loads(line) for line in r.stdout.decode().splitlines() if line.strip()]

    def flush(self) -> None:
        """Retry deferred mail now (postqueue -f)."""
        self._run([POSTQUEUE, "-c", str(self.etc), "-f"])

    def send(self, sender: str, rcpts: Sequence[str] | str, data: bytes | str, **kw) -> dict:
        """Submit a message to this instance's listener with smtplib."""
        return smtp_send(self.ip, self.port, sender, rcpts, data, **kw)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.ip}:{self.port} root={self.root}>"


class DownstreamPostfix(PostfixInstance):
    """A receiving MTA: accepts mail for `domains` into Maildirs.

    tls: None (STARTTLS not offered), "selfsigned", or "ca" (needs `ca`).
    recipient_access: {"address or domain": "550 5.1.1 No such user" | "450 4.2.0 Later" | "REJECT" ...}
    checked at RCPT (texthash; change with set_recipient_access()).
    ask_client_cert / client_ca_file: smtpd_tls_ask_ccert and smtpd_tls_CAfile, so the
    Received header names a client certificate (Postern's outbound client_certificate).
    """

    role = "downstream"

    def __init__(self, name: str = "downstream", ip: str = "127.0.0.3", port: int | None = None, *,
                 domains: Sequence[str] = ("partner.test",), hostname: str | None = None,
                 tls: str | None = None, ca: CertAuthority | None = None, tls_hostname: str | None = None,
                 recipient_access: dict[str, str] | None = None, ask_client_cert: bool = False,
                 client_ca_file: str | Path | None = None, key_type: str = "ec",
                 main_cf: dict[str, str] | None = None, base: str | None = None):
        if tls not in (None, "selfsigned", "ca"):
            raise ValueError(f"tls must be None, 'selfsigned' or 'ca', not {tls!r}")
        if tls == "ca" and ca is None:
            raise ValueError("tls='ca' needs ca=CertAuthority")
        domains = list(domains)
        super().__init__(name, ip, port, hostname=hostname or f"mx.{domains[0]}", main_cf=main_cf, base=base)
        self.domains = domains
        self.tls = tls
        self.tls_hostname = tls_hostname or self.hostname
        self.mail_dir = self.root / "mail"
        self.recipient_access = dict(recipient_access or {})
        self.ask_client_cert = ask_client_cert
        self.client_ca_file = Path(client_ca_file) if client_ca_file else None
        self.ca_file: Path | None = None
        self.cert_file: Path | None = None
        self.key_file: Path | None = None
        tls_dir = self.etc / "tls"
        if tls == "selfsigned":
            pair = make_self_signed(tls_dir, self.tls_hostname, key_type=key_type)
            self.cert_file, self.key_file = pair
            self.ca_file = pair.cert   # the only way to "trust" a self-signed cert
        elif tls == "ca":
            assert ca is not None
            pair = ca.issue(self.tls_hostname, directory=tls_dir, key_type=key_type)
            self.cert_file, self.key_file = pair
            self.ca_file = tls_dir / "ca.pem"
            shutil.copyfile(ca.cert, self.ca_file)
        if self.client_ca_file:
            tls_dir.mkdir(exist_ok=True)
            shutil.copyfile(self.client_ca_file, tls_dir / "client-ca.pem")

    def _main_cf(self) -> dict[str, str]:
        p = super()._main_cf()
        p.update({
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"texthash:{self.etc / 'vmailbox'}",
            "virtual_uid_maps": f"static:{self.uid}",
            "virtual_gid_maps": f"static:{self.gid}",
            "virtual_minimum_uid": str(min(self.uid, 100)),
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": f"check_recipient_access texthash:{self.etc / 'recipient_access'}",
            "default_transport": "error:5.7.1 downstream test MTA does not relay",
            "relay_transport": "error:5.7.1 downstream test MTA does not relay",
        })
        if self.tls:
            p.update({
                "smtpd_tls_security_level": "may",
                "smtpd_tls_chain_files": f"{self.key_file}, {self.cert_file}",
                "smtpd_tls_received_header": "yes",
            })
            if self.ask_client_cert:
                p["smtpd_tls_ask_ccert"] = "yes"
            if self.client_ca_file:
                p["smtpd_tls_CAfile"] = str(self.etc / "tls" / "client-ca.pem")
        return p

    def write_config(self) -> None:
        super().write_config()
        # Any local part is accepted; one Maildir per domain: mail/<domain>/
        # (virtual(8) refuses regexp substitutions, so no per-user boxes;
        # the Delivered-To header it adds tells the recipient).
        _write_config_file(self.etc / "vmailbox", "".join(f"@{d} {d}/\n" for d in self.domains))
        self._write_recipient_access()

    def _write_recipient_access(self) -> None:
        _write_config_file(
            self.etc / "recipient_access", "".join(f"{k} {v}\n" for k, v in self.recipient_access.items()) or "# none\n")

    def set_recipient_access(self, table: dict[str, str]) -> None:
        """Replace the RCPT access table (e.g. {"gone@partner.test": "550 5.1.1 No such user"}); reloads."""
        self.recipient_access = dict(table)
        self._write_recipient_access()
        if self.running:
            self.reload()

    def _prepare(self) -> None:
        self.mail_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.mail_dir, self.uid, self.gid)

    def _message_files(self) -> list[Path]:
        files: list[Path] = []
        for box in sorted(self.mail_dir.glob("*")):
            for sub in ("new", "cur"):
                d = box / sub
                if d.is_dir():
                    files += [f for f in d.iterdir() if f.is_file()]

        def key(f: Path):
            try:
                return (f.stat().st_mtime_ns, f.name)
            except OSError:
                return (0, f.name)
        return sorted(files, key=key)

    def messages(self, rcpt: str | None = None) -> list[bytes]:
        """Raw delivered messages, oldest first; one copy per recipient, each
        starting with the Delivered-To: and Return-Path: headers virtual(8) adds.
        rcpt= keeps only the copies delivered to that address."""
        out = []
        for f in self._message_files():
            try:
                raw = f.read_bytes()
            except OSError:
                continue
            if rcpt is None or delivered_to(raw) == rcpt.lower():
                out.append(raw)
        return out

    def wait_for_messages(self, n: int = 1, timeout: float = 10, rcpt: str | None = None) -> list[bytes]:
        """Wait (bounded) until at least n messages were delivered; returns them all."""
        try:
            return wait_until(lambda: (lambda m: m if len(m) >= n else None)(self.messages(rcpt)),
                              timeout, interval=0.05, what=f"{n} message(s) in {self.name}")
        except TimeoutError as e:
            raise AssertionError(f"{e} (have {len(self.messages(rcpt))})\n-- maillog tail --\n"
                                 f"{self.log()[-3000:]}") from None

    def clear_messages(self) -> None:
        for f in self._message_files():
            f.unlink(missing_ok=True)


class UpstreamPostfix(PostfixInstance):
    """A sending MTA: relays everything it receives (from 127.0.0.0/8) to [relay_host]:relay_port.

    tls_level: smtp_tls_security_level (none | may | encrypt | verify | secure).
    tls_ca_file: smtp_tls_CAfile (for verify/secure).
    tls_match: literal name(s) the server certificate must match, for verify/secure
        (smtp_tls_verify_cert_match / smtp_tls_secure_cert_match); default: nexthop.
    client_cert: CertPair presented as TLS client certificate (smtp_tls_chain_files).
    sni: smtp_tls_servername (SNI sent), e.g. "postern.test" or "hostname".
    Its SMTP client connects from `ip` (smtp_bind_address follows inet_interfaces).
    """

    role = "upstream"

    def __init__(self, name: str = "upstream", ip: str = "127.0.0.20", port: int | None = None, *,
                 relay_port: int, relay_host: str = "127.0.0.1", hostname: str | None = None,
                 tls_level: str = "encrypt", tls_ca_file: str | Path | None = None,
                 tls_match: str | None = None, client_cert: CertPair | None = None, sni: str | None = None,
                 main_cf: dict[str, str] | None = None, base: str | None = None):
        if tls_level not in ("none", "may", "encrypt", "verify", "secure", "dane", "dane-only", "fingerprint"):
            raise ValueError(f"bad tls_level {tls_level!r}")
        super().__init__(name, ip, port, hostname=hostname or f"{name}.origin.test", main_cf=main_cf, base=base)
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.tls_level = tls_level
        self.tls_match = tls_match
        self.sni = sni
        tls_dir = self.etc / "tls"
        self.tls_ca_file: Path | None = None
        if tls_ca_file:
            tls_dir.mkdir(exist_ok=True)
            self.tls_ca_file = tls_dir / "ca.pem"
            shutil.copyfile(tls_ca_file, self.tls_ca_file)
        self.client_cert: CertPair | None = None
        if client_cert:
            tls_dir.mkdir(exist_ok=True)
            self.client_cert = CertPair(tls_dir / "client.pem", tls_dir / "client.key")
            shutil.copyfile(client_cert.cert, self.client_cert.cert)
            shutil.copyfile(client_cert.key, self.client_cert.key)

    def _main_cf(self) -> dict[str, str]:
        p = super()._main_cf()
        host = self.relay_host if self.relay_host.startswith("[") else f"[{self.relay_host}]"
        p.update({
            "relayhost": f"{host}:{self.relay_port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtp_tls_security_level": self.tls_level,
            "smtp_helo_name": "$myhostname",
        })
        if self.tls_ca_file:
            p["smtp_tls_CAfile"] = str(self.tls_ca_file)
        if self.tls_match:
            p["smtp_tls_verify_cert_match"] = self.tls_match
            p["smtp_tls_secure_cert_match"] = self.tls_match
        if self.client_cert:
            p["smtp_tls_chain_files"] = f"{self.client_cert.key}, {self.client_cert.cert}"
        if self.sni:
            p["smtp_tls_servername"] = self.sni
        return p

    def set_relay(self, port: int, host: str | None = None) -> None:
        """Point relayhost elsewhere (reloads if running)."""
        self.relay_port = port
        if host:
            self.relay_host = host
        h = self.relay_host if self.relay_host.startswith("[") else f"[{self.relay_host}]"
        self.postconf(relayhost=f"{h}:{port}")

    def wait_for_tls_to_relay(self, timeout: float = 15) -> re.Match:
        """Wait for '... TLS connection established to HOST[IP]:PORT: TLSv1.x with cipher ...' in the log."""
        return self.wait_for_log(
            rf"(\w+) TLS connection established to [^\s\[]*\[{re.escape(self.relay_host.strip('[]'))}\]:"
            rf"{self.relay_port}: (\S+) with cipher (\S+)", timeout)

    def wait_for_relayed(self, count: int = 1, timeout: float = 15) -> list[str]:
        """Wait for `count` 'status=sent' lines for the relay; returns them."""
        rx = re.compile(r"^.*relay=[^ ]*\[" + re.escape(self.relay_host.strip("[]")) +
                        rf"\]:{self.relay_port},.*status=sent.*$", re.M)
        try:
            return wait_until(lambda: (lambda m: m if len(m) >= count else None)(rx.findall(self.log())),
                              timeout, interval=0.1, what=f"{count} relayed message(s) in {self.name}")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n-- maillog tail --\n{self.log()[-3000:]}") from None


def _cleanup_all() -> None:
    for inst in list(_LIVE.values()):
        try:
            inst.remove()
        except Exception:
            pass


atexit.register(_cleanup_all)


# ---------------------------------------------------------------------------
# pytest fixtures


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory) -> CertAuthority:
    """One test CA for the session (EC P-256); .cert is the PEM path, .issue(name, ...) makes leaves."""
    return CertAuthority(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture
def make_downstream(request, tls_ca):
    """Factory: make_downstream(name="downstream", ip="127.0.0.3", port=None, *, domains=("partner.test",),
    hostname=None, tls=None|"selfsigned"|"ca", tls_hostname=None, recipient_access=None,
    ask_client_cert=False, client_ca_file=None, main_cf=None, start=True) -> DownstreamPostfix.
    tls="ca" uses the session `tls_ca` unless ca= is given."""
    made_all: list[PostfixInstance] = []

    def make(*args, start: bool = True, **kw):
        if kw.get("tls") == "ca":
            kw.setdefault("ca", tls_ca)
        inst = DownstreamPostfix(*args, **kw)
        made_all.append(inst)
        if start:
            inst.start()
        return inst

    _register_for_report(request, made_all)
    yield make
    _remove_all(made_all)


@pytest.fixture
def make_upstream(request):
    """Factory: make_upstream(name="upstream", ip="127.0.0.20", port=None, *, relay_port, relay_host="127.0.0.1",
    tls_level="encrypt", tls_ca_file=None, tls_match=None, client_cert=None, sni=None, main_cf=None,
    start=True) -> UpstreamPostfix."""
    made_all: list[PostfixInstance] = []

    def make(*args, start: bool = True, **kw):
        inst = UpstreamPostfix(*args, **kw)
        made_all.append(inst)
        if start:
            inst.start()
        return inst

    _register_for_report(request, made_all)
    yield make
    _remove_all(made_all)


def _register_for_report(request, made: list) -> None:
    lst = getattr(request.node, "_postfix_instances", None)
    if lst is None:
        lst = []
        request.node._postfix_instances = lst
    lst.append(made)


def _remove_all(made: list[PostfixInstance]) -> None:
    errors = []
    for inst in made:
        try:
            inst.remove()
        except Exception as e:  # keep removing the others
            errors.append(f"{inst!r}: {e}")
    if errors:
        raise PostfixError("teardown failed: " + "; ".join(errors))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When this module is loaded as a plugin: attach each Postfix maillog tail to a failed test."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for made in getattr(item, "_postfix_instances", []):
            for inst in made:
                report.sections.append((f"postfix {inst.name} maillog (tail)", inst.log()[-3000:]))
