# syntax=docker/dockerfile:1
#
# The LogPlayer image: one binary, `logplayer`, whose subcommands are the operator, the
# player, the LogStore and the shard server.
#
#   docker build -t ghcr.io/logplayer/logplayer:0.1.0 .
#
# The binary links glibc dynamically, so the runtime image is distroless/cc (glibc, libgcc,
# CA certificates, no shell), the same Debian release (12, bookworm) as the builder.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# 1. Dependencies only, against placeholder sources, so this layer is reused until
#    Cargo.toml, Cargo.lock, build.rs or proto/ change. build.rs compiles proto/ with protox
#    (pure Rust): no protoc is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The real sources. COPY keeps the files' original mtimes, which can be older than the
#    placeholder build above; touch them so cargo rebuilds the crate itself.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/logplayer /out/logplayer

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="logplayer" \
      org.opencontainers.image.description="Exactly-once, in-order delivery of a write-ahead log to storage shards; Kubernetes operator included" \
      org.opencontainers.image.source="https://github.com/logplayer/logplayer" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/logplayer /usr/local/bin/logplayer
# distroless "nonroot": uid/gid 65532, matching runAsUser in deploy/ and the Helm chart.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/logplayer"]
