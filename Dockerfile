# Multi-stage build: compile in the Rust image, then a runtime stage FROM scratch holding only the
# binary, the shared libraries it loads, CPython's standard library (for PGSync plugins), the CA
# certificates and a non-root user. It has no shell and no curl: `pgsync health` is the probe.
FROM rust:1-bookworm AS build
# The `plugins` feature (default) embeds CPython: PyO3 asks python3 for its configuration and
# links libpython3.11.so (python3-dev brings both, Debian's 3.11).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin pgsync
# The runtime tree: the binary with PGSync's script names as links (its entrypoints
# `bootstrap -c schema.json`, `parallel_sync ...` run as is), every shared library the binary and
# Python's C modules load, the standard library without its tests, CA certificates, the user.
RUN set -eu; R=/rootfs; \
    mkdir -p $R/usr/local/bin $R/etc/ssl/certs $R/etc/pgsync $R/var/lib/pgsync/state $R/tmp; \
    cp target/release/pgsync $R/usr/local/bin/pgsync; \
    ln -s pgsync $R/usr/local/bin/bootstrap; ln -s pgsync $R/usr/local/bin/parallel_sync; \
    mkdir -p $R/usr/lib; cp -a /usr/lib/python3.11 $R/usr/lib/; \
    find $R/usr/lib/python3.11 -depth \( -name test -o -name tests -o -name __pycache__ \
        -o -name idlelib -o -name tkinter -o -name turtledemo -o -name ensurepip \
        -o -name 'config-3.11-*' \) -exec rm -rf {} +; \
    for f in target/release/pgsync $R/usr/lib/python3.11/lib-dynload/*.so; do \
        ldd "$f" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}'; \
    done | sort -u | while read -r lib; do \
        mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; \
    done; \
    cp /etc/ld.so.cache $R/etc/; cp /etc/ssl/certs/ca-certificates.crt $R/etc/ssl/certs/; \
    echo 'pgsync:x:10001:10001:pgsync:/var/lib/pgsync:/nonexistent' > $R/etc/passwd; \
    echo 'pgsync:x:10001:' > $R/etc/group; \
    chown -R 10001:10001 $R/var/lib/pgsync; chmod 1777 $R/tmp

FROM scratch
COPY --from=build /rootfs /
# COPY makes what it copies root's: the state directory belongs to the user that writes it.
COPY --from=build --chown=10001:10001 /rootfs/var/lib/pgsync /var/lib/pgsync
COPY config/pgsync.example.toml /etc/pgsync/pgsync.example.toml
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    # PGSync's variable, so a deployment's own CHECKPOINT_PATH still wins.
    CHECKPOINT_PATH=/var/lib/pgsync/state \
    # Metrics, /healthz and /readyz (what the HEALTHCHECK probes); override to move or drop them.
    PGSYNC_METRICS__LISTEN=0.0.0.0:9187
USER 10001:10001
WORKDIR /var/lib/pgsync
# Checkpoints (and file dead letters) survive a re-created container only on a volume: without
# one, a new container re-syncs every index. Plugins go in /var/lib/pgsync/plugins.
VOLUME ["/var/lib/pgsync/state"]
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["pgsync", "health"]
ENTRYPOINT ["pgsync"]
CMD ["run", "--config", "/etc/pgsync/pgsync.toml"]
