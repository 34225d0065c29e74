#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests: two servers on 127.0.0.1 in one
# temp directory — one with TLS (certificate from a test CA, for 127.0.0.1
# and localhost; `hostssl` + scram-sha-256 only), one without TLS (for the
# test that a URL without sslmode is refused).
#
#   scripts/pg-test-server.sh start   # prints KEY='VALUE' lines (shell-quoted) to eval
#   scripts/pg-test-server.sh stop DIR
#
# initdb and pg_ctl refuse to run as root, so as root they run as the
# `postgres` system user (Debian's postgresql package creates it).
set -euo pipefail

pgbin=${PG_BIN:-}
if [ -z "$pgbin" ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
[ -x "$pgbin/initdb" ] || { echo "pg-test-server: no initdb (install postgresql)" >&2; exit 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# init NAME PORT SSL(on|off)
init_server() {
  local name=$1 port=$2 ssl=$3 data="$dir/$1"
  as_pg "$pgbin/initdb" -D "$data" -U postern_test --pwfile="$dir/pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$dir/$name-initdb.log" 2>&1 \
    || { cat "$dir/$name-initdb.log" >&2; exit 1; }
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$dir'"
    echo "password_encryption = 'scram-sha-256'"
    echo "fsync = on"
    echo "max_connections = 200"
    if [ "$ssl" = on ]; then
      echo "ssl = on"
      echo "ssl_cert_file = '$dir/server.pem'"
      echo "ssl_key_file = '$dir/server.key'"
    fi
  } >>"$data/postgresql.conf"
  if [ "$ssl" = on ]; then
    printf 'local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n' >"$data/pg_hba.conf"
  else
    printf 'local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$data/pg_hba.conf"
  fi
  [ "$(id -u)" = 0 ] && chown postgres: "$data/pg_hba.conf" "$data/postgresql.conf"
  as_pg "$pgbin/pg_ctl" -D "$data" -l "$dir/$name.log" -w -t 60 start >/dev/null \
    || { cat "$dir/$name.log" >&2; exit 1; }
}

case "${1:-}" in
  start)
    dir=$(mktemp -d /tmp/postern-pg.XXXXXX)
    chmod 0755 "$dir"
    password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
    printf '%s\n' "$password" >"$dir/pwfile"
    # Test CA and a server certificate for 127.0.0.1 and localhost.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=Postern test PostgreSQL CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
    chmod 0600 "$dir/server.key" "$dir/pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir" "$dir/server.key" "$dir/server.pem" "$dir/pwfile"; fi
    tls_port=$(free_port)
    init_server tls "$tls_port" on
    plain_port=$(free_port)
    init_server plain "$plain_port" off
    echo "POSTERN_TEST_PG_DIR='$dir'"
    echo "POSTERN_TEST_PG_CA='$dir/ca.pem'"
    echo "POSTERN_TEST_PG_URL='postgres://postern_test:$password@127.0.0.1:$tls_port/postgres?sslmode=verify-full&sslrootcert=$dir/ca.pem'"
    echo "POSTERN_TEST_PG_PLAIN_URL='postgres://postern_test:$password@127.0.0.1:$plain_port/postgres'"
    ;;
  stop)
    dir=${2:?usage: pg-test-server.sh stop DIR}
    case "$dir" in /tmp/postern-pg.*) ;; *) echo "pg-test-server: not a test server directory: $dir" >&2; exit 1 ;; esac
    for name in tls plain; do
      [ -d "$dir/$name" ] && as_pg "$pgbin/pg_ctl" -D "$dir/$name" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start | stop DIR" >&2
    exit 2
    ;;
esac
