# emcachers: one binary; the built-in plugins (shape, schematic) are inside it.
#   docker build -t emcachers .
# As a drop-in for Schematic's replicator (same environment, same Redis keys,
# /health and /ready on 8090):
#   docker run -e SCHEMATIC_API_KEY=... -e REDIS_ADDR=redis:6379 -p 8090:8090 emcachers
# With a configuration file:
#   docker run -v emcachers-data:/data -v ./emcachers.toml:/etc/emcachers.toml emcachers run --config /etc/emcachers.toml

FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# host/build.rs builds plugins/shape and plugins/schematic for wasm32-wasip2
# and embeds them.
RUN cargo build --release --locked -p emcachers

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=* sqlite3=* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data emcachers \
 && mkdir -p /data /plugins \
 && chown emcachers /data /plugins
COPY --from=build /src/target/release/emcachers /usr/local/bin/emcachers
# /plugins holds user plugins; a file there overrides the built-in of its name.
ENV EMCACHERS_DATA_DIR=/data \
    EMCACHERS_PLUGINS__DIR=/plugins \
    EMCACHERS_LOG__FORMAT=json
USER 10001
VOLUME ["/data"]
EXPOSE 8090
ENTRYPOINT ["emcachers"]
CMD ["run"]
