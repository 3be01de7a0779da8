#!/usr/bin/env bash
# Produces PGSync 7.3's own output for a fixture directory, in the format of
# ../shared/fixtures (see ../shared/README.md), so that the conformance test
# compares us with the real thing for shapes the shared fixtures lack.
#
#   scripts/pgsync-reference.sh tests/fixtures/pgsync/chains
#
# The directory holds schema.json (one database), setup.sql and mutations.sql;
# the script writes initial.json, after.json, resync.json and NOTES.md. It
# starts private PostgreSQL 15 (wal_level=logical), Redis and osmem-server on
# free ports (as the test harness does), then runs PGSync from its venv
# (PGSYNC_VENV, default /opt/pgsync-venv; scripts/install-deps.sh creates it):
# `bootstrap`, one `pgsync` pass (initial.json), the daemon while the
# mutations are applied one transaction at a time (after.json, once the index
# stops changing), then a fresh full sync of the final state (resync.json).
set -euo pipefail

FIXTURE=$(cd "${1:?usage: $0 FIXTURE_DIR}" && pwd)
VENV=${PGSYNC_VENV:-/opt/pgsync-venv}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$VENV/bin/pgsync" ] || { echo "no PGSync in $VENV: run scripts/install-deps.sh" >&2; exit 1; }
DB=$(python3 -c 'import json,sys; print({d["database"] for d in json.load(open(sys.argv[1]))}.pop())' "$FIXTURE/schema.json")

WORK=$(mktemp -d -t pgsync-reference.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/pg/postmaster.pid" ] && run_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# On failure show what PGSync said.
trap 'for f in "$WORK"/*.log; do echo "== $f" >&2; tail -n 25 "$f" >&2; done' ERR
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# initdb and postgres refuse root: run them as the postgres user then.
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

PG_PORT=$(free_port); REDIS_PORT=$(free_port); OS_PORT=$(free_port)
mkdir -p "$WORK/pg" "$WORK/ckpt"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK" "$WORK/pg"
run_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start -o \
    "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10" >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --logfile "$WORK/redis.log" &
PIDS+=($!)
OSMEM=${OSMEM_BIN:-$(python3 -c 'import os,osmem_server; print(os.path.join(os.path.dirname(osmem_server.__file__),"bin","osmem-server"))')}
# osmem-server exits when its stdin closes: hold a FIFO open until the script ends.
mkfifo "$WORK/osmem.in"
"$OSMEM" -addr "127.0.0.1:$OS_PORT" <"$WORK/osmem.in" >"$WORK/osmem.log" 2>&1 &
PIDS+=($!)
exec 3>"$WORK/osmem.in"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$OS_PORT/" >/dev/null && break; sleep 0.1; done

PSQL=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$DB\""
"${PSQL[@]}" -d "$DB" -v ON_ERROR_STOP=1 -f "$FIXTURE/setup.sql" >/dev/null

export PG_HOST=127.0.0.1 PG_PORT PG_USER=postgres PG_PASSWORD=
export ELASTICSEARCH_HOST=127.0.0.1 ELASTICSEARCH_PORT=$OS_PORT ELASTICSEARCH_SCHEME=http
export OPENSEARCH=true ELASTICSEARCH_HTTP_COMPRESS=false
export REDIS_HOST=127.0.0.1 REDIS_PORT CHECKPOINT_PATH=$WORK/ckpt
cd "$WORK"

# {index: [{_id, _source, _meta}]} sorted by _id, as the shared fixtures.
dump() {
    python3 - "$OS_PORT" "$FIXTURE/schema.json" <<'PY'
import json, sys, urllib.request
port, schema = sys.argv[1], json.load(open(sys.argv[2]))
def call(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
out = {}
for doc in schema:
    index = doc.get("index") or doc["database"]
    call("POST", f"/{index}/_refresh")
    res = call("POST", f"/{index}/_search", {"size": 10000, "query": {"match_all": {}}})
    docs = []
    for hit in (res or {}).get("hits", {}).get("hits", []):
        src = dict(hit["_source"])
        meta = src.pop("_meta", None)
        docs.append({"_id": hit["_id"], "_meta": meta, "_source": src})
    out[index] = sorted(docs, key=lambda d: d["_id"])
print(json.dumps(out, indent=2, sort_keys=True))
PY
}

"$VENV/bin/bootstrap" --config "$FIXTURE/schema.json" >"$WORK/bootstrap.log" 2>&1
"$VENV/bin/pgsync" --config "$FIXTURE/schema.json" >"$WORK/once.log" 2>&1
dump >"$FIXTURE/initial.json"

"$VENV/bin/pgsync" --config "$FIXTURE/schema.json" --daemon >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
PIDS+=("$DAEMON")
sleep 3
failed=0
# One transaction per statement, BEGIN..COMMIT blocks whole (as psql in autocommit mode).
python3 - "$FIXTURE/mutations.sql" >"$WORK/tx.list" <<'PY'
import sys
tx, block = [], None
for line in open(sys.argv[1]):
    s = line.strip()
    if not s or s.startswith("--"):
        continue
    if s.upper() == "BEGIN;":
        block = [s]; continue
    if block is not None:
        block.append(s)
        if s.upper() == "COMMIT;":
            tx.append(" ".join(block)); block = None
        continue
    tx.append(s)
print("\0".join(tx), end="")
PY
while IFS= read -r -d '' stmt; do
    "${PSQL[@]}" -d "$DB" -v ON_ERROR_STOP=1 -c "$stmt" >/dev/null 2>>"$WORK/mutations.err" || failed=$((failed + 1))
    sleep 0.3
done < <(cat "$WORK/tx.list"; printf '\0')
# The daemon is done when the index stops changing for 6 seconds.
prev=""; stable=0
for _ in $(seq 120); do
    cur=$(dump)
    if [ "$cur" = "$prev" ]; then stable=$((stable + 1)); else stable=0; fi
    [ "$stable" -ge 3 ] && break
    prev=$cur; sleep 2
done
printf '%s\n' "$cur" >"$FIXTURE/after.json"
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true

# A fresh full sync of the final state.
python3 - "$OS_PORT" "$FIXTURE/schema.json" <<'PY'
import json, sys, urllib.request
port, schema = sys.argv[1], json.load(open(sys.argv[2]))
for doc in schema:
    index = doc.get("index") or doc["database"]
    try:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/{index}", method="DELETE"))
    except urllib.error.HTTPError:
        pass
PY
rm -f "$WORK"/ckpt/.* 2>/dev/null || true
redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
"$VENV/bin/pgsync" --config "$FIXTURE/schema.json" >"$WORK/resync.log" 2>&1
dump >"$FIXTURE/resync.json"

counts() { python3 -c 'import json,sys; print({k: len(v) for k, v in json.load(open(sys.argv[1])).items()})' "$1"; }
same=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])) == json.load(open(sys.argv[2])))' "$FIXTURE/after.json" "$FIXTURE/resync.json")
cat >"$FIXTURE/NOTES.md" <<EOF
# $(basename "$FIXTURE")

Produced by PGSync $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pgsync"))') (PyPI) against PostgreSQL 15 and osmem-server, by scripts/pgsync-reference.sh.

- documents per index: initial $(counts "$FIXTURE/initial.json"), after mutations $(counts "$FIXTURE/after.json"), full re-sync $(counts "$FIXTURE/resync.json")
- mutation statements that failed in psql: $failed
- PGSync's change capture matched its own full re-sync exactly: $same
EOF
echo "wrote $FIXTURE/{initial,after,resync}.json and NOTES.md" >&2
