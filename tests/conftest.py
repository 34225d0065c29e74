"""Fixtures for the whole-gateway tests.

Each test gets its own directory, its own free loopback ports and its own
gateway process (`make_gateway`, or `gw` for one started with defaults).
The binary is POSTERN_BIN, else target/release/postern.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from postern_testlib import Gateway, postern_bin

# The delivery-test fixtures (DNS server, private Postfix instances, scriptable
# SMTP peers) and their failure-report hooks, for every test module.
pytest.register_assert_rewrite("fixtures_dns", "fixtures_postfix", "fixtures_peers", "delivery_support")
pytest_plugins = ["fixtures_dns", "fixtures_postfix", "fixtures_peers"]


_SUMMARY: list[str] = []


@pytest.fixture
def report(request):
    """report("text"): a line printed in the terminal summary of the run
    (figures such as messages acknowledged across kill -9 cycles)."""
    def add(text: str) -> None:
        _SUMMARY.append(f"{request.node.nodeid}: {text}")
        print(text)
    return add


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("postern figures")
        for line in _SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def postern_binary() -> Path:
    path = postern_bin()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"postern binary not found at {path} (set POSTERN_BIN)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def store_template(postern_binary, tmp_path_factory) -> Path:
    """A store created once by `postern cert list` (which must create it with
    the Default Cert); copied into each test's data dir so that only the tests
    about first use pay for an RSA-4096 key generation."""
    root = tmp_path_factory.mktemp("store-template")
    gw = Gateway(root)
    r = gw.cli("cert", "list", timeout=120)
    assert r.rc == 0, r
    assert (gw.data_dir / "postern.db").is_file(), f"cert list did not create data/postern.db\n{r}"
    # The copy must not carry an open WAL: checkpointed on close by SQLite.
    return gw.data_dir


@pytest.fixture
def make_gateway(request, tmp_path, store_template):
    """Factory: make_gateway(name="gw", fresh_store=False, start=True, **Gateway kwargs)."""
    made: list[Gateway] = []
    request.node._postern_gateways = made

    def factory(name: str = "gw", *, fresh_store: bool = False, start: bool = True, **kw) -> Gateway:
        g = Gateway(tmp_path / name, store_template=None if fresh_store else store_template, **kw)
        made.append(g)
        if start:
            g.start()
        return g

    yield factory
    for g in made:
        g.kill9()


@pytest.fixture
def gw(make_gateway) -> Gateway:
    """A running gateway with default settings (loopback is a trusted network)."""
    return make_gateway()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach each gateway's stderr and mail log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for i, g in enumerate(getattr(item, "_postern_gateways", [])):
            report.sections.append((f"gateway {i} stderr (tail)", g.stderr()[-4000:]))
            report.sections.append((f"gateway {i} mail.log (tail)", g.log()[-2000:]))


def pytest_report_header(config):
    path = postern_bin()
    try:
        swaks = subprocess.run(["swaks", "--version"], capture_output=True, timeout=10).stdout.decode().strip()
    except Exception:
        swaks = "not installed"
    return [f"postern binary: {path} (exists: {path.exists()})", f"swaks: {swaks}"]
