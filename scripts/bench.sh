#!/usr/bin/env bash
# Postern vs Postfix, Exim and OpenSMTPD, side by side on loopback (docs/performance.md).
#
#   ./scripts/bench.sh --quick      # smoke run, < 2 minutes after the build
#   ./scripts/bench.sh              # the full matrix, 5 rounds (~10 minutes)
#   ./scripts/bench.sh --only tls-4k-c10,newconn-tls-4k-c10 --rounds 3
#   ./scripts/bench.sh --help       # every option (scripts/bench.py)
#   ./scripts/bench.sh --curve      # latency curve at 25/50/75/90% of Postern's peak (scripts/bench_curve.py)
#
# Builds postern and postern-bench (release), installs Postfix from Debian
# when missing (package only: "No configuration", the system instance stays
# unconfigured and stopped), unpacks Exim 4 and OpenSMTPD from Debian
# without installing them (scripts/bench-peers-setup.sh; BENCH_NO_PEERS=1
# skips it, and so do --no-postfix and a --peers list without them), raises the open-files limit for the
# idle-connection test, then runs scripts/bench.py, which sets up the sink,
# Postern and private Postfix, Exim and OpenSMTPD instances under
# /tmp/postern-bench-*/ and prints the tables. Raw results: target/bench/results-*.json.
# Needs root (or sudo for apt-get; Postfix's master must start as root).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
for pkg in postfix openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_pkgs[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Exim 4 and OpenSMTPD from Debian, unpacked under target/bench-peers (not
# installed: they conflict with Postfix), unless the run is Postern only or
# names its peers without them.
peers_wanted=yes
prev=""
for a in "$@"; do
  case "$a" in
    --no-postfix|--curve) peers_wanted=no ;;
    --peers=*) case "${a#--peers=}" in *exim*|*opensmtpd*) ;; *) peers_wanted=no ;; esac ;;
  esac
  if [ "$prev" = --peers ]; then case "$a" in *exim*|*opensmtpd*) ;; *) peers_wanted=no ;; esac; fi
  prev="$a"
done
if [ "$peers_wanted" = yes ] && [ "${BENCH_NO_PEERS:-}" = "" ]; then
  ./scripts/bench-peers-setup.sh
fi

if [ "${BENCH_NO_BUILD:-}" = "" ]; then
  echo "== cargo build --release -p postern -p postern-bench"
  cargo build --release -p postern -p postern-bench
fi

# 10,000 idle connections (50,000 with --idle-max 50000): one descriptor
# each in Postern and in the load generator, plus the rest. Both raise
# their own soft limit to the hard one; bench.py raises the hard limit
# when it is too low and it runs as root.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(id -u)" != 0 ] && [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
  echo "note: open-files limit is $(ulimit -n); the 10,000-connection test needs ~10,100" >&2
fi

# ./scripts/bench.sh --curve [options]: the open-loop latency curve instead
# (scripts/bench_curve.py --help; SVGs in target/bench/ unless --svg-dir).
script=scripts/bench.py
if [ "${1:-}" = --curve ]; then
  shift
  script=scripts/bench_curve.py
fi
exec python3 "$script" \
  --postern-bin target/release/postern \
  --bench-bin target/release/postern-bench "$@"
