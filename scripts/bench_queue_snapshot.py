#!/usr/bin/env python3
"""CPU cost of publishing a cluster node's queue snapshot (docs/cluster.md,
"The queue across nodes"). Not a test: a measurement anyone can rerun.

One gateway on a fresh database of the throwaway PostgreSQL
(`eval "$(scripts/pg-test-server.sh start)"` first, for POSTERN_TEST_PG_URL),
delivery paused so every message stays queued. It queues N messages, then
reads the gateway's CPU time (/proc) over 20 s with no change, and over 20 s
with one new message a second (so the snapshot is rebuilt whenever allowed).
Run it with two binaries (e.g. one without publishing) and compare:

    target/pyenv/bin/python scripts/bench_queue_snapshot.py \\
        --postern-bin target/release/postern --messages 6000
"""

from __future__ import annotations

import argparse
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def psql(url: str, sql: str) -> str:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    p = subprocess.run([str(bins[-1]) if bins else "psql", "-X", "-q", "-t", "-A", url, "-c", sql],
                       capture_output=True, text=True, timeout=60, check=True)
    return p.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postern-bin", required=True)
    ap.add_argument("--messages", type=int, default=6000)
    args = ap.parse_args()
    os.environ["POSTERN_BIN"] = str(Path(args.postern_bin).resolve())
    from postern_testlib import Gateway  # after POSTERN_BIN is set

    server = os.environ.get("POSTERN_TEST_PG_URL")
    if not server:
        sys.exit("POSTERN_TEST_PG_URL not set: eval \"$(scripts/pg-test-server.sh start)\"")
    name = "bench_" + uuid.uuid4().hex[:12]
    psql(server, f"CREATE DATABASE {name}")
    base, _, query = server.partition("?")
    db = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")

    with tempfile.TemporaryDirectory(prefix="postern-snapshot-bench-") as tmp:
        g = Gateway(Path(tmp) / "gw", store_template=None)  # delivery paused
        g.config.write_text(f'store = "{db}"\nnode_name = "bench"\n' + g.config.read_text())
        g.start(timeout=120)
        try:
            stat = Path(f"/proc/{g.proc.pid}/stat")

            def cpu() -> float:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            def send(k: int, n: int) -> None:
                with smtplib.SMTP("127.0.0.1", g.smtp_port, timeout=30) as s:
                    for i in range(n):
                        s.sendmail("a@d.test", ["b@sink.test"], f"Subject: m{k}-{i}\r\n\r\nbody\r\n")

            threads = [threading.Thread(target=send, args=(k, args.messages // 10))
                       for k in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(3)
            c0 = cpu()
            time.sleep(20)
            idle = cpu() - c0
            c0 = cpu()
            with smtplib.SMTP("127.0.0.1", g.smtp_port, timeout=30) as s:
                for i in range(20):
                    s.sendmail("a@d.test", ["b@sink.test"], f"Subject: tick{i}\r\n\r\nbody\r\n")
                    time.sleep(1)
            busy = cpu() - c0
        finally:
            g.kill9()
    print(f"queued messages: {args.messages}")
    print(f"CPU s in 20 s, no change:              {idle:.2f}")
    print(f"CPU s in 20 s, one new message a second: {busy:.2f}")
    try:
        row = psql(db, "SELECT messages, length(entries) FROM queue_snapshots")
    except subprocess.CalledProcessError:  # a binary from before the table
        row = ""
    print(f"snapshot row (messages|bytes): {row or 'none (this binary does not publish)'}")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
