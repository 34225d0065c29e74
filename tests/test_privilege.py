"""Privilege drop: a gateway started as root switches to the unprivileged
`postern` user (`user` in postern.toml) right after binding its listeners,
owns its data directory, keeps keys and spool files private (0600), and
still accepts mail; `postern` commands run as root beside it leave nothing
behind that the gateway cannot use.

Needs root and the system user `postern` (scripts/test.sh creates it:
`useradd --system --no-create-home --shell /usr/sbin/nologin postern`).
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from postern_testlib import GATEWAY_USER, Gateway, make_reachable, postern_bin, user_exists

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")


@pytest.fixture
def account():
    if not user_exists(GATEWAY_USER):
        message = (f"no system user {GATEWAY_USER!r}: create it with `useradd --system "
                   f"--no-create-home --shell /usr/sbin/nologin {GATEWAY_USER}` (scripts/test.sh does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return pwd.getpwnam(GATEWAY_USER)


def status_ids(pid: int) -> dict[str, list[int] | str]:
    """Uid, Gid (real, effective, saved, filesystem), Groups, CapEff and NoNewPrivs of a
    process or thread from /proc/<pid>/status."""
    fields: dict[str, list[int] | str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
        elif key in ("CapEff", "CapPrm", "NoNewPrivs"):
            fields[key] = value.strip()
    return fields


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    """(uid, gid, mode) of everything under `root` (symlinks not followed)."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root)) or "."] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def banner(gw: Gateway) -> str:
    with gw.connect(banner=False) as c:
        return c.banner().text


