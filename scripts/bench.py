#!/usr/bin/env python3
"""Postern vs Postfix, side by side (called by scripts/bench.sh; see docs/performance.md).

One run sets up, on loopback:
  * the sink (`postern-bench sink`): two SMTP listeners, one plaintext only and
    one offering STARTTLS (ECDSA P-256 certificate), no disk, counting by token;
  * Postern, relaying plain.sink.bench and tls.sink.bench to those listeners
    via [[domain]] next_hop, with an RSA-4096 certificate (tls.inbound.certificate)
    and, unless --rsa-only, an ECDSA P-256 one beside it (tls.inbound.ecdsa_certificate);
  * a private Postfix instance (`postfix -c DIR`, never the system one) as the
    same relay: the same RSA-4096 (and ECDSA) certificates and keys, STARTTLS offered
    inbound (smtpd_tls_security_level = may), opportunistic TLS outbound
    (smtp_tls_security_level = may), routed with transport_maps to the same
    two sink listeners; TLS session caches as in Debian's default main.cf;
  * beside it, unless --peers or --no-postfix says otherwise, private Exim and
    OpenSMTPD relays configured the same way (scripts/bench_peers.py; unpacked
    from Debian by scripts/bench-peers-setup.sh), with a four-way table.
Then for every case and round it runs the identical `postern-bench load`
against Postern and against Postfix (alternating which goes first), each run
verifying that every accepted message reached the sink exactly once and
intact, and reports medians and the Postern/Postfix ratio per case.

CPU and memory come from /proc (postern-bench --watch-pid): Postern is one
process; Postfix is its master process plus every process in the master's
process group (all its children), plus the CPU time of children the master
has already reaped (cutime/cstime). CPU is counted from the start of the load
until the MTA's queue directory is empty again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_peers  # Exim and OpenSMTPD beside Postfix (scripts/bench_peers.py)

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Listener ports for the bench's MTAs and sinks. Not from bind(0): that is
# an ephemeral port, which the load generator's own outgoing connections
# (tens of thousands in the idle test) may take as source ports before the
# MTA binds it. Below the tests' range (12000 up, tests/postern_testlib.py),
# so a bench beside a test run does not take the tests' ports either.
_BENCH_PORTS = range(10000, 12000)
_bench_ports_given: set[int] = set()


def free_port() -> int:
    for _ in range(500):
        port = random.choice(_BENCH_PORTS)
        if port in _bench_ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _bench_ports_given.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {_BENCH_PORTS.start}-{_BENCH_PORTS.stop - 1}")


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {timeout}s")


def run(cmd: list[str], env: dict | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def backdate(path: Path) -> None:
    # Postfix waits ~2 s before reading a main.cf or table modified in the last second or two.
    t = time.time() - 60
    os.utime(path, (t, t))


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(entry))
    return out


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict:
    model = ""
    try:
        for line in run(["lscpu"]).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except Exception:
        pass
    git = {}
    try:
        git["commit"] = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        git["dirty_files"] = len(run(["git", "-C", str(REPO), "status", "--porcelain"]).stdout.splitlines())
    except Exception:
        pass
    pf = ""
    try:
        pf = run(["postconf", "-d", "-h", "mail_version"]).stdout.strip()
    except Exception:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except Exception:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release, "memory": mem,
            "postfix": pf, "git": git, "nofile": run(["sh", "-c", "ulimit -n"]).stdout.strip()}


# ---------------------------------------------------------------------------
# the three parties


class Sink:
    def __init__(self, bench: Path, root: Path):
        self.plain = free_port()
        self.tls = free_port()
        self.control = free_port()
        key, cert = root / "sink.key", root / "sink.pem"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=sink.bench",
             "-addext", "subjectAltName=DNS:sink.bench"])
        self.log = open(root / "sink.log", "w")
        self.proc = subprocess.Popen(
            [str(bench), "--threads", "1", "sink", "--listen", f"127.0.0.1:{self.plain}",
             "--listen-tls", f"127.0.0.1:{self.tls}", "--cert", str(cert), "--key", str(key),
             "--control", f"127.0.0.1:{self.control}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.control, 10, "sink", self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# Postern's mta.max_connections and max_connections_per_client in the bench
# (validated range: 1 to 100,000).
MAX_CONNECTIONS = 60000


class Postern:
    def __init__(self, binary: Path, root: Path, sink: Sink, cert: Path, key: Path, name: str = "postern",
                 ecdsa: tuple[Path, Path] | None = None, store: str | None = None, extra_toml: str = ""):
        self.name = name
        self.bin = binary
        self.root = root
        root.mkdir(mode=0o755)
        self.port = free_port()
        self.port_tls = free_port()
        self.config = root / "postern.toml"
        self.env = dict(os.environ, POSTERN_CONFIG=str(self.config))
        user = self._user()
        self.config.write_text(
            (f'user = "{user}"\n' if user else "")
            + (f'store = "{store}"\nnode_name = "{name}"\n' if store else "")
            + 'hostname = "postern.bench"\ndata_dir = "data"\n'
            + f'[smtp]\nlisten = ["127.0.0.1:{self.port}"]\nlisten_implicit_tls = ["127.0.0.1:{self.port_tls}"]\n'
            + f'[delivery]\nmx_port = {sink.plain}\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
            + (extra_toml.replace("\\n", "\n") + "\n" if extra_toml else ""))
        if user and run([str(binary), "check"], env=self.env, check=False).returncode != 0:
            # A build without the `user` key (privilege drop): run as is.
            self.config.write_text(self.config.read_text().replace(f'user = "{user}"\n', ""))
        self.cli("cert", "import", "--name", "bench", "--cert", str(cert), "--key", str(key))
        self.cli("settings", "set", "tls.inbound.certificate", "bench")
        if ecdsa:
            self.cli("cert", "import", "--name", "bench-ecdsa", "--cert", str(ecdsa[0]), "--key", str(ecdsa[1]))
            r = run([str(self.bin), "settings", "set", "tls.inbound.ecdsa_certificate", "bench-ecdsa"],
                    env=self.env, check=False)
            if r.returncode != 0:
                log(f"{name}: this build has no tls.inbound.ecdsa_certificate; it serves RSA only")
        settings = self.cli("settings", "export").stdout
        # Connection limits up for the idle-connection test (defaults: 1000
        # in total, 50 per client address; 50,000 held with --idle-max 50000,
        # plus room for the load runs); short retry backoff so a
        # transient failure shows as delay, not as a missing message.
        for old, new in [("max_connections = 1000", f"max_connections = {MAX_CONNECTIONS}"),
                         ("max_connections_per_client = 50", f"max_connections_per_client = {MAX_CONNECTIONS}"),
                         ('min_backoff = "5m"', 'min_backoff = "1s"'),
                         ('max_backoff = "1h"', 'max_backoff = "5s"')]:
            settings = settings.replace(old, new)
        settings += (f'\n[[domain]]\nname = "plain.sink.bench"\nnext_hop = "[127.0.0.1]:{sink.plain}"\n'
                     f'\n[[domain]]\nname = "tls.sink.bench"\nnext_hop = "[127.0.0.1]:{sink.tls}"\n')
        (root / "settings.toml").write_text(settings)
        self.cli("settings", "import", str(root / "settings.toml"))
        self.queue_dirs = [root / "data" / "spool" / "queue"]
        self.proc: subprocess.Popen | None = None
        self.out = None

    @staticmethod
    def _user() -> str | None:
        if os.geteuid() != 0:
            return None
        for name in ("postern", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        return None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run([str(self.bin), *args], env=self.env)

    def start(self) -> None:
        self.out = open(self.root / "postern.stderr", "a")
        self.proc = subprocess.Popen([str(self.bin), "run"], env=self.env, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, 30, "postern", self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.out:
            self.out.close()


MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet  n       -       n       -       -       smtpd
127.0.0.1:{port_tls} inet  n       -       n       -       -       smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup    unix  n       -       n       60      1       pickup
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
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private instance (`postfix -c ROOT/etc`): no chroot, loopback only, no DNS."""

    name = "postfix"

    def __init__(self, root: Path, sink: Sink, cert: Path, key: Path, ecdsa: tuple[Path, Path] | None = None):
        self.root = root
        root.mkdir(mode=0o755)
        self.etc = root / "etc"
        self.queue = root / "queue"
        (self.etc / "tls").mkdir(parents=True)
        self.queue.mkdir()
        shutil.copyfile(cert, self.etc / "tls" / "mta.pem")
        shutil.copyfile(key, self.etc / "tls" / "mta.key")
        os.chmod(self.etc / "tls" / "mta.key", 0o600)
        chain_files = [self.etc / "tls" / "mta.key", self.etc / "tls" / "mta.pem"]
        if ecdsa:
            # The same ECDSA certificate Postern serves, beside the RSA one.
            shutil.copyfile(ecdsa[0], self.etc / "tls" / "mta-ec.pem")
            shutil.copyfile(ecdsa[1], self.etc / "tls" / "mta-ec.key")
            os.chmod(self.etc / "tls" / "mta-ec.key", 0o600)
            chain_files += [self.etc / "tls" / "mta-ec.key", self.etc / "tls" / "mta-ec.pem"]
        self.port = free_port()
        self.port_tls = free_port()
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "myhostname": "postfix.bench",
            "mydomain": "bench",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "transport_maps": f"texthash:{self.etc / 'transport'}",
            "relayhost": f"[127.0.0.1]:{sink.tls}",
            "maillog_file": str(root / "maillog"),
            "maillog_file_prefixes": str(root),
            "syslog_name": "postfix-bench",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            # No DNS: the system resolver is not on loopback.
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "message_size_limit": "104857600",
            # TLS as in Debian's default main.cf, with the bench certificate.
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": ", ".join(str(f) for f in chain_files),
            "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
            "smtp_tls_security_level": "may",
            "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in params.items()))
        (self.etc / "master.cf").write_text(MASTER_CF.format(port=self.port, port_tls=self.port_tls))
        (self.etc / "transport").write_text(f"plain.sink.bench smtp:[127.0.0.1]:{sink.plain}\n"
                                            f"tls.sink.bench smtp:[127.0.0.1]:{sink.tls}\n")
        for f in ("main.cf", "master.cf", "transport"):
            backdate(self.etc / f)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        self.env["MAIL_CONFIG"] = str(self.etc)
        self.queue_dirs = [self.queue / d for d in ("incoming", "active", "deferred", "hold", "maildrop")]
        self._pid: int | None = None

    def start(self) -> None:
        run(["postfix", "-c", str(self.etc), "start"], env=self.env, timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
                os.kill(pid, 0)
                self._pid = pid
                break
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if self._pid is None:
            raise RuntimeError("postfix master did not start:\n" + self.maillog()[-3000:])
        wait_port(self.port, 15, "postfix")

    def maillog(self) -> str:
        try:
            return (self.root / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self._pid is not None
        return self._pid

    def stop(self) -> None:
        if self._pid is None:
            return
        pid = self._pid
        try:
            os.kill(pid, signal.SIGTERM)   # what `postfix stop` does: master TERMs its process group
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_members(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._pid = None


# ---------------------------------------------------------------------------
# the matrix

# (name, mode, route, size, connections, messages per connection, extra load flags)
# "route" picks the sink listener: plain (no STARTTLS offered) or tls (STARTTLS
# offered; both MTAs use it opportunistically).
FULL_CASES = [
    ("plain-4k-c1", "plain", "plain", "4k", 1, 300, []),
    ("plain-4k-c10", "plain", "plain", "4k", 10, 150, []),
    ("plain-4k-c50", "plain", "plain", "4k", 50, 40, []),
    ("plain-100k-c10", "plain", "plain", "100k", 10, 50, []),
    ("tls-4k-c1", "starttls", "tls", "4k", 1, 300, []),
    ("tls-4k-c10", "starttls", "tls", "4k", 10, 150, []),
    ("tls-4k-c50", "starttls", "tls", "4k", 50, 40, []),
    ("tls-100k-c10", "starttls", "tls", "100k", 10, 50, []),
    ("newconn-tls-4k-c1", "starttls", "tls", "4k", 1, 100, ["--new-connection-per-message", "--no-resume"]),
    ("newconn-tls-4k-c10", "starttls", "tls", "4k", 10, 40, ["--new-connection-per-message", "--no-resume"]),
    ("newconn-tls-4k-c50", "starttls", "tls", "4k", 50, 12, ["--new-connection-per-message", "--no-resume"]),
    ("newconn-tls-100k-c10", "starttls", "tls", "100k", 10, 20, ["--new-connection-per-message", "--no-resume"]),
    ("newconn-tls-resume-4k-c10", "starttls", "tls", "4k", 10, 40, ["--new-connection-per-message"]),
    ("smtps-4k-c10", "implicit-tls", "tls", "4k", 10, 100, []),
    # The same offered load for both (open loop, below either MTA's
    # capacity): latency compared at equal throughput, not at equal
    # concurrency (where the faster MTA queues more messages in DATA→250).
    ("paced250-plain-4k-c50", "plain", "plain", "4k", 50, 20, ["--rate", "250"]),
    ("paced250-tls-4k-c50", "starttls", "tls", "4k", 50, 20, ["--rate", "250"]),
]

QUICK_CASES = [
    ("plain-4k-c10", "plain", "plain", "4k", 10, 40, []),
    ("tls-4k-c10", "starttls", "tls", "4k", 10, 40, []),
    ("newconn-tls-4k-c10", "starttls", "tls", "4k", 10, 10, ["--new-connection-per-message", "--no-resume"]),
    ("tls-100k-c10", "starttls", "tls", "100k", 10, 5, []),
]


def load(bench: Path, mta, sink: Sink, case, run_id: str, delivery_timeout: float) -> dict:
    name, mode, route, size, conns, msgs, extra = case
    port = mta.port_tls if mode == "implicit-tls" else mta.port
    cmd = [str(bench), "--threads", "1", "load", "--target", f"127.0.0.1:{port}", "--mode", mode,
           "-c", str(conns), "-m", str(msgs), "-s", size, "--rcpt", f"user@{route}.sink.bench",
           "--run", run_id, "--label", f"{name}/{mta.name}",
           "--sink-control", f"127.0.0.1:{sink.control}", "--delivery-timeout", str(delivery_timeout),
           "--watch-pid", str(mta.pid), *extra]
    for d in mta.queue_dirs:
        cmd += ["--queue-dir", str(d)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=delivery_timeout + 600)
    try:
        result = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RuntimeError(f"load failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    result["exit_code"] = r.returncode
    return result


# Connections per source address in the idle test: one source address to one
# listener port gets at most the ephemeral port range (32768-60999 here,
# ~28,000 ports), so larger counts are spread over 127.0.0.2, 127.0.0.3, ...
IDLE_PER_SOURCE = 20000


def idle_sources(n: int) -> int:
    """Source addresses `postern-bench idle --sources` needs for n connections."""
    return max(1, -(-n // IDLE_PER_SOURCE)) if n > IDLE_PER_SOURCE else 1


def descriptors_needed(n: int) -> int:
    """Open files each of Postern and the load generator need to hold n
    connections: one each, plus the rest (spool, store, listeners, deliveries)."""
    return n + 2048


def raise_nofile(n: int) -> tuple[int, int]:
    """Make room for n idle connections: the hard RLIMIT_NOFILE, inherited by
    Postern and postern-bench (each raises its own soft limit to it), goes up
    to what n needs when it is lower and we are root (up to fs.nr_open).
    Returns (soft, hard) of this process afterwards."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = descriptors_needed(n)
    if hard != resource.RLIM_INFINITY and hard < needed and os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = needed
        new_hard = min(needed, nr_open)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, new_hard), new_hard))
            log(f"open-files hard limit raised from {hard} to {new_hard} for {n} idle connections")
        except (ValueError, OSError) as e:
            log(f"could not raise the open-files hard limit from {hard} to {new_hard}: {e}")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        log(f"WARNING: open-files hard limit {hard} < {needed}: {n} idle connections will not all be held")
    return soft, hard


def idle(bench: Path, mta, n: int, mode: str = "plain", hold: float = 5.0, sources: int | None = None) -> dict:
    sources = idle_sources(n) if sources is None else sources
    cmd = [str(bench), "--threads", "1", "idle", "--target", f"127.0.0.1:{mta.port}", "--mode", mode,
           "-n", str(n), "--hold", str(hold), "--watch-pid", str(mta.pid), "--label", f"idle-{n}/{mta.name}",
           "--sources", str(sources)]
    # 50,000 STARTTLS handshakes on two cores take a while.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600 + n * 0.02)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"exit {r.returncode}: {r.stdout[-2000:]} {r.stderr[-2000:]}"}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results: list[dict]) -> dict:
    """Medians over rounds of one case and one MTA."""
    def get(r, *path):
        for p in path:
            if r is None:
                return None
            r = r.get(p) if isinstance(r, dict) else None
        return r
    peak_mib = []
    for r in results:
        mta = r.get("mta", {})
        # Postern: its VmHWM; Postfix: the sampled peak of the summed RSS/PSS of its processes.
        if mta.get("peak_processes", 0) <= 1 and mta.get("leader_vmhwm_kib"):
            peak_mib.append((mta["leader_vmhwm_kib"] / 1024, mta["leader_vmhwm_kib"] / 1024))
        else:
            peak_mib.append((mta.get("peak_rss_sum_kib", 0) / 1024, mta.get("peak_pss_sum_kib", 0) / 1024))
    return {
        "rounds": len(results),
        "accepted_per_sec": median([r.get("accepted_per_sec") for r in results]),
        "delivered_per_sec": median([get(r, "delivery", "delivered_per_sec") for r in results]),
        "p50_ms": median([get(r, "latency_ms", "p50") for r in results]),
        "p99_ms": median([get(r, "latency_ms", "p99") for r in results]),
        "setup_p50_ms": median([get(r, "setup_ms", "p50") for r in results]),
        "outbound_connections": median([get(r, "delivery", "sink_connections") for r in results]),
        "outbound_tls_resumed": median([get(r, "delivery", "sink_tls_resumed") for r in results]),
        "cpu_per_1000": median([get(r, "mta", "cpu_secs_per_1000") for r in results]),
        "load_cpu_per_1000": median([r.get("load_cpu_secs_per_1000") for r in results]),
        "sink_cpu_per_1000": median([get(r, "delivery", "sink_cpu_secs_per_1000") for r in results]),
        "peak_rss_mib": median([p[0] for p in peak_mib]),
        "peak_pss_mib": median([p[1] for p in peak_mib]),
        "peak_threads": median([get(r, "mta", "peak_threads") for r in results]),
        "peak_processes": max((get(r, "mta", "peak_processes") or 0) for r in results) if results else 0,
        "exactly_once": all(get(r, "delivery", "exactly_once") and r.get("failed", 1) == 0 for r in results),
        "failed": sum(r.get("failed", 0) for r in results),
        "problems": [p for r in results for p in (get(r, "delivery", "problems") or []) + r.get("errors", [])][:5],
    }


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.{digits}f}"


def report(meta: dict, summary: dict, idle_results: dict, cases) -> str:
    lines = []
    lines.append(f"Machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu']}), kernel "
                 f"{meta['machine']['kernel']}, {meta['machine']['memory']}; Postfix {meta['machine']['postfix']}; "
                 f"Postern at git {meta['machine'].get('git', {}).get('commit', '?')} "
                 f"(+{meta['machine'].get('git', {}).get('dirty_files', '?')} uncommitted files)")
    lines.append(f"Rounds: {meta['rounds']} (medians); load average before/after: "
                 f"{meta['load_before']} / {meta.get('load_after')}; started {meta['started']}, "
                 f"took {meta.get('duration_s', 0):.0f} s")
    lines.append(f"Server certificates: {meta.get('certificates', 'RSA-4096 only')}")
    lines.append("")
    lines.append("Ratios are Postern/Postfix: above 1 is better for msg/s, below 1 is better for latency and CPU.")
    lines.append("")
    lines.append("| case | accepted msg/s Postern / Postfix (ratio) | delivered msg/s Postern / Postfix (ratio) "
                 "| p50 DATA→250 ms | p99 DATA→250 ms (ratio) | CPU s per 1,000 msgs (ratio) "
                 "| peak memory MiB Postern / Postfix RSS (PSS) | exactly once |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for case in cases:
        name = case[0]
        p = summary.get(name, {}).get("postern")
        f = summary.get(name, {}).get("postfix")
        if not p and not f:
            continue
        p = p or {}
        f = f or {}
        ok = []
        for who, s in (("Postern", p), ("Postfix", f)):
            if s:
                ok.append(f"{who} {'yes' if s['exactly_once'] else 'NO'}")
        lines.append(
            f"| {name} "
            f"| {fmt(p.get('accepted_per_sec'))} / {fmt(f.get('accepted_per_sec'))} ({ratio(p.get('accepted_per_sec'), f.get('accepted_per_sec'))}) "
            f"| {fmt(p.get('delivered_per_sec'))} / {fmt(f.get('delivered_per_sec'))} ({ratio(p.get('delivered_per_sec'), f.get('delivered_per_sec'))}) "
            f"| {fmt(p.get('p50_ms'), 1)} / {fmt(f.get('p50_ms'), 1)} "
            f"| {fmt(p.get('p99_ms'), 1)} / {fmt(f.get('p99_ms'), 1)} ({ratio(p.get('p99_ms'), f.get('p99_ms'))}) "
            f"| {fmt(p.get('cpu_per_1000'), 2)} / {fmt(f.get('cpu_per_1000'), 2)} ({ratio(p.get('cpu_per_1000'), f.get('cpu_per_1000'))}) "
            f"| {fmt(p.get('peak_rss_mib'), 1)} / {fmt(f.get('peak_rss_mib'), 0)} ({fmt(f.get('peak_pss_mib'), 0)}) "
            f"| {', '.join(ok)} |")
    lines.append("")
    lines.append("Outbound side (median per run): messages, connections the MTA opened to the sink, "
                 "TLS handshakes resumed, and TLS connection setup of the load generator (connect → ready for MAIL, p50); "
                 "and the CPU the load generator (while sending) and the sink (until the last message arrived) "
                 "spent per 1,000 messages, on the same cores as the MTA.")
    lines.append("")
    lines.append("| case | messages | outbound connections Postern / Postfix | of which TLS resumed "
                 "| inbound setup p50 ms Postern / Postfix | load generator CPU s/1k, with Postern / Postfix "
                 "| sink CPU s/1k, with Postern / Postfix |")
    lines.append("|---|---|---|---|---|---|---|")
    for case in cases:
        p = summary.get(case[0], {}).get("postern") or {}
        f = summary.get(case[0], {}).get("postfix") or {}
        if not p and not f:
            continue
        lines.append(f"| {case[0]} | {case[4] * case[5]} | {fmt(p.get('outbound_connections'))} / {fmt(f.get('outbound_connections'))} "
                     f"| {fmt(p.get('outbound_tls_resumed'))} / {fmt(f.get('outbound_tls_resumed'))} "
                     f"| {fmt(p.get('setup_p50_ms'), 1)} / {fmt(f.get('setup_p50_ms'), 1)} "
                     f"| {fmt(p.get('load_cpu_per_1000'), 2)} / {fmt(f.get('load_cpu_per_1000'), 2)} "
                     f"| {fmt(p.get('sink_cpu_per_1000'), 2)} / {fmt(f.get('sink_cpu_per_1000'), 2)} |")
    problems = [(n, who, s["problems"]) for n, d in summary.items() for who, s in d.items() if s.get("problems")]
    if problems:
        lines.append("")
        lines.append("Problems seen:")
        for n, who, pr in problems:
            lines.append(f"- {n}/{who}: {'; '.join(pr)}")
    if idle_results:
        lines.append("")
        lines.append("| idle connections (after EHLO) | established | held after hold time | memory per connection |")
        lines.append("|---|---|---|---|")
        for key, r in idle_results.items():
            if "error" in r:
                lines.append(f"| {key} | error: {r['error'][:200]} | | |")
                continue
            per = r.get("rss_kib_per_connection")
            pss = r.get("pss_kib_per_connection")
            lines.append(f"| {key} | {r.get('established')}/{r.get('requested')} | {r.get('held')} "
                         f"(after {r.get('held_after_secs')} s) | {fmt(per, 1)} KiB RSS, {fmt(pss, 1)} KiB PSS |")
    return "\n".join(lines)


def report_ab(summary: dict, cases) -> str:
    lines = ["A/B: postern (--postern-bin) vs postern-b (--postern-b), medians; ratio = b/a",
             "",
             "| case | delivered msg/s a / b (ratio) | accepted msg/s a / b (ratio) | p99 ms a / b | CPU s/1k a / b (ratio) | peak threads a / b |",
             "|---|---|---|---|---|---|"]
    for case in cases:
        a = summary.get(case[0], {}).get("postern")
        b = summary.get(case[0], {}).get("postern-b")
        if not a or not b:
            continue
        lines.append(
            f"| {case[0]} | {fmt(a['delivered_per_sec'])} / {fmt(b['delivered_per_sec'])} ({ratio(b['delivered_per_sec'], a['delivered_per_sec'])}) "
            f"| {fmt(a['accepted_per_sec'])} / {fmt(b['accepted_per_sec'])} ({ratio(b['accepted_per_sec'], a['accepted_per_sec'])}) "
            f"| {fmt(a['p99_ms'], 1)} / {fmt(b['p99_ms'], 1)} "
            f"| {fmt(a['cpu_per_1000'], 2)} / {fmt(b['cpu_per_1000'], 2)} ({ratio(b['cpu_per_1000'], a['cpu_per_1000'])}) "
            f"| {fmt(a.get('peak_threads'))} / {fmt(b.get('peak_threads'))} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 small cases, 1 round, small idle test")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per case (default 5; --quick: 1)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--no-postfix", action="store_true", help="Postern only (no peer MTA at all)")
    ap.add_argument("--peers", default=None,
                    help="comma-separated MTAs beside Postern: postfix, exim, opensmtpd (default: all three; "
                         "Exim and OpenSMTPD when scripts/bench-peers-setup.sh has unpacked them)")
    ap.add_argument("--peers-root", default=str(bench_peers.DEFAULT_ROOT),
                    help="where Exim and OpenSMTPD are unpacked (default: %(default)s)")
    ap.add_argument("--rsa-only", action="store_true",
                    help="serve only the RSA-4096 certificate (no ECDSA certificate beside it, on either MTA)")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-connection tests")
    ap.add_argument("--idle", type=int, default=None, help="idle connections for the memory test (default 1000)")
    ap.add_argument("--idle-max", type=int, default=None,
                    help="idle connections Postern must hold, plaintext and STARTTLS (default 10000; "
                         "50000 for issue 15's scale target: spread over several source addresses, "
                         "and the open-files hard limit is raised when root)")
    ap.add_argument("--postern-bin", required=True)
    ap.add_argument("--bench-bin", required=True)
    ap.add_argument("--out", default=str(REPO / "target" / "bench"))
    ap.add_argument("--postern-b", default="", help="A/B: a second Postern binary, run as a third MTA "
                    "(\"postern-b\") in the same rotation; the report adds a postern-b/postern table")
    ap.add_argument("--postern-b-toml", default="",
                    help="A/B: lines appended to postern-b's postern.toml (\\n between lines), e.g. "
                         "'[spool]\\nsync = \"filesystem\"' to compare a setting with the same binary")
    ap.add_argument("--postern-store", default="",
                    help="also run Postern on this store (a postgres:// URL of an empty database) "
                         "as a third MTA, postern-pg, beside the embedded one")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, queues)")
    ap.add_argument("--delivery-timeout", type=float, default=120)
    args = ap.parse_args()

    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.only:
        wanted = set(args.only.split(","))
        pool = {c[0]: c for c in FULL_CASES + QUICK_CASES}
        unknown = wanted - pool.keys()
        if unknown:
            ap.error(f"unknown case(s) {sorted(unknown)}; known: {sorted(pool)}")
        cases = [pool[n] for n in args.only.split(",")]
    rounds = args.rounds or (1 if args.quick else 5)
    peers_root = Path(args.peers_root)
    if args.no_postfix:
        peers = []
    elif args.peers is not None:
        peers = [p for p in args.peers.split(",") if p]
        unknown = set(peers) - {"postfix", *bench_peers.CLASSES}
        if unknown:
            ap.error(f"unknown peer(s) {sorted(unknown)}; known: postfix, {', '.join(bench_peers.CLASSES)}")
        for p in peers:
            if p != "postfix" and not bench_peers.available(p, peers_root):
                ap.error(f"{p} is not unpacked in {peers_root}: run scripts/bench-peers-setup.sh")
    else:
        peers = ["postfix"] + [p for p in bench_peers.CLASSES if bench_peers.available(p, peers_root)]
        for p in bench_peers.CLASSES:
            if p not in peers:
                log(f"{p} not unpacked in {peers_root} (scripts/bench-peers-setup.sh): not run")
    args.no_postfix = "postfix" not in peers
    idle_n = args.idle or (200 if args.quick else 1000)
    idle_max = args.idle_max if args.idle_max is not None else (0 if args.quick else 10000)

    if idle_max > MAX_CONNECTIONS:
        ap.error(f"--idle-max {idle_max}: the bench's Postern allows {MAX_CONNECTIONS} connections")
    if not args.no_idle:
        raise_nofile(max(idle_n, idle_max))
    started = time.time()
    meta = {"started": dt.datetime.now().isoformat(timespec="seconds"), "rounds": rounds,
            "certificates": "RSA-4096 only" if args.rsa_only else "RSA-4096 + ECDSA P-256 (Postern, Postfix)",
            "peers": peers, "peer_versions": bench_peers.versions(peers_root),
            "quick": args.quick, "machine": machine(), "load_before": loadavg(),
            "argv": sys.argv[1:]}
    log(f"machine: {meta['machine']}")
    log(f"load average: {meta['load_before']}")
    if meta["load_before"][0] > 0.5:
        log("WARNING: 1-minute load average > 0.5: other work is running; figures are noisy")

    work = Path(tempfile.mkdtemp(prefix="postern-bench-", dir="/tmp"))
    os.chmod(work, 0o755)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    # Private copies, so a rebuild during the run cannot change what is measured.
    postern_bin = bin_dir / "postern"
    bench_bin = bin_dir / "postern-bench"
    shutil.copy2(args.postern_bin, postern_bin)
    shutil.copy2(args.bench_bin, bench_bin)
    os.chmod(bin_dir, 0o755)
    log(f"work directory {work}")

    cert, key = work / "mta.pem", work / "mta.key"
    run(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "30", "-subj", "/CN=mta.bench", "-addext", "subjectAltName=DNS:mta.bench"])
    ecdsa = None
    if not args.rsa_only:
        ecdsa = (work / "mta-ec.pem", work / "mta-ec.key")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ecdsa[1]), "-out", str(ecdsa[0]), "-days", "30", "-subj", "/CN=mta.bench",
             "-addext", "subjectAltName=DNS:mta.bench"])

    sink = Sink(bench_bin, work)
    mtas = []
    results: dict[str, dict[str, list]] = {}
    idle_results: dict[str, dict] = {}
    skipped: dict[str, list[str]] = {}   # MTA -> why some cases did not run against it
    ok = True
    try:
        postern = Postern(postern_bin, work / "postern", sink, cert, key, ecdsa=ecdsa)
        postern.start()
        mtas.append(postern)
        if args.postern_b:
            b_bin = bin_dir / "postern-b"
            shutil.copy2(args.postern_b, b_bin)
            postern_b = Postern(b_bin, work / "postern-b", sink, cert, key, name="postern-b", ecdsa=ecdsa,
                                extra_toml=args.postern_b_toml)
            postern_b.start()
            mtas.append(postern_b)
        if args.postern_store:
            postern_pg = Postern(postern_bin, work / "postern-pg", sink, cert, key, name="postern-pg",
                                 ecdsa=ecdsa, store=args.postern_store)
            postern_pg.start()
            mtas.append(postern_pg)
        if not args.no_postfix:
            postfix = Postfix(work / "postfix", sink, cert, key, ecdsa=ecdsa)
            postfix.start()
            mtas.append(postfix)
        for p in peers:
            if p in bench_peers.CLASSES:
                peer = bench_peers.CLASSES[p](work / p, sink, cert, key, ecdsa=ecdsa, peers_root=peers_root)
                peer.start()
                mtas.append(peer)
        if any(p in bench_peers.CLASSES for p in peers):
            meta["certificates"] += "; " + "; ".join(f"{m.name}: {m.certificates}" for m in mtas
                                                      if hasattr(m, "certificates"))
        log("started: " + ", ".join(f"{m.name} pid {m.pid} port {m.port}" for m in mtas)
            + f"; sink plain {sink.plain} tls {sink.tls}")

        # Warm-up (not measured): both routes, both MTAs.
        for m in mtas:
            for c in (("warm-plain", "plain", "plain", "4k", 2, 10, []),
                      ("warm-tls", "starttls", "tls", "4k", 2, 10, [])):
                if bench_peers.unsupported(m, c):
                    continue
                r = load(bench_bin, m, sink, c, f"w{m.name}{c[1]}", args.delivery_timeout)
                if not r.get("delivery", {}).get("exactly_once"):
                    raise RuntimeError(f"warm-up against {m.name} failed: {json.dumps(r)}")
        log("warm-up done")

        seq = 0
        for case in cases:
            name = case[0]
            for rnd in range(rounds):
                # Rotate who goes first (with two MTAs: alternate).
                k = rnd % len(mtas)
                order = mtas[k:] + mtas[:k]
                for m in order:
                    why = bench_peers.unsupported(m, case)
                    if why:
                        reasons = skipped.setdefault(m.name, [])
                        if why not in reasons:
                            reasons.append(why)
                        continue
                    seq += 1
                    run_id = f"{name.replace('-', '')}r{rnd}{m.name}{seq}"
                    r = bench_peers.load_counting_cgroup(load, bench_bin, m, sink, case, run_id, args.delivery_timeout)
                    results.setdefault(name, {}).setdefault(m.name, []).append(r)
                    d = r.get("delivery", {})
                    good = d.get("exactly_once") and r.get("failed") == 0
                    ok &= bool(good)
                    log(f"{name} round {rnd + 1}/{rounds} {m.name:7}: accepted {r.get('accepted_per_sec', 0):7.1f}/s "
                        f"delivered {d.get('delivered_per_sec') or 0:7.1f}/s p50 {r['latency_ms']['p50']:6.1f} ms "
                        f"p99 {r['latency_ms']['p99']:6.1f} ms cpu {r.get('mta', {}).get('cpu_secs_per_1000', 0):5.2f} s/1k "
                        f"out-conns {d.get('sink_connections')} tls {d.get('sink_tls_handshakes')} "
                        f"(resumed {d.get('sink_tls_resumed')}) "
                        f"{'exactly once' if good else 'PROBLEM: ' + json.dumps(d.get('problems')) + ' ' + json.dumps(r.get('errors'))}")
                    time.sleep(0.5)

        if not args.no_idle:
            # Each on a fresh process: freed heap from the load runs (or
            # from the previous idle step) would hide the cost of new
            # connections.
            steps = [(f"Postern, {idle_n}", idle_n, "plain", 5.0),
                     (f"Postern, {idle_n}, STARTTLS", idle_n, "starttls", 5.0)]
            if idle_max:
                steps += [(f"Postern, {idle_max}", idle_max, "plain", 10.0),
                          (f"Postern, {idle_max}, STARTTLS", idle_max, "starttls", 10.0)]
            for key, n, mode, hold in steps:
                postern.stop()
                postern.start()
                time.sleep(1)
                idle_results[key] = idle(bench_bin, postern, n, mode=mode, hold=hold)
                log(f"idle {key}: {idle_results[key]}")
            if not args.no_postfix:
                # One smtpd process per connection; default_process_limit = 100.
                n = min(idle_n, 90)
                idle_results[f"Postfix, {n} (process limit 100)"] = idle(bench_bin, postfix, n)
                log(f"idle {n} postfix: {idle_results[f'Postfix, {n} (process limit 100)']}")
            for m in mtas:
                if m.name not in bench_peers.CLASSES:
                    continue
                # Exim: one process per connection, smtp_accept_max = 100.
                # OpenSMTPD: sessions are events in one process.
                n, key = (min(idle_n, 90), f"Exim, {min(idle_n, 90)} (smtp_accept_max 100)") \
                    if m.name == "exim" else (idle_n, f"OpenSMTPD, {idle_n}")
                idle_results[key] = idle(bench_bin, m, n)
                log(f"idle {key}: {idle_results[key]}")
    finally:
        for m in mtas:
            try:
                m.stop()
            except Exception as e:
                log(f"stopping {m.name}: {e}")
        sink.stop()

    meta["load_after"] = loadavg()
    meta["duration_s"] = time.time() - started
    summary = {name: {who: summarize(rs) for who, rs in by.items()} for name, by in results.items()}
    text = report(meta, summary, idle_results, cases)
    if any(p in bench_peers.CLASSES for p in peers):
        text += "\n\n" + bench_peers.report_side_by_side(summary, cases, [m.name for m in mtas], skipped)
    if args.postern_b:
        text += "\n\n" + report_ab(summary, cases)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"results-{stamp}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "idle": idle_results, "runs": results}, indent=1))
    (out / f"report-{stamp}.md").write_text(text + "\n")
    print(text)
    log(f"raw results: {out / f'results-{stamp}.json'}; report: {out / f'report-{stamp}.md'}")
    if meta["load_after"][0] > 0.5 or meta["load_before"][0] > 0.5:
        log("NOTE: the machine was not idle (load average > 0.5): figures measured under load")
    if args.keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if not ok:
        log("FAILED: some message was not delivered exactly once (see Problems)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
