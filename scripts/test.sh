#!/usr/bin/env bash
# Run every test Postern has, installing what they need on a fresh machine:
# Debian packages (the real peers), the browser driver from npm, a Python
# venv with pytest; then checks that every peer can do what the tests ask
# (scripts/preflight.sh) before running
#   1. cargo fmt --check and cargo clippy -D warnings (no unwrap outside tests)
#   2. cargo test  — unit tests and socket-free session dialogs
#   3. pytest      — whole-gateway tests on loopback with real clients
# One build profile (release) serves them all, so there is one cold build.
# Each step prints how long it took, and a summary at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

timings=()
summary() {
  [ ${#timings[@]} -gt 0 ] || return 0
  echo "== time per step"
  printf '%s\n' "${timings[@]}"
}
# The throwaway PostgreSQL (below) is stopped however the script ends.
cleanup() {
  summary
  if [ -n "${POSTERN_TEST_PG_DIR:-}" ]; then scripts/pg-test-server.sh stop "$POSTERN_TEST_PG_DIR"; fi
}
trap cleanup EXIT
# step NAME COMMAND...: run one step, say how long it took.
step() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  local took=$((SECONDS - start))
  timings+=("$(printf '%6ss  %s' "$took" "$name")")
  echo "-- $name: ${took}s"
}

# Real peers, each with what the tests use of it (packages are installed
# with --no-install-recommends, so what a test needs from a recommends is
# named here):
#   swaks + libnet-ssleay-perl, libio-socket-ssl-perl  — SMTP client with TLS
#   openssl                     — certificates, s_client/s_server
#   postfix                     — private upstream/downstream instances
#                                 ("No configuration": the system one stays off)
#   dnsutils                    — dig against the test DNS server
#   testssl.sh                  — TLS scanner
#   chromium, fonts-dejavu-core — headless admin UI tests
#   postgresql                  — initdb/pg_ctl for a private cluster store
#   python3-venv                — the pytest venv
#   dpkg-dev                    — dpkg-shlibdeps for the Debian package test
#   systemd, strace             — systemd-analyze verify and the unit's system
#                                 call filter checked against a traced gateway
#                                 (systemd itself is not started)
#   libfaketime                 — a gateway started on a later UTC day, for
#                                 the TLS-RPT daily run (LD_PRELOAD)
debian_pkgs=(swaks libnet-ssleay-perl libio-socket-ssl-perl openssl postfix dnsutils
  testssl.sh chromium fonts-dejavu-core postgresql python3-venv dpkg-dev systemd strace
  libfaketime)
install_debian_packages() {
  local need=() pkg
  for pkg in "${debian_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
  done
  if [ ${#need[@]} -eq 0 ]; then
    echo "all present"
    return
  fi
  echo "installing: ${need[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The unprivileged user a gateway started as root switches to.
create_postern_user() {
  if id postern >/dev/null 2>&1; then
    echo "exists"
  else
    as_root useradd --system --no-create-home --shell /usr/sbin/nologin postern
  fi
}

# cargo fmt and cargo clippy (a rustup "minimal" profile lacks them).
install_rust_components() {
  local need=() component
  cargo fmt --version >/dev/null 2>&1 || need+=(rustfmt)
  cargo clippy --version >/dev/null 2>&1 || need+=(clippy)
  if [ ${#need[@]} -eq 0 ]; then
    echo "all present"
  elif command -v rustup >/dev/null; then
    rustup component add "${need[@]}"
  fi
}

# playwright-core drives Debian's Chromium; no browser download.
install_browser_driver() {
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
}

venv=target/pyenv
install_python_venv() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/requirements.txt
}

# A throwaway PostgreSQL (TLS from a test CA, scram-sha-256) on loopback for
# the store conformance suite and the cluster tests; exports
# POSTERN_TEST_PG_URL, _CA, _PLAIN_URL and _DIR (docs/cluster.md).
start_pg_test_server() {
  eval "$(scripts/pg-test-server.sh start | sed 's/^/export /')"
  echo "$POSTERN_TEST_PG_DIR"
}

run_pytest() {
  # CI=1: a missing peer (testssl, Chromium, the postern user) fails its test
  # instead of skipping it — this script installed all of them.
  CI=1 POSTERN_BIN="$PWD/target/release/postern" "$venv/bin/python" -m pytest -q tests/ "$@"
}

step "Debian packages" install_debian_packages
step "postern system user" create_postern_user
step "Rust components (rustfmt, clippy)" install_rust_components
step "browser driver (npm ci)" install_browser_driver
step "Python venv" install_python_venv
# Exim 4 and OpenSMTPD unpacked (not installed: they conflict with Postfix)
# for tests/test_bench_peers.py, which checks the bench's configurations
# with the real daemons.
step "bench peers (Exim, OpenSMTPD unpacked)" scripts/bench-peers-setup.sh
step "preflight: every peer can do what the tests ask" env VENV="$venv" scripts/preflight.sh
step "cargo fmt --check" cargo fmt --all -- --check
# Release profile: clippy reuses the build scripts' output (aws-lc, SQLite)
# of the test build; it still checks every dependency once (~3 min cold).
step "cargo clippy (release, -D warnings)" \
  cargo clippy --workspace --all-targets --locked --release -- -D warnings
step "throwaway PostgreSQL" start_pg_test_server
step "cargo test (release)" cargo test --release --workspace --locked
# The binaries the whole-gateway tests run, built with the test build's
# feature set (--workspace --all-targets): `-p postern -p postern-bench`
# resolves features without the dev-dependencies and recompiled dozens of
# crates (317 s in a loaded CI run, against 61 s for this on the same machine).
step "cargo build (release)" cargo build --release --locked --workspace --all-targets
step "whole-gateway tests" run_pytest "$@"
