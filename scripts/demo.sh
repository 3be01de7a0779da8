#!/usr/bin/env bash
# One command from a fresh machine to a real sync of the bundled example (examples/book):
# installs what is missing, starts a throwaway PostgreSQL 15 (wal_level=logical) and
# osmem-server (an in-memory OpenSearch-compatible server) on free ports, loads the example,
# runs the initial sync, then starts the daemon, changes a row and shows the document follow.
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/install-deps.sh
cargo build --release --bin pgsync
bin="$root/target/release/pgsync"

work=$(mktemp -d /tmp/pgsync-demo.XXXXXX)
pgbin=/usr/lib/postgresql/15/bin
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown nobody "$work"
  as_pg=(runuser -u nobody --)
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

pgport=$(free_port)
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start \
  -o "-p $pgport -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c TimeZone=UTC" >/dev/null
psql -X -q -h 127.0.0.1 -p "$pgport" -U postgres -c "CREATE DATABASE bookshop"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pgport" -U postgres -d bookshop -f examples/book/setup.sql

osmem=$(python3 -c 'import os, osmem_server; print(os.path.join(os.path.dirname(osmem_server.__file__), "bin", "osmem-server"))')
"$osmem" -addr "127.0.0.1:0" -no-stdin-watch -parent-pid $$ > "$work/osmem.out" 2>"$work/osmem.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '"url"' "$work/osmem.out" 2>/dev/null && break; sleep 0.1; done
search=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["url"])' "$work/osmem.out")

cat > "$work/pgsync.toml" <<TOML
[postgres]
host = "127.0.0.1"
port = $pgport
user = "postgres"

[search]
url = "$search"
engine = "opensearch"

[schema]
path = "$root/examples/book/schema.json"

[checkpoint]
dir = "$work/state"
TOML

echo "== pgsync validate"
"$bin" validate --config "$work/pgsync.toml"
echo "== pgsync run --once (initial sync)"
"$bin" run --once --config "$work/pgsync.toml"
show() { curl -s "$search/books/_doc/$1" | python3 -m json.tool; }
echo "== document 3 in the index"
show 3

echo "== pgsync run (daemon): rename an author and watch document 3 follow"
"$bin" run --config "$work/pgsync.toml" 2>"$work/daemon.log" &
daemon=$!
pids+=($daemon)
for _ in $(seq 100); do
  [ "$(psql -X -At -h 127.0.0.1 -p "$pgport" -U postgres -d bookshop -c "SELECT count(*) FROM pg_replication_slots WHERE active")" = 1 ] && break
  sleep 0.1
done
psql -X -q -h 127.0.0.1 -p "$pgport" -U postgres -d bookshop -c "UPDATE author SET name = 'Sir Terry Pratchett' WHERE name = 'Terry Pratchett'"
for _ in $(seq 100); do
  curl -s "$search/books/_doc/3" | grep -q "Sir Terry" && break
  sleep 0.1
done
show 3
kill -TERM "$daemon"; wait "$daemon" && echo "== daemon stopped cleanly"
