"""Durability: a message acknowledged with 250 survives kill -9 at any
moment; damaged spool files are quarantined in spool/corrupt/ at start.

Flow of test_kill9_loses_no_acknowledged_message: start the gateway, four
client threads send continuously and record every ID from
`250 2.0.0 Ok: queued as ID`; after 1.5-3 s (random) kill -9; three such
cycles; then a normal start, and every acknowledged ID must be in
`queue list --json` and in data/spool/queue with its own content.
"""

import random
import smtplib
import socket
import threading
import time
import uuid

import pytest

from postern_testlib import make_message, queued_id


class Sender(threading.Thread):
    def __init__(self, port: int, acked: list, lock: threading.Lock, stop: threading.Event, name: str,
                 timeout: float = 5):
        super().__init__(daemon=True, name=name)
        self.timeout = timeout
        self.port, self.acked, self.lock, self.stop_event = port, acked, lock, stop
        self.errors = 0
        self.anomalies: list[str] = []

    def run(self):
        while not self.stop_event.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=self.timeout) as s:
                    s.ehlo("client.postern.test")
                    while not self.stop_event.is_set():
                        token = uuid.uuid4().hex
                        code, resp = s.mail("c@d.test")
                        if code != 250:
                            raise smtplib.SMTPException(f"MAIL {code}")
                        code, resp = s.rcpt(f"{self.name}@b.test")
                        if code != 250:
                            raise smtplib.SMTPException(f"RCPT {code}")
                        code, resp = s.data(make_message(token, rcpt=f"{self.name}@b.test",
                                                         extra_body="x" * random.randint(0, 3000)))
                        text = resp.decode("utf-8", "replace")
                        if code == 250:
                            qid = queued_id(text)
                            if not qid:
                                self.anomalies.append(f"250 without ID: {text}")
                                continue
                            with self.lock:
                                self.acked.append((qid, token))
                        else:
                            raise smtplib.SMTPException(f"DATA {code} {text}")
            except (OSError, smtplib.SMTPException, socket.timeout):
                self.errors += 1
                self.stop_event.wait(0.05)


# "filesystem": the writers fsync nothing, one syncfs(2) per group does it.
@pytest.mark.parametrize("spool_sync", ["file", "filesystem"])
def test_kill9_loses_no_acknowledged_message(make_gateway, report, spool_sync):
    gw = make_gateway(start=False, spool_sync=spool_sync)
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    per_cycle = []
    errors = 0
    anomalies: list[str] = []
    for cycle in range(3):
        gw.start()
        stop = threading.Event()
        threads = [Sender(gw.smtp_port, acked, lock, stop, f"t{cycle}{i}") for i in range(4)]
        before = len(acked)
        for t in threads:
            t.start()
        time.sleep(random.uniform(1.5, 3.0))
        gw.kill9()
        stop.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive(), "a sender thread hung"
            errors += t.errors
            anomalies += t.anomalies
        per_cycle.append(len(acked) - before)

    gw.start()
    ids = [qid for qid, _ in acked]
    report(f"acknowledged per kill -9 cycle: {per_cycle}, total {len(acked)}, "
           f"client errors (reconnects) {errors}")
    assert not anomalies, anomalies
    assert all(n > 0 for n in per_cycle), f"a cycle acknowledged nothing: {per_cycle}"
    assert len(set(ids)) == len(ids), "a queue ID was acknowledged twice"

    queue = {m["id"]: m for m in gw.queue()}
    on_disk = set(gw.spool_ids())
    report(f"queued after restart: {len(queue)} (acknowledged {len(acked)}); spool files: {len(on_disk)}")
    missing = [qid for qid in ids if qid not in queue]
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:10]}"
    missing_files = [qid for qid in ids if qid not in on_disk]
    assert not missing_files, f"acknowledged messages without spool file: {missing_files[:10]}"
    wrong = []
    for qid, token in acked:
        if token not in queue[qid].get("message_id", ""):
            wrong.append((qid, "message_id", queue[qid].get("message_id")))
            continue
        if f"body {token}".encode() not in gw.spool_file(qid).read_bytes():
            wrong.append((qid, "content", None))
    assert not wrong, f"{len(wrong)} messages with wrong content, e.g. {wrong[:5]}"

    # Still serving.
    gw.send_raw(token="after-crashes")


