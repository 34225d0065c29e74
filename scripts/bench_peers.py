"""Exim 4 and OpenSMTPD beside Postern and Postfix (issue 15 item 3; docs/performance.md).

scripts/bench-peers-setup.sh unpacks Debian's exim4-daemon-light and
opensmtpd into target/bench-peers/root (not installed: both conflict with
Postfix). Each runs here as a private relay configured like the Postfix of
scripts/bench.py:

  * listens on two loopback ports of its own: STARTTLS offered, and implicit
    TLS; Exim the bench's RSA-4096 and ECDSA P-256 certificates; OpenSMTPD
    takes one certificate per listener (RSA-4096), but Debian 12's 6.8.0p2
    fails every inbound TLS handshake under OpenSSL 3 (UNSUPPORTED_MODES), so
    it runs only the plaintext cases;
  * relays plain.sink.bench and tls.sink.bench from 127.0.0.0/8 to the
    sink's two listeners, by IP address (no DNS), TLS out opportunistic;
  * its normal durable queue and its log under the bench's work directory
    (/tmp/postern-bench-*/, the same file system as the others);
  * default concurrency settings, except where a default would refuse or
    park the bench's load (see EXIM_CHANGED / OPENSMTPD_CHANGED).

CPU and memory are counted as for Postfix (postern-bench --watch-pid): the
daemon is a process-group leader and everything it forks stays in its group;
the leader's cutime/cstime covers reaped children. Exim runs under
bench-reaper (scripts/bench-reaper.c), a child subreaper that adopts and
reaps its orphaned delivery processes, which init would otherwise reap with
their CPU time.

The config generators are pure functions (tests/test_bench_peers.py).
"""

from __future__ import annotations

import os
import pwd
import grp
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / "target" / "bench-peers" / "root"

# Non-default settings and why (also in docs/performance.md).
EXIM_CHANGED = {
    "smtp_accept_max": ("100", "default 20 refuses the 50-connection cases with 421; 100 = Postfix's default_process_limit"),
    "smtp_connect_backlog": ("100", "default 20: 50 clients connecting at once overflow the listen queue "
                                    "and some never get a banner (\"reply timeout\" in newconn-tls-4k-c50); "
                                    "100, the backlog Postfix listens with (ss -ltn)"),
    "smtp_accept_queue_per_connection": ("0", "default 10 queues every message after the 10th of a connection "
                                             "without delivering it until the next queue run (30 min on Debian); "
                                             "0 keeps Exim's normal immediate delivery for every message"),
}
OPENSMTPD_CHANGED = {
    "smtp limit max-mails": ("1000", "default 100 per session refuses the 150-message connections of the c10 cases"),
}


def _bench():
    import bench  # scripts/bench.py: free_port, wait_port, run, group_members, log
    return bench


def available(name: str, root: Path = DEFAULT_ROOT) -> bool:
    binary = {"exim": root / "usr/sbin/exim4", "opensmtpd": root / "usr/sbin/smtpd"}[name]
    return binary.is_file() and os.access(binary, os.X_OK)


def versions(root: Path = DEFAULT_ROOT) -> dict:
    out = {}
    stamp = root / ".unpacked"
    if stamp.is_file():
        for item in stamp.read_text().split():
            pkg, _, ver = item.partition("=")
            out[pkg] = ver
    return out


# ---------------------------------------------------------------------------
# configuration (pure)


