#!/usr/bin/env bash
# Run every test Postern has, installing what they need on a fresh machine:
# Debian packages (swaks, openssl, postfix, dnsutils), a Python venv with pytest, then
#   1. cargo test  — unit tests and socket-free session dialogs
#   2. pytest      — whole-gateway tests on loopback with real clients
# One build profile (release) serves both, so there is one cold build.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Real peers: swaks and openssl as clients, Postfix as upstream sender and
# downstream receiver (private instances only: "No configuration" keeps the
# system instance unconfigured and stopped), dig for the test DNS server,
# testssl.sh as TLS scanner, Chromium for the admin UI browser tests.
need_pkgs=()
for pkg in swaks openssl postfix dnsutils testssl.sh chromium fonts-dejavu-core postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_pkgs[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The unprivileged user a gateway started as root switches to.
if ! id postern >/dev/null 2>&1; then
  echo "== creating system user postern"
  as_root useradd --system --no-create-home --shell /usr/sbin/nologin postern
fi

echo "== installing the browser test driver (playwright-core, no browser download)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

venv=target/pyenv
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating Python venv in $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r tests/requirements.txt

# A throwaway PostgreSQL (TLS from a test CA, scram-sha-256) for the store
# conformance suite and the cluster tests; stopped when this script ends.
echo "== starting a throwaway PostgreSQL"
eval "$(scripts/pg-test-server.sh start | sed 's/^/export /')"
trap 'scripts/pg-test-server.sh stop "$POSTERN_TEST_PG_DIR"' EXIT

echo "== cargo test (release)"
cargo test --release --workspace --locked

echo "== cargo build (release)"
cargo build --release --locked -p postern -p postern-bench

echo "== whole-gateway tests"
# CI=1: a missing peer (testssl, Chromium, the postern user) fails its test
# instead of skipping it — this script installed all of them.
CI=1 POSTERN_BIN="$PWD/target/release/postern" "$venv/bin/python" -m pytest -q tests/ "$@"
