# emcachers: the host binary plus the built-in plugins.
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
RUN cargo build --release --locked -p emcachers \
 && cargo build --locked --target wasm32-wasip2 --profile plugin \
      -p emcachers-plugin-shape -p emcachers-plugin-template -p emcachers-plugin-schematic

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=* sqlite3=* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data emcachers \
 && mkdir -p /data /plugins \
 && chown emcachers /data /plugins
COPY --from=build /src/target/release/emcachers /usr/local/bin/emcachers
COPY --from=build /src/target/wasm32-wasip2/plugin/emcachers_plugin_shape.wasm /plugins/shape.wasm
COPY --from=build /src/target/wasm32-wasip2/plugin/emcachers_plugin_template.wasm /plugins/template.wasm
COPY --from=build /src/target/wasm32-wasip2/plugin/emcachers_plugin_schematic.wasm /plugins/schematic.wasm
ENV EMCACHERS_DATA_DIR=/data \
    EMCACHERS_PLUGINS__DIR=/plugins \
    EMCACHERS_LOG__FORMAT=json
USER 10001
VOLUME ["/data"]
EXPOSE 8090
ENTRYPOINT ["emcachers"]
CMD ["run"]