def exim_config(*, exim_bin: Path, spool: Path, log_dir: Path, pid_file: Path, port: int, port_tls: int,
                sink_plain: int, sink_tls: int, certs: list[tuple[Path, Path]]) -> str:
    """Exim's runtime configuration: a relay like the bench's Postfix.

    `certs` are (certificate, key) pairs; Exim 4.96 with GnuTLS takes a list
    and picks by what the client supports (RSA, ECDSA)."""
    cert_list = " : ".join(str(c) for c, _ in certs)
    key_list = " : ".join(str(k) for _, k in certs)
    lines = [
        "# Private Exim relay for scripts/bench.py (scripts/bench_peers.py). Defaults unless noted.",
        f"exim_path = {exim_bin}",
        f"spool_directory = {spool}",
        f"log_file_path = {log_dir}/%slog",
        f"pid_file_path = {pid_file}",
        "primary_hostname = exim.bench",
        "qualify_domain = exim.bench",
        "local_interfaces = 127.0.0.1",
        f"daemon_smtp_ports = {port} : {port_tls}",
        f"tls_on_connect_ports = {port_tls}",
        "tls_advertise_hosts = *",
        f"tls_certificate = {cert_list}",
        f"tls_privatekey = {key_list}",
        "# No DNS and no ident: the system resolver is not on loopback (Postfix: smtpd_peername_lookup = no).",
        "host_lookup =",
        "rfc1413_hosts =",
        "message_size_limit = 100M",
        "keep_environment =",
        "hostlist relay_from_hosts = 127.0.0.0/8",
        "domainlist relay_to_domains = plain.sink.bench : tls.sink.bench",
        "acl_smtp_rcpt = acl_check_rcpt",
    ]
    for key, (value, why) in EXIM_CHANGED.items():
        lines.append(f"# {why}")
        lines.append(f"{key} = {value}")
    lines += [
        "",
        "begin acl",
        "acl_check_rcpt:",
        "  accept hosts = +relay_from_hosts",
        "         domains = +relay_to_domains",
        "  deny   message = relay not permitted",
        "",
        "begin routers",
    ]
    for name, domain, sink in (("sink_plain", "plain.sink.bench", sink_plain),
                               ("sink_tls", "tls.sink.bench", sink_tls)):
        lines += [
            f"{name}:",
            "  driver = manualroute",
            f"  domains = {domain}",
            "  transport = remote_smtp",
            f"  route_list = * 127.0.0.1::{sink}",
            "  # 127.0.0.1 is also a local interface: send anyway (another port)",
            "  self = send",
            "",
        ]
    lines += [
        "begin transports",
        "remote_smtp:",
        "  driver = smtp",
        "  # hosts_try_tls = * (default): opportunistic TLS out",
        "",
        "begin retry",
        "# A short retry (Postern's bench runs with min_backoff 1s): a deferral shows as delay",
        "*   *   F,1h,1s",
        "",
    ]
    return "\n".join(lines)


