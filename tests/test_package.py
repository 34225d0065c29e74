"""The Debian package, installed like a real service.

Builds the .deb from the release binary the test command built
(packaging/build-deb.sh), checks its contents and maintainer scripts, installs
it with dpkg, and runs the installed binary with the installed config (moved
to loopback ports) the way postern.service would: as user postern with only
CAP_NET_BIND_SERVICE (setpriv, as the unit's User= and AmbientCapabilities=
do), on a port below 1024, with systemd's readiness protocol spoken to a
NOTIFY_SOCKET this test listens on. A message goes through it, lands in
/var/lib/postern; SIGHUP reloads; SIGTERM stops. Then dpkg -r and dpkg -P
leave no conffile behind, and the data directory is handled as README says
(kept while mail is queued, removed otherwise).

Needs root (dpkg -i). It refuses to touch a Postern installed for real.
"""

import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from postern_testlib import (REPO_ROOT, free_port, insecure_context, make_message, postern_bin,
                             queued_id)

DATA = Path("/var/lib/postern")
ETC = Path("/etc/postern")
CONFIG = ETC / "postern.toml"
UNIT = Path("/lib/systemd/system/postern.service")
# Written into the data directory by this test: what it may clean up.
MARKER = DATA / ".installed-by-test_package"
CAP_NET_BIND_SERVICE = 10

# As postern.service runs it: User=postern, AmbientCapabilities= and
# CapabilityBoundingSet=CAP_NET_BIND_SERVICE, NoNewPrivileges=yes.
AS_SERVICE = ["setpriv", "--reuid", "postern", "--regid", "postern", "--init-groups",
              "--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service",
              "--bounding-set", "-all,+net_bind_service", "--no-new-privs"]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "installing a package needs root"
    for tool in ("dpkg", "dpkg-deb", "dpkg-shlibdeps", "setpriv", "objcopy"):
        if not shutil.which(tool):
            return f"{tool} is missing"
    return None


if _missing() is not None and os.environ.get("CI"):
    raise RuntimeError(f"package test cannot run: {_missing()}")
pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def sh(*cmd: str, ok: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if ok:
        assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def status() -> str:
    """dpkg's status of the postern package ("" when unknown to dpkg)."""
    p = sh("dpkg-query", "-W", "-f=${Status}", "postern", ok=False)
    return p.stdout.strip() if p.returncode == 0 else ""


def clean_slate() -> None:
    """Remove what an earlier run of this test left; never a real install."""
    if (status() or DATA.exists()) and not MARKER.exists():
        pytest.fail(f"postern is installed here, or {DATA} exists, and not by this test "
                    f"(no {MARKER}): refusing to remove it")
    if status():
        sh("dpkg", "--purge", "postern")
    shutil.rmtree(DATA, ignore_errors=True)


@pytest.fixture
def deb(tmp_path):
    binary = postern_bin()
    assert binary.exists(), f"{binary} is missing: cargo build --release -p postern"
    out = sh(str(REPO_ROOT / "packaging" / "build-deb.sh"), str(binary), str(tmp_path / "out"),
             timeout=300).stdout.strip().splitlines()[-1]
    clean_slate()
    yield Path(out)
    clean_slate()


def unit_directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def check_contents(deb: Path, tmp_path: Path) -> None:
    listing = sh("dpkg-deb", "-c", str(deb)).stdout
    entries = {line.split()[-1]: line.split()[0:2] for line in listing.splitlines()}
    assert entries["./usr/bin/postern"] == ["-rwxr-xr-x", "root/root"], listing
    assert entries["./etc/postern/postern.toml"] == ["-rw-r--r--", "root/root"], listing
    assert entries["./lib/systemd/system/postern.service"][1] == "root/root", listing
    info = sh("dpkg-deb", "-I", str(deb)).stdout
    assert re.search(r"^ Package: postern$", info, re.M), info
    assert re.search(r"^ Depends: .*libc6 \(>= [0-9.]+\)", info, re.M), info
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+{script}\b", info, re.M), info

    control = tmp_path / "control"
    sh("dpkg-deb", "-e", str(deb), str(control))
    assert (control / "conffiles").read_text().split() == ["/etc/postern/postern.toml"]
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        sh("sh", "-n", str(path))
    postrm = (control / "postrm").read_text()
    assert "purge)" in postrm and "/var/lib/postern" in postrm

    files = tmp_path / "files"
    sh("dpkg-deb", "-x", str(deb), str(files))
    config = (files / "etc/postern/postern.toml").read_text()
    assert re.search(r'^listen = \["0\.0\.0\.0:25"\]', config, re.M), config
    assert re.search(r'^data_dir = "/var/lib/postern"', config, re.M), config
    unit = unit_directives((files / "lib/systemd/system/postern.service").read_text())
    for key, value in {
        "Type": "notify", "User": "postern", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/postern", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ExecStart": "/usr/bin/postern --config /etc/postern/postern.toml run",
    }.items():
        assert unit.get(key) == [value], f"{key}: {unit.get(key)}"


def loopback_port_below_1024() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 700..999 on 127.0.0.1")


class Notifications:
    """The systemd side of sd_notify: an abstract datagram socket."""

    def __init__(self):
        self.name = f"postern-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)

    @property
    def env(self) -> str:
        return "@" + self.name

    def expect(self, state: str, proc: subprocess.Popen, timeout: float = 60) -> list[str]:
        """Datagrams until one carries `state` (e.g. READY=1); all of them."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                seen.append(self.sock.recv(4096).decode())
            except socket.timeout:
                assert proc.poll() is None, f"gateway exited ({proc.returncode}) before {state}"
                continue
            if state in seen[-1].splitlines():
                return seen
        raise AssertionError(f"no {state} within {timeout}s; got {seen}")

    def close(self):
        self.sock.close()


def configure_for_test(smtp_port: int, admin_port: int) -> None:
    """The installed config, moved to loopback ports, delivery held."""
    text = CONFIG.read_text()
    text, n = re.subn(r'^listen = \["0\.0\.0\.0:25"\]', f'listen = ["127.0.0.1:{smtp_port}"]',
                      text, flags=re.M)
    assert n == 1, text
    text, n = re.subn(r'^listen = "127\.0\.0\.1:8025"', f'listen = "127.0.0.1:{admin_port}"',
                      text, flags=re.M)
    assert n == 1, text
    CONFIG.write_text(text + "\n[delivery]\npaused = true\n")


def capabilities(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            fields[key] = int(value.strip(), 16)
        if key in ("Uid", "Gid"):
            fields[key] = {int(v) for v in value.split()}
    return fields


def test_package_installs_runs_and_purges(deb, tmp_path):
    check_contents(deb, tmp_path)

    sh("dpkg", "-i", str(deb))
    MARKER.touch()
    assert status() == "install ok installed"
    user = pwd.getpwnam("postern")
    st = DATA.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (user.pw_uid, user.pw_gid, 0o750)
    store = DATA / "postern.db"
    assert store.exists() and store.stat().st_uid == user.pw_uid, "postinst creates the store as postern"
    assert "/etc/postern/postern.toml" in sh("dpkg-query", "-W", "-f=${Conffiles}", "postern").stdout

    if shutil.which("systemd-analyze"):
        v = sh("systemd-analyze", "verify", str(UNIT), ok=False)
        assert v.returncode == 0 and "postern.service" not in v.stdout + v.stderr, v.stdout + v.stderr

    smtp_port, admin_port = loopback_port_below_1024(), free_port()
    configure_for_test(smtp_port, admin_port)
    notify = Notifications()
    stderr_path = tmp_path / "gateway.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [*AS_SERVICE, "/usr/bin/postern", "--config", str(CONFIG), "run"],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd="/",
            env={"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": notify.env})
    try:
        notify.expect("READY=1", proc)
        # READY=1 means bound: the port answers now, no retry.
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
            s.ehlo("client.package.test")
            s.mail("sender@package.test")
            s.rcpt("rcpt@b.test")
            code, reply = s.data(make_message("package-test"))
        assert code == 250, reply
        qid = queued_id(reply)
        assert qid, reply
        spooled = DATA / "spool" / "queue" / qid
        assert spooled.exists() and spooled.stat().st_uid == user.pw_uid
        assert re.search(rf" accepted id={qid} ", (DATA / "mail.log").read_text())

        caps = capabilities(proc.pid)
        assert caps["Uid"] == {user.pw_uid} and caps["Gid"] == {user.pw_gid}, caps
        assert caps["CapEff"] == 1 << CAP_NET_BIND_SERVICE, hex(caps["CapEff"])
        assert caps["CapBnd"] == 1 << CAP_NET_BIND_SERVICE, hex(caps["CapBnd"])

        # systemctl reload: SIGHUP, RELOADING=1 ... READY=1, still running;
        # the store is read again although nothing changed in it.
        reloads = stderr_path.read_text().count("settings reloaded")
        proc.send_signal(signal.SIGHUP)
        seen = notify.expect("READY=1", proc, timeout=30)
        assert any("RELOADING=1" in d.splitlines() for d in seen), seen
        assert proc.poll() is None
        text = stderr_path.read_text()
        assert "SIGHUP: re-reading settings and certificates" in text
        assert text.count("settings reloaded") == reloads + 1, text[-2000:]

        proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1", proc, timeout=30)
        assert proc.wait(30) == 0, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()

    # Remove: the binary goes; the (modified) conffile and the data stay.
    sh("dpkg", "-r", "postern")
    assert status() == "deinstall ok config-files"
    assert not Path("/usr/bin/postern").exists() and not UNIT.exists()
    assert CONFIG.exists()
    assert spooled.exists()

    # Purge with mail queued: the conffile goes, the queued mail stays.
    purge = sh("dpkg", "--purge", "postern")
    assert status() == ""
    assert not ETC.exists(), list(ETC.iterdir())
    assert spooled.exists(), "a purge must not delete queued mail"
    assert "/var/lib/postern kept: 1 queued" in purge.stderr + purge.stdout
    assert pwd.getpwnam("postern").pw_uid == user.pw_uid, "the postern user stays"

    # Installed again, the mail is there; once it is gone, purge removes all.
    sh("dpkg", "-i", str(deb))
    assert re.search(r'^listen = \["0\.0\.0\.0:25"\]', CONFIG.read_text(), re.M)
    listed = sh(*AS_SERVICE, "/usr/bin/postern", "--config", str(CONFIG), "queue", "list").stdout
    assert qid in listed, listed
    sh(*AS_SERVICE, "/usr/bin/postern", "--config", str(CONFIG), "queue", "delete", qid)
    sh("dpkg", "--purge", "postern")
    assert not ETC.exists() and not DATA.exists()


def expand_syscall_filter(spec: list[str]) -> tuple[set[str], set[str]]:
    """(allowed, denied) system calls of the unit's SystemCallFilter= lines,
    groups expanded by systemd-analyze."""
    listing = sh("systemd-analyze", "syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.split()[0])

    def expand(name: str, depth: int = 0) -> set[str]:
        assert depth < 10, f"group nesting too deep at {name}"
        if not name.startswith("@"):
            return {name}
        assert name in groups, f"systemd-analyze knows no group {name}"
        return set().union(*(expand(n, depth + 1) for n in groups[name]))

    allowed: set[str] = set()
    denied: set[str] = set()
    for value in spec:
        deny = value.startswith("~")
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        (denied if deny else allowed).update(names)
    return allowed, denied


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not shutil.which("strace"),
                    reason="needs systemd-analyze and strace")
def test_gateway_stays_within_the_units_syscall_filter():
    """No systemd runs here, so postern.service's SystemCallFilter= is
    checked this way: every system call the gateway makes (start as the
    unit starts it, STARTTLS and implicit-TLS mail, HTTPS admin, SIGHUP,
    SIGTERM) is in what the filter allows. A call outside it would fail with
    EPERM under systemd."""
    unit = unit_directives((REPO_ROOT / "packaging" / "postern.service").read_text())
    allowed, denied = expand_syscall_filter(unit["SystemCallFilter"])
    assert allowed, unit["SystemCallFilter"]

    root = Path(tempfile.mkdtemp(prefix="postern-syscalls-", dir="/var/tmp"))
    try:
        os.chmod(root, 0o711)
        user = pwd.getpwnam("postern")
        (root / "data").mkdir(mode=0o750)
        os.chown(root / "data", user.pw_uid, user.pw_gid)
        smtp, implicit, admin = loopback_port_below_1024(), free_port(), free_port()
        config = root / "postern.toml"
        config.write_text(f"""data_dir = "data"
hostname = "mx.syscalls.test"
[smtp]
listen = ["127.0.0.1:{smtp}"]
listen_implicit_tls = ["127.0.0.1:{implicit}"]
[delivery]
paused = true
[admin]
listen = "127.0.0.1:{admin}"
""")
        trace = root / "data" / "strace.out"  # written as postern
        notify = Notifications()
        with open(root / "stderr", "wb") as stderr:
            proc = subprocess.Popen(
                [*AS_SERVICE, "strace", "-f", "-qq", "-o", str(trace),
                 str(postern_bin()), "--config", str(config), "run"],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=root,
                env={"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": notify.env})
        try:
            notify.expect("READY=1", proc, timeout=120)
            with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
                s.starttls(context=insecure_context())
                s.sendmail("a@syscalls.test", ["b@b.test"], make_message("syscalls-starttls"))
            with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=insecure_context()) as s:
                s.sendmail("a@syscalls.test", ["c@b.test"], make_message("syscalls-implicit"))
            with socket.create_connection(("127.0.0.1", admin), timeout=30) as raw:
                with insecure_context().wrap_socket(raw) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    assert tls.recv(64).startswith(b"HTTP/1.1 ")
            # Signals go to the gateway, not to strace (its parent).
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert len(children) == 1, children
            gateway = int(children[0])
            os.kill(gateway, signal.SIGHUP)
            notify.expect("READY=1", proc, timeout=60)
            os.kill(gateway, signal.SIGTERM)
            assert proc.wait(60) == 0, (root / "stderr").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            notify.close()

        used = set(re.findall(r"^\d+ +([a-z0-9_]+)\(", trace.read_text(), re.M))
        used.discard("execve")  # strace starting the binary, before systemd's filter applies
        assert len(used) > 20, sorted(used)
        outside = sorted(used - allowed)
        assert not outside, f"system calls SystemCallFilter= does not allow: {outside}"
        refused = sorted(used & denied)
        assert not refused, f"system calls SystemCallFilter=~ refuses: {refused}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
