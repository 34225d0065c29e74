#!/usr/bin/env bash
# Build the Debian package of Postern from an already built release binary:
#   packaging/build-deb.sh [BINARY] [OUTPUT_DIR]
# BINARY defaults to target/release/postern (cargo build --release -p postern),
# OUTPUT_DIR to target/debian. Prints the path of the .deb it wrote.
#
# Plain dpkg-deb rather than cargo-deb: nothing to compile or install in CI,
# and the whole layout is in this one file.
#
# The package: /usr/bin/postern, /etc/postern/postern.toml (conffile, the
# production defaults), /lib/systemd/system/postern.service, and maintainer
# scripts that create the postern user and /var/lib/postern (debian/).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-target/release/postern}
out_dir=${2:-target/debian}
if [ ! -x "$binary" ]; then
  echo "build-deb: $binary is missing; build it first: cargo build --release --locked -p postern" >&2
  exit 1
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
if [ -z "$version" ]; then
  echo "build-deb: no version in [workspace.package] of Cargo.toml" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/etc/postern" \
  "$root/lib/systemd/system" "$root/usr/share/doc/postern"
# Debug line tables stay in target/; the package gets the code and symbols.
objcopy --strip-debug "$binary" "$root/usr/bin/postern"
chmod 0755 "$root/usr/bin/postern"
install -m 0644 packaging/postern.toml "$root/etc/postern/postern.toml"
install -m 0644 packaging/postern.service "$root/lib/systemd/system/postern.service"
install -m 0644 README.md "$root/usr/share/doc/postern/README.md"
install -m 0644 packaging/debian/copyright "$root/usr/share/doc/postern/copyright"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/postern/postern.toml >"$root/DEBIAN/conffiles"

# Shared-library dependencies as Debian computes them (libc6, libgcc-s1).
mkdir -p "$stage/src/debian"
printf 'Source: postern\n\nPackage: postern\nArchitecture: any\n' >"$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O -e"$root/usr/bin/postern" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
if [ -z "$shlibs" ]; then
  echo "build-deb: dpkg-shlibdeps found no library dependencies for $binary" >&2
  exit 1
fi

cat >"$root/DEBIAN/control" <<CONTROL
Package: postern
Version: $version
Architecture: $arch
Maintainer: Postern maintainers <postmaster@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $shlibs, passwd
Section: mail
Priority: optional
Homepage: https://localhost/postern
Description: secure SMTP gateway
 Postern sits at the edge of an organisation's mail system: it accepts mail
 from the internet and from internal servers, keeps it safely on disk
 (nothing gets 250 before it is fsync'd) and relays it on, with the TLS
 security of every hop under the administrator's control. Runs as the
 unprivileged postern user under systemd (postern.service).
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum) \
  >"$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
deb="$out_dir/postern_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$deb"