def _lookalike(real: str, k: int, taken: set[str]) -> str:
    """An ID of the same shape as `real` (same length, same character classes)."""
    for shift in range(k, k + 50):
        chars = list(real)
        for pos in range(len(chars) - 1, max(-1, len(chars) - 5), -1):
            c = chars[pos]
            if c.isdigit():
                chars[pos] = str((int(c) + shift) % 10)
            elif "A" <= c <= "Z":
                chars[pos] = chr((ord(c) - 65 + shift) % 26 + 65)
            elif "a" <= c <= "z":
                chars[pos] = chr((ord(c) - 97 + shift) % 26 + 97)
        candidate = "".join(chars)
        if candidate != real and candidate not in taken:
            return candidate
    raise AssertionError(f"cannot derive a look-alike of {real}")


def test_corrupt_spool_files_quarantined(make_gateway):
    gw = make_gateway()
    real = [gw.send_raw(token=f"real{i}") for i in range(2)]
    assert gw.stop() == 0

    taken = set(gw.spool_ids())
    assert set(real) <= taken, (real, taken)
    junk_id = _lookalike(real[0], 1, taken)
    taken.add(junk_id)
    trunc_id = _lookalike(real[0], 7, taken)
    (gw.queue_dir / junk_id).write_bytes(b"\x00\xffthis is not a queue file\n" + bytes(range(256)))
    whole = gw.spool_file(real[1]).read_bytes()
    (gw.queue_dir / trunc_id).write_bytes(whole[: len(whole) // 2])

    flip_id = real[0]
    data = bytearray(gw.spool_file(flip_id).read_bytes())
    pos = data.find(b"body real0")
    assert pos > 0, "token not found in the spool file"
    data[pos] ^= 0x20  # one flipped bit in the body
    gw.spool_file(flip_id).write_bytes(bytes(data))
    empty_id = _lookalike(real[0], 13, taken | {trunc_id})
    (gw.queue_dir / empty_id).write_bytes(b"")

    gw.start()
    for bad in (junk_id, trunc_id, empty_id, flip_id):
        assert not (gw.queue_dir / bad).exists(), f"{bad} still in spool/queue"
        assert gw.corrupt_dir.is_dir(), "no spool/corrupt directory"
        assert any(bad in p.name for p in gw.corrupt_dir.iterdir()), \
            f"{bad} not moved to spool/corrupt: {[p.name for p in gw.corrupt_dir.iterdir()]}"
    ids = gw.queue_ids()
    assert ids == [real[1]], f"queue after quarantine: {ids}"
    assert gw.spool_file(real[1]).is_file()
    # Still serving.
    new = gw.send_raw(token="after-quarantine")
    assert new not in (junk_id, trunc_id, empty_id, flip_id)
    assert sorted(gw.queue_ids()) == sorted([real[1], new])
    assert "corrupt" in (gw.stderr() + gw.log()).lower(), "quarantine not reported"


def test_cli_under_load(make_gateway, report):
    """The CLI shares the store with a gateway busy accepting mail: no
    "database is locked", no broken JSON."""
    gw = make_gateway()
    acked, lock, stop = [], threading.Lock(), threading.Event()
    threads = [Sender(gw.smtp_port, acked, lock, stop, f"l{i}", timeout=20) for i in range(4)]
    for t in threads:
        t.start()
    failures = []
    rounds = 0
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            rounds += 1
            for args in (("settings", "set", "mta.max_recipients", str(100 + rounds)),
                         ("queue", "list", "--json"), ("cert", "list"), ("settings", "show")):
                r = gw.cli(*args)
                if r.rc != 0:
                    failures.append(r)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    report(f"{rounds} CLI rounds while {len(acked)} messages were accepted")
    assert not failures, f"{len(failures)} CLI calls failed under load, first: {failures[0]}"
    assert len(acked) > 0
    errors = sum(t.errors for t in threads)
    assert errors == 0, f"{errors} client errors while the CLI was used"
    ids = set(gw.queue_ids())
    assert all(q in ids for q, _ in acked)
