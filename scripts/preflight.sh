#!/usr/bin/env bash
# Check that every real peer the tests use can do what the tests ask of it,
# before any test runs. One line per missing capability, naming what is
# missing and what provides it; exit status 1 if anything is missing.
#
# A package can be installed and still lack what a test needs: swaks
# installed with --no-install-recommends has no TLS (Net::SSLeay is only a
# recommends), so these checks ask each tool, not dpkg.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=0
fail() {
  echo "preflight: $*" >&2
  missing=1
}
has() { command -v "$1" >/dev/null 2>&1; }

# swaks: plain, STARTTLS (--tls) and implicit TLS (--tlsc), with
# certificate verification (--tls-verify).
if ! has swaks; then
  fail "swaks is missing (Debian package swaks)"
else
  support=$(swaks --support 2>&1)
  if ! grep -q '^=== TLS supported' <<<"$support"; then
    why=$(grep -m1 'TLS not available' <<<"$support" | sed 's/^\*\*\* //')
    fail "swaks cannot do TLS (${why:-no 'TLS supported' in swaks --support}): install libnet-ssleay-perl and libio-socket-ssl-perl"
  fi
fi

# openssl CLI: certificates (req, x509, genpkey) and s_client/s_server.
if ! has openssl; then
  fail "openssl is missing (Debian package openssl)"
elif ! openssl s_client -help >/dev/null 2>&1 || ! openssl genpkey -algorithm EC \
  -pkeyopt ec_paramgen_curve:P-256 >/dev/null 2>&1; then
  fail "openssl cannot run s_client or make an EC P-256 key (Debian package openssl)"
fi

# Postfix: private instances as upstream sender and downstream receiver.
for tool in postfix postconf postqueue; do
  if ! has "$tool" && [ ! -x "/usr/sbin/$tool" ]; then
    fail "Postfix's $tool is missing (Debian package postfix)"
  fi
done
daemon_dir=$( (postconf -h daemon_directory || /usr/sbin/postconf -h daemon_directory) 2>/dev/null)
for daemon in master smtpd smtp qmgr; do
  if [ ! -x "${daemon_dir:-/usr/lib/postfix/sbin}/$daemon" ]; then
    fail "Postfix's $daemon daemon is missing in ${daemon_dir:-/usr/lib/postfix/sbin} (Debian package postfix)"
  fi
done

# dig: queries against the tests' loopback DNS server.
if ! has dig; then
  fail "dig is missing (Debian package dnsutils)"
fi

# testssl.sh: the TLS scan of the SMTP listener.
if ! has testssl && ! has testssl.sh; then
  fail "testssl.sh is missing (Debian package testssl.sh)"
fi

# Chromium headless with the npm driver: the admin UI browser tests.
chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  fail "Chromium is missing at $chromium (Debian package chromium)"
else
  # A real headless start: a missing shared library or a sandbox problem
  # shows here, not in the middle of a browser test.
  page=$(timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$(mktemp -d)" --dump-dom 'data:text/html,<p>postern-preflight</p>' 2>/dev/null)
  if ! grep -q postern-preflight <<<"$page"; then
    fail "Chromium does not render a page headless ($chromium --headless --dump-dom failed)"
  fi
fi
if ! has node; then
  fail "node is missing (Node.js >= 20 with npm)"
elif ! node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)'; then
  fail "node $(node --version) is too old: the browser tests need Node.js >= 20"
elif ! (cd tests/browser && node -e 'import("playwright-core").then(() => process.exit(0), () => process.exit(1))'); then
  fail "the browser driver playwright-core is missing (npm ci in tests/browser)"
fi

# PostgreSQL server binaries: the cluster tests start a private server
# (initdb/pg_ctl as the postgres user, in a temporary directory).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
for tool in initdb pg_ctl postgres; do
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/$tool" ]; then
    fail "PostgreSQL's $tool is missing (Debian package postgresql)"
  fi
done
if ! id postgres >/dev/null 2>&1; then
  fail "the postgres user is missing (Debian package postgresql)"
fi

# The unprivileged user a gateway started as root switches to.
if ! id postern >/dev/null 2>&1; then
  fail "the postern system user is missing (useradd --system --no-create-home --shell /usr/sbin/nologin postern)"
fi

# The Debian package test: builds with dpkg-deb, computes the shared-library
# dependencies with dpkg-shlibdeps, strips debug info with objcopy, starts
# the gateway through setpriv.
for tool in dpkg-deb dpkg-shlibdeps objcopy setpriv; do
  if ! has "$tool"; then
    case $tool in
      dpkg-shlibdeps) fail "dpkg-shlibdeps is missing (Debian package dpkg-dev)" ;;
      objcopy) fail "objcopy is missing (Debian package binutils)" ;;
      setpriv) fail "setpriv is missing (Debian package util-linux)" ;;
      *) fail "$tool is missing (Debian package dpkg)" ;;
    esac
  fi
done

# The unit file checks: systemd-analyze verify / syscall-filter, and strace
# to see which system calls the gateway makes.
if ! has systemd-analyze; then
  fail "systemd-analyze is missing (Debian package systemd)"
fi
# tests/test_spool_sync.py also attaches strace -p -y to a running gateway
# (ptrace may be refused in a container) and reads the paths of fds.
if ! has strace; then
  fail "strace is missing (Debian package strace)"
else
  sleep 5 &
  sleeper=$!
  attach=$(timeout 10 strace -qq -y -p "$sleeper" -e trace=none 2>&1 & sleep 0.3; kill "$sleeper" 2>/dev/null; wait)
  if grep -qi "operation not permitted\|attach: ptrace" <<<"$attach"; then
    fail "strace cannot attach to a running process (${attach%%$'\n'*}): ptrace is refused here"
  fi
fi

# tests/test_tlsrpt.py starts a gateway on a later UTC day with libfaketime
# (LD_PRELOAD): it must move the clock a process reads.
faketime_lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [ ! -e "$faketime_lib" ]; then
  fail "libfaketime is missing ($faketime_lib; Debian package libfaketime)"
elif [ "$(LD_PRELOAD=$faketime_lib FAKETIME=+3d date -u +%F)" != "$(date -u -d +3days +%F)" ]; then
  fail "libfaketime ($faketime_lib) does not move the clock of a process it is preloaded into"
fi

# The lint steps of the test command.
if ! cargo fmt --version >/dev/null 2>&1; then
  fail "cargo fmt is missing (rustup component add rustfmt)"
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  fail "cargo clippy is missing (rustup component add clippy)"
fi

# pytest and the rest of tests/requirements.txt in the venv.
venv=${VENV:-target/pyenv}
if ! "$venv/bin/python" -c 'import pytest, dnslib' >/dev/null 2>&1; then
  fail "the Python venv $venv lacks pytest or dnslib (pip install -r tests/requirements.txt)"
fi

exit "$missing"
