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
import time
from pathlib import Path

import pytest

from postern_testlib import REPO_ROOT, free_port, make_message, postern_bin, queued_id

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

        # systemctl reload: SIGHUP, RELOADING=1 ... READY=1, still running.
        proc.send_signal(signal.SIGHUP)
        seen = notify.expect("READY=1", proc, timeout=30)
        assert any("RELOADING=1" in d.splitlines() for d in seen), seen
        assert proc.poll() is None
        assert "SIGHUP: re-reading settings and certificates" in stderr_path.read_text()

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
