# syntax=docker/dockerfile:1
# Multi-stage build: compile with the full Rust toolchain, ship a slim Debian
# runtime with only the binary, CA certificates (for an https Pusher auth
# endpoint or Postgres over TLS) and a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes don't rebuild them.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
# The patched socketioxide (vendor/socketioxide/PATCHES.md).
COPY vendor ./vendor
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/switchboard* target/release/.fingerprint/switchboard*
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked && strip target/release/switchboard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin switchboard \
    && mkdir -p /data && chown switchboard /data
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard

# Container defaults: listen on every interface, keep the embedded SQLite file
# on the /data volume. Set JWT_SECRET (or JWT_PUBLIC_KEY); for production use
# DATABASE_URL=postgres://… and list ALLOWED_ORIGINS.
ENV HOST=0.0.0.0 \
    PORT=7071 \
    DATABASE_URL=sqlite:///data/switchboard.db \
    RUST_LOG=info
VOLUME ["/data"]
WORKDIR /data
USER switchboard
EXPOSE 7071
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
    CMD ["switchboard", "--healthcheck"]
# SIGTERM (docker stop) drains: clients are disconnected, writes in flight finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchboard"]
