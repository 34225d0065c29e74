"""A throwaway PostgreSQL for the cluster tests (`pg_server`, `pg_database`).

scripts/test.sh starts scripts/pg-test-server.sh once and exports
POSTERN_TEST_PG_URL (a superuser URL with sslmode=verify-full and the test
CA), POSTERN_TEST_PG_CA and POSTERN_TEST_PG_PLAIN_URL (a second server
without TLS). Run alone, the fixture starts the script itself and stops it
at the end. Without PostgreSQL the tests skip — under CI=1 they fail.
"""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "pg-test-server.sh"


@dataclass
class PgServer:
    url: str          # superuser, TLS, verify-full against ca
    ca: str
    plain_url: str    # the server without TLS
    dir: str = ""     # the script's directory (for stop/start of the TLS server)

    def _pg_ctl(self, *args: str) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        cmd = [bins[-1] if bins else "pg_ctl", "-D", f"{self.dir}/tls", *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, timeout=90)
        assert p.returncode == 0, f"pg_ctl {args}: {p.stdout.decode()}{p.stderr.decode()}"

    def stop(self) -> None:
        """Stop the TLS server (a store outage); `start` brings it back."""
        assert self.dir, "POSTERN_TEST_PG_DIR unknown"
        self._pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    def start(self) -> None:
        self._pg_ctl("-l", f"{self.dir}/tls.log", "-w", "-t", "60", "start")

    def psql(self, sql: str, url: str | None = None, timeout: float = 30) -> str:
        """Run SQL with the real psql client; returns unaligned tuples."""
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
        psql = bins[-1] if bins else "psql"
        p = subprocess.run([psql, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                            url or self.url, "-c", sql],
                           capture_output=True, timeout=timeout)
        assert p.returncode == 0, f"psql {sql!r}: {p.stderr.decode()}"
        return p.stdout.decode().strip()

    def database_url(self, name: str) -> str:
        base, _, query = self.url.partition("?")
        authority = base.rsplit("/", 1)[0]
        return f"{authority}/{name}" + (f"?{query}" if query else "")

    def fresh_database(self) -> str:
        name = "c_" + uuid.uuid4().hex[:16]
        self.psql(f"CREATE DATABASE {name}")
        return self.database_url(name)

    @property
    def password(self) -> str:
        userinfo = self.url.split("://", 1)[1].rsplit("@", 1)[0]
        return userinfo.split(":", 1)[1]


def _unavailable(why: str):
    if os.environ.get("CI") == "1":
        pytest.fail(f"PostgreSQL test server unavailable under CI=1: {why}", pytrace=False)
    pytest.skip(f"PostgreSQL test server unavailable: {why}")


@pytest.fixture(scope="session")
def pg_server():
    url = os.environ.get("POSTERN_TEST_PG_URL")
    started_dir = None
    if url:
        server = PgServer(url, os.environ.get("POSTERN_TEST_PG_CA", ""),
                          os.environ.get("POSTERN_TEST_PG_PLAIN_URL", ""),
                          os.environ.get("POSTERN_TEST_PG_DIR", ""))
    else:
        try:
            p = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            _unavailable(str(e))
        if p.returncode != 0:
            _unavailable(p.stderr.decode()[-2000:])
        env = {}
        for line in p.stdout.decode().splitlines():
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
        started_dir = env["POSTERN_TEST_PG_DIR"]
        server = PgServer(env["POSTERN_TEST_PG_URL"], env["POSTERN_TEST_PG_CA"],
                          env["POSTERN_TEST_PG_PLAIN_URL"], started_dir)
    try:
        yield server
    finally:
        if started_dir:
            subprocess.run(["bash", str(SCRIPT), "stop", started_dir], capture_output=True,
                           timeout=60)


@pytest.fixture
def pg_database(pg_server) -> str:
    """The URL of a new, empty database on the test server."""
    return pg_server.fresh_database()
