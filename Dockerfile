# Multi-stage build: compile in the Rust image, run as a non-root user in a slim Debian image.
FROM rust:1-bookworm AS build
# The `plugins` feature (default) embeds CPython: PyO3 asks python3 for its configuration and
# links libpython3.11.so (python3-dev brings both, Debian's 3.11 as in the runtime stage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin pgsync

FROM debian:bookworm-slim
# libpython3.11 (with its standard library) runs PGSync plugins; mount them at
# /var/lib/pgsync/plugins (the default [plugins] path, relative to the working directory).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libpython3.11 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pgsync --create-home pgsync
COPY --from=build /src/target/release/pgsync /usr/local/bin/pgsync
# PGSync's script names: its entrypoints (`bootstrap -c schema.json`, `parallel_sync ...`) run as is.
RUN ln -s pgsync /usr/local/bin/bootstrap && ln -s pgsync /usr/local/bin/parallel_sync
COPY config/pgsync.example.toml /etc/pgsync/pgsync.example.toml
USER pgsync
WORKDIR /var/lib/pgsync
# PGSync's variable, so a deployment's own CHECKPOINT_PATH still wins.
ENV CHECKPOINT_PATH=/var/lib/pgsync/state
ENTRYPOINT ["pgsync"]
CMD ["run", "--config", "/etc/pgsync/pgsync.toml"]