def run_briefly(config: Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`postern run` that is expected to stop by itself (a refused start)."""
    try:
        return subprocess.run([str(postern_bin()), "--config", str(config), "run"],
                              capture_output=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"postern run did not stop within {timeout}s:\n"
                             f"{(e.stderr or b'').decode('utf-8', 'replace')}")


def test_drops_to_postern_after_binding(make_gateway, account):
    gw = make_gateway(user=GATEWAY_USER)
    pid = gw.proc.pid
    uid, gid = account.pw_uid, account.pw_gid

    # The process and every thread (tokio workers started before the switch).
    tasks = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    assert len(tasks) > 1, "expected a multi-threaded runtime"
    for task in tasks:
        ids = status_ids(task)
        assert ids["Uid"] == [uid] * 4, f"thread {task}: {ids}"
        assert ids["Gid"] == [gid] * 4, f"thread {task}: {ids}"
        assert ids["Groups"] in ([gid], []), f"thread {task}: supplementary groups {ids['Groups']}"
        assert ids["CapEff"] == "0000000000000000" and ids["CapPrm"] == "0000000000000000", ids
    assert f"running as {GATEWAY_USER}" in gw.stderr(), gw.stderr()

    # Mail is still accepted (and durably stored by the unprivileged user).
    qid = gw.send_raw(token="privilege")
    assert qid in gw.queue_ids()

    # Everything in the data directory is the user's; keys and mail are private.
    files = owners(gw.data_dir)
    not_ours = {p: o for p, o in files.items() if o[:2] != (uid, gid)}
    assert not not_ours, f"not owned by {GATEWAY_USER}: {not_ours}"
    for store_file in ("postern.db", "postern.db-wal", "postern.db-shm"):
        if store_file in files:
            assert files[store_file][2] == 0o600, f"{store_file}: {oct(files[store_file][2])}"
    assert "postern.db" in files
    spool = {p: o for p, o in files.items() if p.startswith("spool/")}
    assert f"spool/queue/{qid}" in spool, sorted(spool)
    for path, (_, _, mode) in spool.items():
        if (gw.data_dir / path).is_dir():
            assert mode == 0o700, f"{path}: {oct(mode)}"
        elif path != "spool/lock":
            assert mode == 0o600, f"{path}: {oct(mode)}"
    assert stat.S_IMODE((gw.data_dir / "spool" / "lock").stat().st_mode) & 0o077 == 0


def test_root_cli_beside_unprivileged_gateway(make_gateway, account):
    """`postern` commands as root work against a data directory owned by
    `postern`, running or not, and leave nothing the gateway cannot use."""
    uid, gid = account.pw_uid, account.pw_gid
    gw = make_gateway(user=GATEWAY_USER)
    first = gw.send_raw(token="before-cli")

    # While it runs: settings, certificates, queue.
    gw.set("mta.banner", "mx.postern.test ESMTP privileged-test")
    gw.cli_ok("cert", "generate", "--name", "ECDSA", "--key", "ecdsa-p256")
    assert first in gw.queue_ids()
    wait_for(lambda: "privileged-test" in banner(gw), 10, "the new banner")
    # The gateway survived them (POSIX locks held by its SQLite connection
    # must not have been lost: a root CLI would then reset the shared
    # memory under it, and the gateway die of SIGBUS).
    assert gw.running, f"gateway died (exit {gw.proc.returncode}) after root CLI commands"
    second = gw.send_raw(token="after-cli")
    not_ours = {p: o for p, o in owners(gw.data_dir).items() if o[:2] != (uid, gid)}
    assert not not_ours, f"root commands left files the gateway does not own: {not_ours}"

    # Stopped: commands as root may create files (SQLite WAL, queue changes)...
    assert gw.stop() == 0
    gw.set("mta.max_recipients", "500")
    gw.cli_ok("cert", "delete", "ECDSA")
    gw.cli_ok("queue", "delete", first)
    (gw.data_dir / "root-leftover").write_text("made by root\n")
    os.chmod(gw.data_dir / "root-leftover", 0o600)
    # ...which the next start hands over.
    gw.start()
    files = owners(gw.data_dir)
    assert files["root-leftover"][:2] == (uid, gid), files["root-leftover"]
    not_ours = {p: o for p, o in files.items() if o[:2] != (uid, gid)}
    assert not not_ours, not_ours
    ids = gw.queue_ids()
    assert second in ids and first not in ids, ids
    third = gw.send_raw(token="after-restart")
    assert third in gw.queue_ids()


def test_missing_user_refuses_to_start(tmp_path):
    gw = Gateway(tmp_path / "gw", user="postern-no-such-user")
    p = run_briefly(gw.config, gw.cwd)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode != 0, err
    assert 'the user "postern-no-such-user" to run as does not exist' in err, err
    assert "useradd --system" in err and 'user = "root"' in err, err
    # `postern check` says the same before anyone tries to start it.
    r = gw.cli("check")
    assert r.rc != 0 and "does not exist" in r.stderr, r


def test_explicit_root_stays_root_with_a_warning(make_gateway):
    gw = make_gateway(user="root")
    ids = status_ids(gw.proc.pid)
    assert ids["Uid"] == [0, 0, 0, 0], ids
    assert 'running as root (user = "root"' in gw.stderr(), gw.stderr()
    assert gw.send_raw(token="as-root")


def test_unreachable_data_dir_is_refused(tmp_path, account):
    """A data directory the user cannot reach (a parent directory without
    search permission for it) stops the start with a message naming it."""
    gw = Gateway(tmp_path / "gw", user=GATEWAY_USER)
    make_reachable(gw.root)
    locked = gw.root / "locked"
    locked.mkdir(mode=0o700)
    os.chmod(locked, 0o700)
    text = gw.config.read_text().replace('data_dir = "data"', 'data_dir = "locked/data"')
    gw.config.write_text(text)
    p = run_briefly(gw.config, gw.cwd)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode != 0, err
    assert "is not usable by user postern" in err and "locked/data" in err, err
    assert "searchable" in err, err


def test_default_user_with_unreachable_data_dir_runs_as_root_with_warning(tmp_path, account):
    """`user` not configured (a first try, data under a private home
    directory): the gateway still starts, as root, and says what to fix;
    only a configured user is strict."""
    gw = Gateway(tmp_path / "gw")
    assert "user =" not in gw.config.read_text(), gw.config.read_text()
    locked = gw.root / "locked"
    locked.mkdir(mode=0o700)
    os.chmod(locked, 0o700)
    text = gw.config.read_text().replace('data_dir = "data"', 'data_dir = "locked/data"')
    gw.config.write_text(text)
    gw.data_dir = locked / "data"
    gw.start()
    try:
        assert status_ids(gw.proc.pid)["Uid"] == [0, 0, 0, 0]
        assert "is not reachable by the default user" in gw.stderr(), gw.stderr()
        assert gw.send_raw(token="default-user-fallback")
    finally:
        gw.stop()


def test_no_new_privs_on_every_thread(make_gateway, account):
    """issue 16 item 7: PR_SET_NO_NEW_PRIVS is set, on the process and every
    thread (the flag is per thread: it is set before the runtime starts
    them), both after dropping root and when started unprivileged."""
    gw = make_gateway(user=GATEWAY_USER)
    pid = gw.proc.pid
    tasks = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    assert len(tasks) > 1, "expected a multi-threaded runtime"
    assert status_ids(pid)["NoNewPrivs"] == "1", status_ids(pid)
    for task in tasks:
        ids = status_ids(task)
        assert ids["NoNewPrivs"] == "1", f"thread {task}: {ids}"
        assert ids["Uid"] == [account.pw_uid] * 4, f"thread {task}: {ids}"
    assert gw.send_raw(token="no-new-privs")
