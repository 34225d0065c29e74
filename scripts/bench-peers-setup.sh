#!/usr/bin/env bash
# Exim 4 and OpenSMTPD from Debian for the benchmark, beside Postfix
# (called by scripts/bench.sh; docs/performance.md, "Four MTAs side by side").
#
#   ./scripts/bench-peers-setup.sh [DIR]     # default DIR: target/bench-peers
#
# Both packages conflict with Postfix (each provides mail-transport-agent),
# and the tests need Postfix installed, so neither is installed. Instead
# `apt-get download` fetches exim4-daemon-light and opensmtpd and
# `dpkg-deb -x` unpacks them into DIR/root (binaries only; no maintainer
# scripts run, no system instance is configured or started). What their
# maintainer scripts would do that a private instance needs is done here:
#   * their shared libraries, installed with apt-get (they conflict with
#     nothing);
#   * the system users: Debian-exim (exim4-config's postinst), opensmtpd and
#     opensmtpq (opensmtpd's postinst);
#   * /var/lib/opensmtpd/empty, the empty directory OpenSMTPD's unprivileged
#     processes chroot into (the package ships it), and an empty /etc/exim4
#     (a mount point, see below).
# scripts/bench.py then runs each as a private relay under
# /tmp/postern-bench-*/ on its own loopback ports (scripts/bench_peers.py).
# Idempotent: a second call with the packages unpacked does nothing but
# check. Needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/bench-peers}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=(exim4-daemon-light opensmtpd)
# Their Depends that are shared libraries (apt-cache depends, Debian 12).
libs=(libc6 libcrypt1 libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libpcre2-8-0
      libevent-2.1-7 libpam0g libssl3 zlib1g)

mkdir -p "$dir/debs"
stamp="$dir/root/.unpacked"
want=""
for p in "${pkgs[@]}"; do
  v=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    if ! as_root apt-get update -qq; then :; fi
    v=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  fi
  [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "bench-peers: no Debian package $p" >&2; exit 1; }
  want+="$p=$v "
done

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== fetching and unpacking (not installing): $want"
  rm -rf "$dir/root" "$dir/debs"/*.deb
  ( cd "$dir/debs" && apt-get download ${want} 2>&1 | grep -v '^W: Download is performed unsandboxed' )
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  echo "$want" > "$stamp"
fi

missing=()
for l in "${libs[@]}"; do dpkg -s "$l" >/dev/null 2>&1 || missing+=("$l"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing their shared libraries: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# The users the packages' postinst scripts create.
id -u Debian-exim >/dev/null 2>&1 || as_root adduser --system --group --quiet --home /var/spool/exim4 \
  --no-create-home --disabled-login --force-badname Debian-exim
for g in opensmtpd opensmtpq; do
  getent group "$g" >/dev/null || as_root addgroup --system --quiet "$g"
done
for u in opensmtpd opensmtpq; do
  id -u "$u" >/dev/null 2>&1 || as_root adduser --system --quiet --home /var/lib/opensmtpd/empty \
    --no-create-home --disabled-password --ingroup "$u" "$u"
done
as_root install -d -m 0755 /var/lib/opensmtpd/empty
# An empty mount point: each private Exim binds its own directory (holding
# trusted_configs, Debian's TRUSTED_CONFIG_LIST) over it in a private mount
# namespace, so that it keeps root with -C as an installed Exim does.
[ -e /etc/exim4 ] || as_root install -d -m 0755 /etc/exim4

# The subreaper Exim runs under, so that the CPU of its per-message
# processes is counted (scripts/bench-reaper.c).
if [ ! -x "$dir/bench-reaper" ] || [ scripts/bench-reaper.c -nt "$dir/bench-reaper" ]; then
  cc -O2 -Wall -Werror -o "$dir/bench-reaper" scripts/bench-reaper.c
fi

# Can they run? (missing libraries or users show here, not mid-bench)
"$dir/root/usr/sbin/exim4" -C /dev/null -bV >/dev/null 2>&1 \
  || { "$dir/root/usr/sbin/exim4" -C /dev/null -bV >&2 || true; echo "bench-peers: exim4 does not run" >&2; exit 1; }
if ldd "$dir/root/usr/sbin/smtpd" "$dir/root/usr/sbin/exim4" | grep -q 'not found'; then
  ldd "$dir/root/usr/sbin/smtpd" "$dir/root/usr/sbin/exim4" | grep 'not found' >&2
  echo "bench-peers: missing shared libraries" >&2
  exit 1
fi
echo "== bench peers ready in $dir/root: $want"