def opensmtpd_config(*, port: int, port_tls: int, sink_plain: int, sink_tls: int, cert: Path, key: Path) -> str:
    """smtpd.conf: a relay like the bench's Postfix (one certificate per listener in 6.8: RSA)."""
    lines = [
        "# Private OpenSMTPD relay for scripts/bench.py (scripts/bench_peers.py). Defaults unless noted.",
        f'pki bench cert "{cert}"',
        f'pki bench key "{key}"',
        "smtp max-message-size 100M",
    ]
    for key_, (value, why) in OPENSMTPD_CHANGED.items():
        lines.append(f"# {why}")
        lines.append(f"{key_} {value}")
    lines += [
        "table trusted { 127.0.0.0/8 }",
        f"listen on 127.0.0.1 port {port} tls pki bench hostname opensmtpd.bench",
        f"listen on 127.0.0.1 port {port_tls} smtps pki bench hostname opensmtpd.bench",
        "# smtp:// = opportunistic STARTTLS out (the default protocol)",
        f'action "sink_plain" relay host smtp://127.0.0.1:{sink_plain} helo opensmtpd.bench',
        f'action "sink_tls" relay host smtp://127.0.0.1:{sink_tls} helo opensmtpd.bench',
        'match from src <trusted> for domain "plain.sink.bench" action "sink_plain"',
        'match from src <trusted> for domain "tls.sink.bench" action "sink_tls"',
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the processes


def cpuacct_cgroup(name: str, pids: list[int]) -> Path | None:
    """A cgroup-v1 cpuacct group holding `pids` (their children follow), or None."""
    base = Path("/sys/fs/cgroup/cpuacct")
    if not (base / "cpuacct.usage").exists():
        return None
    d = base / name
    try:
        d.mkdir()
        for pid in pids:
            (d / "cgroup.procs").write_text(str(pid))
        return d
    except OSError:
        return None


def cgroup_cpu_secs(d: Path) -> float:
    return int((d / "cpuacct.usage").read_text()) / 1e9


def load_counting_cgroup(load, bench_bin, m, sink, case, run_id: str, timeout: float) -> dict:
    """bench.load(), with the MTA's CPU from its cpuacct cgroup where it has one (Exim).

    postern-bench --watch-pid misses most of Exim's CPU: its delivery processes
    are reaped without their time reaching any process of the group (a
    cross-check on plain-4k-c10: 3.5 CPU-s seen of 21 in the cgroup, while the
    two agree within 10% for Postfix and OpenSMTPD). The cgroup counts every
    process the daemon ever forked, exited or not. The procwatch figure stays
    in the results as cpu_secs_procwatch."""
    cg = getattr(m, "cgroup", None)
    before = cgroup_cpu_secs(cg) if cg else None
    r = load(bench_bin, m, sink, case, run_id, timeout)
    if cg and "mta" in r:
        cpu = cgroup_cpu_secs(cg) - before
        accepted = r.get("accepted", 0) or 0
        r["mta"]["cpu_secs_procwatch"] = r["mta"].get("cpu_secs")
        r["mta"]["cpu_secs"] = cpu
        r["mta"]["cpu_source"] = "cgroup cpuacct"
        if accepted:
            r["mta"]["cpu_secs_per_1000"] = cpu * 1000.0 / accepted
        elif r["mta"].get("cpu_secs_procwatch"):
            r["mta"]["cpu_secs_per_1000"] *= cpu / r["mta"]["cpu_secs_procwatch"]
    return r


class _Daemon:
    """A daemon started as a process-group leader; stopped like Postfix (TERM, then KILL the group)."""

    name = "?"
    UNSUPPORTED_MODES: dict[str, str] = {}

    def __init__(self, root: Path) -> None:
        self.proc: subprocess.Popen | None = None
        self.out = None
        # ROOT/bin holds the private copies of the binaries (as for Postern and postern-bench).
        self.root = root
        root.mkdir(mode=0o755)
        self.bindir = root / "bin"
        self.bindir.mkdir(mode=0o755)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, cmd: list[str], out: Path) -> None:
        b = _bench()
        self.out = open(out, "a")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            b.wait_port(self.port, 20, self.name, self.proc)
            b.wait_port(self.port_tls, 5, self.name, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}\n{self.log_tail()}") from None

    def log_tail(self) -> str:
        return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        b = _bench()
        pid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while b.group_members(pid) and time.monotonic() < deadline:
            self.proc.poll()
            time.sleep(0.1)
        if b.group_members(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None
        if self.out:
            self.out.close()
            self.out = None


class Exim(_Daemon):
    """A private Exim (`exim4 -C CONF -bdf -q30m`), never the system instance (there is none)."""

    name = "exim"
    user = "Debian-exim"

    def __init__(self, root: Path, sink, cert: Path, key: Path, ecdsa: tuple[Path, Path] | None = None,
                 peers_root: Path = DEFAULT_ROOT):
        super().__init__(root)
        b = _bench()
        uid = pwd.getpwnam(self.user).pw_uid
        gid = grp.getgrnam(self.user).gr_gid
        # A private copy of the binary (as for Postern and postern-bench), with the package's modes
        # (setuid root): the receiving process runs as Debian-exim and re-executes it to deliver.
        self.bin = self.bindir / "exim4"
        shutil.copy2(peers_root / "usr/sbin/exim4", self.bin)
        self.reaper = self.bindir / "bench-reaper"
        shutil.copy2(peers_root.parent / "bench-reaper", self.reaper)
        tls = root / "tls"
        tls.mkdir(mode=0o750)
        os.chown(tls, 0, gid)
        pairs = [(cert, key, "mta")] + ([(ecdsa[0], ecdsa[1], "mta-ec")] if ecdsa else [])
        certs = []
        for c, k, stem in pairs:
            # Exim reads the key after dropping root (as Debian-exim), as Debian's README says.
            shutil.copyfile(c, tls / f"{stem}.pem")
            shutil.copyfile(k, tls / f"{stem}.key")
            os.chown(tls / f"{stem}.key", 0, gid)
            os.chmod(tls / f"{stem}.key", 0o640)
            certs.append((tls / f"{stem}.pem", tls / f"{stem}.key"))
        self.spool = root / "spool"
        logs = root / "log"
        for d in (self.spool, logs):
            d.mkdir(mode=0o750)
            os.chown(d, uid, gid)
        self.port = b.free_port()
        self.port_tls = b.free_port()
        self.config = root / "exim.conf"
        self.config.write_text(exim_config(exim_bin=self.bin, spool=self.spool, log_dir=logs,
                                           pid_file=root / "exim.pid", port=self.port, port_tls=self.port_tls,
                                           sink_plain=sink.plain, sink_tls=sink.tls, certs=certs))
        os.chmod(self.config, 0o644)
        self.etc = root / "etc-exim4"
        self.etc.mkdir(mode=0o755)
        (self.etc / "trusted_configs").write_text(f"{self.config}\n")
        os.chmod(self.etc / "trusted_configs", 0o644)
        b.run([str(self.bin), "-C", str(self.config), "-bV"])   # syntax check
        self.logs = logs
        # -D/-H files of queued messages, and their per-message logs (removed when done).
        self.queue_dirs = [self.spool / "input", self.spool / "msglog"]
        self.certificates = "RSA-4096 + ECDSA P-256" if ecdsa else "RSA-4096"

    def start(self) -> None:
        # -bdf: the daemon in the foreground (no fork into the background), so it is our
        # process-group leader; -q30m: a queue runner every 30 minutes, as Debian runs it.
        # Debian's Exim trusts an alternate configuration (-C) only when it is listed in
        # TRUSTED_CONFIG_LIST, /etc/exim4/trusted_configs; otherwise every re-execution
        # (each delivery, each queue run) gives up root and says so in the paniclog. The
        # list is bound over the host's (empty) /etc/exim4 in a private mount namespace,
        # so the host's /etc is not written.
        script = (f'mount --bind "{self.etc}" /etc/exim4 && '
                  f'exec "{self.bin}" -C "{self.config}" -bdf -q30m')
        # Under bench-reaper (a child subreaper): Exim's per-message delivery processes outlive
        # the processes that fork them, and an orphan reaped by init takes its CPU time with
        # it. The reaper adopts and waits for them, so its cutime/cstime (postern-bench adds
        # the leader's) counts them; it is the process-group leader, Exim's daemon its child.
        self._spawn([str(self.reaper), "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                    self.root / "exim.stderr")
        self.cgroup = cpuacct_cgroup(f"postern-bench-exim-{self.pid}", _bench().group_members(self.pid))
        if self.cgroup is None:
            _bench().log("exim: no cpuacct cgroup (/sys/fs/cgroup/cpuacct): its CPU is undercounted")

    def stop(self) -> None:
        super().stop()
        if getattr(self, "cgroup", None) is not None:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass
            self.cgroup = None

    def log_tail(self) -> str:
        out = []
        for f in ("mainlog", "paniclog", "rejectlog"):
            try:
                out.append(f"--- {f}\n" + (self.logs / f).read_text(errors="replace")[-2000:])
            except OSError:
                pass
        try:
            out.append("--- stderr\n" + (self.root / "exim.stderr").read_text(errors="replace")[-2000:])
        except OSError:
            pass
        return "\n".join(out)


class OpenSMTPD(_Daemon):
    # Load modes it cannot serve, and why (the report shows "—" and the reason).
    UNSUPPORTED_MODES = {
        mode: "Debian 12's OpenSMTPD 6.8.0p2 fails every inbound TLS handshake under OpenSSL 3 "
              "(\"SSL routines::EVP lib\" in its log, alert 80 at the client, RSA and ECDSA keys, TLS 1.2 and 1.3: "
              "its privilege-separated signing does not work with OpenSSL 3; OpenSMTPD issues #1171, #1239)"
        for mode in ("starttls", "implicit-tls")}
    # Clients connecting at once beyond which it cannot be measured, and why.
    MAX_CONNECTIONS = (10, "OpenSMTPD listens with a compiled-in backlog of 5 (SMTPD_BACKLOG in smtpd.h, "
                           "no setting; `ss -ltn` shows 5): 50 clients connecting at once overflow it "
                           "(TcpExtListenOverflows), the kernel drops their handshake's last ACK, and some "
                           "wait beyond the load generator's reply timeout for a banner. Exim had the same "
                           "until smtp_connect_backlog = 100; OpenSMTPD cannot be set so")

    """A private OpenSMTPD (`smtpd -d -f CONF`) in its own mount namespace.

    Its spool (/var/spool/smtpd) and control socket (/var/run/smtpd.sock) are
    compiled in; a private mount namespace binds ROOT/var-spool over /var/spool
    and ROOT/run over /run, so its queue lives under the bench's work
    directory and nothing of the host's is touched."""

    name = "opensmtpd"

    def __init__(self, root: Path, sink, cert: Path, key: Path, ecdsa: tuple[Path, Path] | None = None,
                 peers_root: Path = DEFAULT_ROOT):
        super().__init__(root)
        b = _bench()
        self.bin = self.bindir / "smtpd"   # smtpd re-executes itself: an absolute path
        shutil.copy2(peers_root / "usr/sbin/smtpd", self.bin)
        tls = root / "tls"
        tls.mkdir(mode=0o700)
        # One pki per listener in 6.8: the RSA-4096 one. It is configured as it would be, but
        # the inbound handshake fails (see UNSUPPORTED_MODES), so the TLS cases skip OpenSMTPD.
        shutil.copyfile(cert, tls / "mta.pem")
        shutil.copyfile(key, tls / "mta.key")
        os.chmod(tls / "mta.key", 0o600)
        (root / "var-spool").mkdir(mode=0o755)
        (root / "run").mkdir(mode=0o755)
        self.spool = root / "var-spool" / "smtpd"
        self.port = b.free_port()
        self.port_tls = b.free_port()
        self.config = root / "smtpd.conf"
        self.config.write_text(opensmtpd_config(port=self.port, port_tls=self.port_tls, sink_plain=sink.plain,
                                                sink_tls=sink.tls, cert=tls / "mta.pem", key=tls / "mta.key"))
        os.chmod(self.config, 0o644)
        b.run([str(self.bin), "-n", "-f", str(self.config)])   # syntax check
        self.queue_dirs = [self.spool / d for d in ("incoming", "queue", "temporary")]
        self.certificates = "RSA-4096 only (one pki per listener); inbound TLS fails (OpenSSL 3)"

    def start(self) -> None:
        # No DNS, as Postfix (smtpd_peername_lookup = no) and Exim (host_lookup =) are told: OpenSMTPD
        # has no such setting, and its resolver (libasr, "lookup bind file" by default) asks the system's
        # name server, which is not on loopback, for the PTR of every client and the address of the name
        # it gets: each new session waited 5 s for the query to time out, and at 50 connections some got
        # no banner at all. A private resolv.conf with libasr's "lookup file" answers from /etc/hosts.
        resolv = self.root / "resolv.conf"
        resolv.write_text("# scripts/bench_peers.py: answer from /etc/hosts only (libasr syntax)\nlookup file\n")
        os.chmod(resolv, 0o644)
        script = (f'mount --bind "{self.root}/var-spool" /var/spool && mount --bind "{self.root}/run" /run && '
                  f'mount --bind "{resolv}" /etc/resolv.conf && '
                  f'exec "{self.bin}" -d -f "{self.config}"')
        # unshare and sh exec, so the pid is smtpd's (the process-group leader).
        self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                    self.root / "smtpd.log")

    def log_tail(self) -> str:
        try:
            return (self.root / "smtpd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


CLASSES = {"exim": Exim, "opensmtpd": OpenSMTPD}
LABELS = {"postern": "Postern", "postfix": "Postfix", "exim": "Exim", "opensmtpd": "OpenSMTPD"}


# ---------------------------------------------------------------------------
# the side-by-side table


def _fmt(v, digits=0):
    return _bench().fmt(v, digits)


def _ratio(a, b, digits=2):
    return _bench().ratio(a, b, digits)


def peak_mib(s: dict) -> tuple[float | None, float | None]:
    """(RSS, PSS) MiB of one summary: Postern's VmHWM is both; multi-process MTAs: summed peaks."""
    return s.get("peak_rss_mib"), s.get("peak_pss_mib")


def unsupported(mta, case) -> str | None:
    """Why `mta` cannot take the load of bench case `case` (a bench.py CASES tuple: name, mode,
    route, size, connections, …), or None when it can: its inbound mode, or more clients
    connecting at once than it can be measured with."""
    mode, connections = case[1], case[4]
    why = getattr(mta, "UNSUPPORTED_MODES", {}).get(mode)
    if why:
        return f"cases with TLS inbound not run (—): {why}"
    limit = getattr(mta, "MAX_CONNECTIONS", None)
    if limit and connections > limit[0]:
        return f"cases with more than {limit[0]} connections not run (—): {limit[1]}"
    return None


def report_side_by_side(summary: dict, cases, names: list[str], reasons: dict | None = None) -> str:
    """One row per case, every MTA of the run side by side; ratios are Postern/each.

    `reasons` maps (case, mta) or mta to the reasons (a list) why its cells are empty ("—")."""
    reasons = reasons or {}
    others = [n for n in names if n != "postern"]
    cols = ["postern"] + others
    labels = " / ".join(LABELS.get(n, n) for n in cols)
    rlabels = " / ".join(LABELS.get(n, n) for n in others)

    def cell(case, who, key, digits=0):
        s = summary.get(case, {}).get(who)
        if not s:
            return "—"
        return _fmt(s.get(key), digits)

    def ratios(case, key, digits=2):
        p = summary.get(case, {}).get("postern") or {}
        out = []
        for n in others:
            s = summary.get(case, {}).get(n)
            out.append(_ratio(p.get(key), s.get(key), digits) if s else "—")
        return " / ".join(out)

    lines = [f"Side by side: {labels}. Ratios are Postern/each ({rlabels}): above 1 is better for "
             "msg/s, below 1 is better for latency, CPU and memory. CPU ms per message = CPU s per 1,000 messages. "
             "Memory: Postern's peak RSS (VmHWM); the others' sampled peak of the summed RSS (PSS) of their processes.",
             "",
             f"| case | delivered msg/s {labels} | delivered, Postern ÷ each | accepted msg/s "
             f"| p50 DATA→250 ms | p99 DATA→250 ms | p99, Postern ÷ each | CPU ms per msg | CPU, Postern ÷ each "
             f"| peak memory MiB RSS (PSS) | memory (RSS), Postern ÷ each | exactly once |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        name = case[0]
        row = summary.get(name, {})
        if not row:
            continue
        mem = []
        for n in cols:
            s = row.get(n)
            if not s:
                mem.append("—")
                continue
            rss, pss = peak_mib(s)
            mem.append(_fmt(rss, 1) if n == "postern" or s.get("peak_processes", 0) <= 1
                       else f"{_fmt(rss, 0)} ({_fmt(pss, 0)})")
        once = [LABELS.get(n, n) for n in cols if row.get(n) and not row[n]["exactly_once"]]
        missing = [LABELS.get(n, n) for n in cols if not row.get(n)]
        lines.append(
            f"| {name} "
            f"| {' / '.join(cell(name, n, 'delivered_per_sec') for n in cols)} "
            f"| {ratios(name, 'delivered_per_sec')} "
            f"| {' / '.join(cell(name, n, 'accepted_per_sec') for n in cols)} "
            f"| {' / '.join(cell(name, n, 'p50_ms', 1) for n in cols)} "
            f"| {' / '.join(cell(name, n, 'p99_ms', 1) for n in cols)} "
            f"| {ratios(name, 'p99_ms')} "
            f"| {' / '.join(cell(name, n, 'cpu_per_1000', 2) for n in cols)} "
            f"| {ratios(name, 'cpu_per_1000')} "
            f"| {' / '.join(mem)} "
            f"| {ratios(name, 'peak_rss_mib')} "
            f"| {('NO: ' + ', '.join(once)) if once else 'yes, all'}"
            f"{(' (' + ', '.join(missing) + ' not run)') if missing else ''} |")
    lines += ["",
              f"Outbound side (median per run): connections each MTA opened to the sink, of which TLS resumed; "
              f"{labels}.",
              "",
              "| case | messages | outbound connections | of which TLS resumed | inbound setup p50 ms |",
              "|---|---|---|---|---|"]
    for case in cases:
        name = case[0]
        if not summary.get(name):
            continue
        lines.append(f"| {name} | {case[4] * case[5]} "
                     f"| {' / '.join(cell(name, n, 'outbound_connections') for n in cols)} "
                     f"| {' / '.join(cell(name, n, 'outbound_tls_resumed') for n in cols)} "
                     f"| {' / '.join(cell(name, n, 'setup_p50_ms', 1) for n in cols)} |")
    notes = [f"- {LABELS.get(k, k) if isinstance(k, str) else k[0] + '/' + LABELS.get(k[1], k[1])}: {why}"
             for k, whys in reasons.items() for why in whys]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)
