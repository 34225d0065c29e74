"""`[spool] sync`: how a stored message becomes durable before its 250,
seen from the system calls the running gateway makes (strace attached to
it) and from its start-up log.

* `file` (and `auto` on a shared file system): every message file is
  fdatasync'd by its writer, `queue/` is fsync'd, and syncfs(2) is never
  called.
* `filesystem` (and `auto` on a spool mounted as a file system of its own):
  no spool file is fsync'd; syncfs(2) covers each group.

Needs strace (scripts/test.sh installs it); the tmpfs case needs root.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import time
import uuid

import pytest

from postern_testlib import make_message, queued_id, spool_on_tmpfs

pytestmark = pytest.mark.skipif(not shutil.which("strace") and not os.environ.get("CI"),
                                reason="needs strace")

MESSAGES = 20


def _traced(gw, count: int) -> list[str]:
    """The sync calls the gateway makes while `count` messages are stored."""
    out = gw.root / "strace.out"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,syncfs",
                               "-o", str(out), "-p", str(gw.proc.pid)],
                              stderr=subprocess.PIPE, text=True)
    try:
        # strace prints nothing when attached; a first message shows it is.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            gw.send_raw(token=uuid.uuid4().hex)
            if out.exists() and out.stat().st_size > 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"strace did not attach: {tracer.stderr.read() if tracer.poll() is not None else ''}")
        before = len(out.read_text().splitlines())
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as s:
            s.ehlo("client.postern.test")
            for _ in range(count):
                s.mail("a@c.test")
                s.rcpt("b@b.test")
                code, resp = s.data(make_message(uuid.uuid4().hex, rcpt="b@b.test"))
                assert code == 250 and queued_id(resp.decode()), (code, resp)
        time.sleep(0.1)
    finally:
        tracer.terminate()
        tracer.wait(10)
    return out.read_text().splitlines()[before:]


def _spool_syncs(lines: list[str], spool) -> tuple[int, int]:
    """(fsync/fdatasync calls on spool files, on the queue/ directory)."""
    # strace -y: "1234 fdatasync(12</path/data/spool/free/x>) = 0"; a file
    # still unnamed shows as "<.../spool/queue/#1017 (deleted)>".
    calls = [m.group(1) for line in lines if line.endswith("= 0")
             for m in [re.search(rf"\b(?:fsync|fdatasync)\(\d+<({re.escape(str(spool))}/[^>]*)>", line)] if m]
    queue_dir = f"{spool}/queue"
    return sum(1 for c in calls if c != queue_dir), sum(1 for c in calls if c == queue_dir)


def _syncfs_calls(lines: list[str]) -> int:
    return sum(1 for line in lines if re.search(r"\bsyncfs\(", line) and line.endswith("= 0"))


def test_file_mode_fsyncs_every_message_file(make_gateway):
    gw = make_gateway(spool_sync="file")
    assert "durable writes: each message file fsync'd" in gw.stderr(), gw.stderr()[-2000:]
    lines = _traced(gw, MESSAGES)
    file_syncs, dir_syncs = _spool_syncs(lines, gw.data_dir.resolve() / "spool")
    assert file_syncs >= MESSAGES, f"{file_syncs} message file fsyncs for {MESSAGES} messages:\n" + "\n".join(lines[:40])
    assert 1 <= dir_syncs <= MESSAGES, f"{dir_syncs} fsyncs of queue/ for {MESSAGES} messages"
    assert _syncfs_calls(lines) == 0, "syncfs in file mode"


def test_auto_on_a_shared_file_system_is_file_mode(make_gateway):
    gw = make_gateway()
    log = gw.stderr()
    assert "durable writes: each message file fsync'd" in log and "shares its file system" in log, log[-2000:]


def test_filesystem_mode_fsyncs_no_spool_file_and_syncs_the_file_system(make_gateway):
    gw = make_gateway(spool_sync="filesystem")
    assert "durable writes: one syncfs(2)" in gw.stderr(), gw.stderr()[-2000:]
    lines = _traced(gw, MESSAGES)
    file_syncs, dir_syncs = _spool_syncs(lines, gw.data_dir.resolve() / "spool")
    assert file_syncs == 0 and dir_syncs == 0, "the spool fsync'd in filesystem mode:\n" + "\n".join(lines[:40])
    rounds = _syncfs_calls(lines)
    assert 1 <= rounds <= MESSAGES, f"{rounds} syncfs calls for {MESSAGES} messages"
    # Every acknowledged message is in the queue.
    assert len(gw.queue_ids()) >= MESSAGES


def test_auto_takes_filesystem_mode_for_a_spool_of_its_own(make_gateway):
    gw = make_gateway(start=False)
    with spool_on_tmpfs(gw, "16m"):
        gw.start()
        log = gw.stderr()
        assert "durable writes: one syncfs(2)" in log and "is a file system of its own" in log, log[-2000:]
        qid = gw.send_raw(token="own-fs")
        assert qid in gw.queue_ids()


def test_check_says_which_mode_the_gateway_will_use(make_gateway):
    shared = make_gateway(name="shared", start=False)
    assert "spool: durable writes: each message file fsync'd" in shared.cli_ok("check").stdout
    chosen = make_gateway(name="chosen", start=False, spool_sync="filesystem")
    assert 'one syncfs(2) of the spool\'s file system per group of messages ([spool] sync = "filesystem")' \
        in chosen.cli_ok("check").stdout


def test_an_unknown_sync_mode_is_refused_with_the_choices(make_gateway):
    gw = make_gateway(start=False, spool_sync="sometimes")
    r = gw.cli("check")
    assert r.rc != 0, r
    assert "spool.sync" in r.stderr and "filesystem" in r.stderr, r.stderr
